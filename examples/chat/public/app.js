'use strict';
// The chat page: connects through limpet, shows which node holds the Socket.IO session and which transport it
// uses, joins a room and relays messages. Query: ?transport=polling|websocket forces a transport,
// ?name=&room= prefill the join form.
(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const forced = params.get('transport');
  const transports = forced === 'polling' || forced === 'websocket' ? [forced] : ['polling', 'websocket'];

  $('name').value = params.get('name') || 'guest-' + Math.floor(1000 + Math.random() * 9000);
  $('room').value = params.get('room') || 'lobby';

  const socket = io({ transports });
  let connects = 0;
  let room = null;

  function showTransport() {
    const engine = socket.io.engine;
    $('transport').textContent = engine && engine.transport ? engine.transport.name : '–';
  }

  function setStatus(text, kind) {
    $('status').textContent = text;
    $('status').className = kind || '';
  }

  function add(kind, parts) {
    const li = document.createElement('li');
    li.className = kind;
    for (const [cls, text] of parts) {
      const span = document.createElement('span');
      span.className = cls;
      span.textContent = text;
      li.appendChild(span);
    }
    const list = $('messages');
    list.appendChild(li);
    list.scrollTop = list.scrollHeight;
  }

  function time(at) {
    return new Date(at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }

  function join(name, wanted) {
    socket.emit('join', { name, room: wanted }, (res) => {
      if (!res || !res.ok) {
        $('joined').textContent = (res && res.error) || 'join failed';
        return;
      }
      room = res.room;
      $('joined').textContent = `in #${res.room} as ${res.name}`;
      document.body.dataset.room = res.room;
    });
  }

  socket.on('connect', () => {
    connects += 1;
    $('connects').textContent = String(connects);
    setStatus('connected', 'ok');
    showTransport();
    socket.io.engine.on('upgrade', showTransport);
    socket.emit('whoami', (me) => {
      $('session-node').textContent = me.node;
      $('sid').textContent = me.sid;
      showTransport();
    });
    // First connection joins the prefilled room; a reconnection rejoins the room it was in.
    join($('name').value, room || $('room').value);
  });

  socket.on('disconnect', (reason) => {
    setStatus(`disconnected (${reason})`, 'bad');
    $('session-node').textContent = '…';
    $('transport').textContent = '–';
  });
  socket.on('connect_error', (err) => setStatus(`connect error: ${err.message}`, 'bad'));

  socket.on('message', (m) => add('message', [['at', time(m.at)], ['who', m.name], ['via', `via ${m.node}`], ['text', m.text]]));
  socket.on('notice', (n) => add('notice', [['at', time(n.at)], ['text', n.text]]));

  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    join($('name').value, $('room').value);
  });

  $('say-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('message');
    const text = input.value;
    socket.emit('say', { text }, (res) => {
      if (res && res.ok) input.value = '';
      else add('notice error', [['text', (res && res.error) || 'not sent']]);
    });
  });
})();

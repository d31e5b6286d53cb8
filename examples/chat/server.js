#!/usr/bin/env node
'use strict';
// One node of the example chat: a static page and Socket.IO on the same port. Run several nodes behind limpet;
// the Redis adapter relays every room broadcast to the other nodes, so users in one room meet whatever node
// holds their session.
//
// Environment:
//   PORT        port to listen on (default 3000; 0 = any free port, printed on stdout)
//   HOST        address to listen on (default 127.0.0.1; 0.0.0.0 in the container image)
//   NODE_ID     this node's name, shown on the page (default: the host name)
//   REDIS_URL   Redis for the adapter (default redis://127.0.0.1:6379)
//   SID_PREFIX  optional: start every Engine.IO session id with "<SID_PREFIX>." (limpet's sticky.sid_prefix)
//
// stdout: one line `chat node <NODE_ID> listening on http://<HOST>:<PORT>/` once it accepts connections.
// SIGTERM / SIGINT: close the sockets and Redis, exit 0.
//
// Socket.IO events (client -> server, with an ack):
//   whoami ()                -> {node, sid, transport}      the node and Engine.IO session of this socket
//   join   ({room, name})    -> {ok, room, name, node} | {ok: false, error}
//   say    ({text})          -> {ok} | {ok: false, error}   broadcast to the room as `message`
// Server -> client: `message` {room, name, text, node, at} and `notice` {room, text, node, at}.

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const PORT = parsePort(process.env.PORT ?? '3000');
const HOST = process.env.HOST || '127.0.0.1';
const NODE_ID = process.env.NODE_ID || os.hostname();
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const SID_PREFIX = process.env.SID_PREFIX || '';

const MAX_NAME = 32;
const MAX_ROOM = 32;
const MAX_TEXT = 500;

const log = (msg) => process.stderr.write(`[chat ${NODE_ID}] ${msg}\n`);

function parsePort(raw) {
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write(`error: PORT must be 0..65535, got ${JSON.stringify(raw)}\n`);
    process.exit(2);
  }
  return port;
}

const PUBLIC = path.join(__dirname, 'public');
const STATIC = {
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function send(res, status, type, body, extra = {}) {
  res.writeHead(status, {
    'Content-Type': type,
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    'X-Chat-Node': NODE_ID,
    ...extra,
  });
  res.end(body);
}

// Everything outside /socket.io/ (Socket.IO answers its own path before this handler runs).
function handle(req, res) {
  const url = new URL(req.url, 'http://chat.invalid');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    return send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n', { Allow: 'GET, HEAD' });
  }
  if (url.pathname === '/' || url.pathname === '/index.html') {
    // The page names the node that served it; its script asks the Socket.IO session's node separately.
    const html = fs
      .readFileSync(path.join(PUBLIC, 'index.html'), 'utf8')
      .replaceAll('{{NODE_ID}}', escapeHtml(NODE_ID));
    return send(res, 200, 'text/html; charset=utf-8', html);
  }
  if (url.pathname === '/health') {
    return send(res, 200, 'text/plain; charset=utf-8', 'ok\n');
  }
  const asset = STATIC[url.pathname];
  if (asset) {
    return send(res, 200, asset.type, fs.readFileSync(path.join(PUBLIC, asset.file), 'utf8'));
  }
  return send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
}

/** A trimmed string of at most `max` characters, or null. */
function cleanString(value, max) {
  if (typeof value !== 'string') return null;
  const s = value.trim();
  return s.length > 0 && s.length <= max ? s : null;
}

function ack(cb, value) {
  if (typeof cb === 'function') cb(value);
}

function onConnection(io, socket) {
  const transport = () => socket.conn.transport.name;
  socket.conn.on('upgrade', () => log(`session ${socket.conn.id} upgraded to ${transport()}`));

  socket.on('whoami', (cb) => ack(cb, { node: NODE_ID, sid: socket.conn.id, transport: transport() }));

  socket.on('join', async (req, cb) => {
    const room = cleanString(req?.room, MAX_ROOM);
    const name = cleanString(req?.name, MAX_NAME);
    if (!room || !name) {
      return ack(cb, { ok: false, error: `room (1-${MAX_ROOM} chars) and name (1-${MAX_NAME} chars) are required` });
    }
    const previous = socket.data.room;
    if (previous && previous !== room) {
      socket.leave(previous);
      io.to(previous).emit('notice', notice(previous, `${socket.data.name} left`));
    }
    socket.data.room = room;
    socket.data.name = name;
    socket.join(room);
    ack(cb, { ok: true, room, name, node: NODE_ID });
    io.to(room).emit('notice', notice(room, `${name} joined (session on ${NODE_ID})`));
  });

  socket.on('say', (req, cb) => {
    const text = cleanString(req?.text, MAX_TEXT);
    const { room, name } = socket.data;
    if (!room) return ack(cb, { ok: false, error: 'join a room first' });
    if (!text) return ack(cb, { ok: false, error: `text must be 1-${MAX_TEXT} chars` });
    io.to(room).emit('message', { room, name, text, node: NODE_ID, at: Date.now() });
    ack(cb, { ok: true });
  });

  socket.on('disconnect', () => {
    const { room, name } = socket.data;
    if (room) io.to(room).emit('notice', notice(room, `${name} left`));
  });
}

function notice(room, text) {
  return { room, text, node: NODE_ID, at: Date.now() };
}

async function main() {
  // Waits for Redis (retrying with backoff) before listening, so a node never serves a room it cannot relay.
  const pub = createClient({ url: REDIS_URL, socket: { reconnectStrategy: (n) => Math.min(100 * (n + 1), 2000) } });
  const sub = pub.duplicate();
  let lastError = '';
  for (const c of [pub, sub]) {
    c.on('error', (e) => {
      if (e.message !== lastError) log(`redis ${REDIS_URL}: ${e.message} (retrying)`);
      lastError = e.message;
    });
    c.on('ready', () => {
      lastError = '';
    });
  }
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer(handle);
  // Idle keep-alive connections outlive a proxy's pooled ones (Node's default is 5 s).
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 125_000;
  const io = new Server(server, { adapter: createAdapter(pub, sub) });

  // Stateless sticky sessions (limpet `sticky.sid_prefix = true`, and `route = "n1"` on this node's server entry):
  // every Engine.IO session id starts with the node's route, so any limpet instance sends it here with no table.
  //
  //   const crypto = require("crypto");
  //   io.engine.generateId = () => "n1." + crypto.randomBytes(15).toString("base64url");
  if (SID_PREFIX) {
    io.engine.generateId = () => SID_PREFIX + '.' + crypto.randomBytes(15).toString('base64url');
  }

  io.on('connection', (socket) => onConnection(io, socket));

  server.on('error', (e) => {
    log(`cannot listen on ${HOST}:${PORT}: ${e.message}`);
    process.exit(1);
  });
  server.listen(PORT, HOST, () => {
    const { port } = server.address();
    process.stdout.write(`chat node ${NODE_ID} listening on http://${HOST}:${port}/\n`);
  });

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    log('stopping');
    io.close(() => {
      Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    });
    setTimeout(() => process.exit(0), 3000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  log(`fatal: ${e.stack || e}`);
  process.exit(1);
});

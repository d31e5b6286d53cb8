#!/usr/bin/env node
'use strict';
// Socket.IO scenario driver for limpet's integration tests.
//
//   node client.js --url http://127.0.0.1:PORT [--clients N] [--emits M]
//                  [--transports polling|websocket|default] [--version 4|2] [--wait-upgrade]
//                  [--hold MS] [--reconnect] [--timeout MS] [--ack-timeout MS] [--connect-timeout MS]
//                  [--path /socket.io] [--http2 [--ca FILE]]
//
// N clients connect concurrently (each its own Engine.IO session: forceNew), each does M acknowledged `whoami`
// emits one after another, optionally waits for the WebSocket upgrade first, optionally holds the connection
// for --hold ms emitting `whoami` every 200 ms, then disconnects.
//
// --http2 (v4, polling only): long-polling goes through fetch (engine.io-client's Fetch transport) on an undici agent
// that offers HTTP/2 by ALPN (https URLs), trusting --ca; the report's "alpn" counts the protocol each new
// connection agreed (e.g. {"h2": 3}).
//
// stdout: exactly one JSON line at the end (see `report()`); exit status 0 whatever happened to the clients
// (2 only for bad command-line arguments). The run always ends within --timeout ms (default 30000):
// whatever is unfinished by then is reported as it stands, with "timed_out": true.
// stderr: nothing unless something goes wrong inside this script.

const { parseArgs, fail, exitWhenOrphaned } = require('./common');

const START = Date.now();
const opts = parseArgs(
  process.argv.slice(2),
  {
    url: 'string',
    clients: 'int',
    emits: 'int',
    transports: 'string',
    version: 'string',
    'wait-upgrade': 'bool',
    hold: 'int',
    reconnect: 'bool',
    timeout: 'int',
    'ack-timeout': 'int',
    'connect-timeout': 'int',
    path: 'string',
    http2: 'bool',
    ca: 'string',
  },
  {
    clients: 1,
    emits: 1,
    transports: 'default',
    version: '4',
    waitUpgrade: false,
    hold: 0,
    reconnect: false,
    timeout: 30000,
    ackTimeout: 5000,
    connectTimeout: 10000,
    path: '/socket.io',
    http2: false,
    ca: '',
  },
);
if (!opts.url) fail('--url is required');
if (!['polling', 'websocket', 'default'].includes(opts.transports)) fail(`bad --transports ${opts.transports}`);
if (opts.version !== '4' && opts.version !== '2') fail(`--version must be 4 or 2, got ${opts.version}`);
if (opts.http2 && (opts.version !== '4' || opts.transports !== 'polling')) fail('--http2 needs --version 4 --transports polling');
// Protocols agreed by ALPN on the connections --http2 opened, by name.
const alpn = opts.http2 ? useHttp2(opts.ca) : null;

/** Routes fetch through an undici agent that offers h2 by ALPN; returns the counts of what each connection agreed. */
function useHttp2(caFile) {
  const undici = require('undici');
  const counts = {};
  const ca = caFile ? require('node:fs').readFileSync(caFile) : undefined;
  const connector = undici.buildConnector({ ca, allowH2: true });
  // undici sends a POST only on a connection with nothing else in flight, whatever the protocol: with one
  // connection per origin, every POST would wait behind a parked long-poll. It opens more instead.
  const agent = new undici.Agent({
    allowH2: true,
    connect: (options, callback) =>
      connector(options, (err, socket) => {
        if (socket) {
          const name = socket.alpnProtocol || 'none';
          counts[name] = (counts[name] || 0) + 1;
        }
        callback(err, socket);
      }),
  });
  undici.setGlobalDispatcher(agent);
  globalThis.fetch = undici.fetch;
  return counts;
}

const HOLD_INTERVAL = 200;
const MAX_ERRORS = 10;
// Leave a little time before --timeout to print and exit.
const DEADLINE = START + Math.max(0, opts.timeout - Math.min(500, Math.floor(opts.timeout / 10)));

const ioClient = opts.version === '4' ? require('socket.io-client').io : require('socket.io-client-v2');

const stats = {
  connected: 0, // clients that connected at least once
  connect_errors: 0, // connect_error events (one per failed client without --reconnect)
  emits_ok: 0, // acknowledged whoami emits (main phase + hold phase)
  emit_errors: 0, // ack timeouts, emits cut by a disconnect, emits never made because the client was disconnected
  disconnects: 0, // disconnects this script did not ask for
  reconnects: 0, // connects after the first one (only with --reconnect)
  hold_emits_ok: 0,
  hold_emit_errors: 0,
};
const errorSet = new Set();
function noteError(msg) {
  if (errorSet.size < MAX_ERRORS) errorSet.add(String(msg));
}

const clients = [];
let finished = false;

const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const remaining = () => DEADLINE - Date.now();

function transportsOption() {
  if (opts.http2) return [require('engine.io-client').Fetch];
  if (opts.transports === 'polling') return ['polling'];
  if (opts.transports === 'websocket') return ['websocket'];
  return undefined; // library default: polling, then upgrade to websocket
}

class Client {
  constructor(index) {
    this.index = index;
    this.everConnected = false;
    this.up = false; // between 'connect' and 'disconnect'
    this.firstNode = null;
    this.nodes = new Set();
    this.sids = new Set();
    this.lastTransport = null;
    this.closing = false;
    this.failed = false; // disconnected for good (no --reconnect) or never connected
    this.pending = new Set(); // reject functions of in-flight emits
    this.waiters = new Set(); // resolve functions waiting for a connect / failure
    this.inFlight = 0; // emits started and not settled (counted as errors if --timeout cuts them)

    const o = {
      path: opts.path,
      forceNew: true,
      reconnection: !!opts.reconnect,
      timeout: opts.connectTimeout,
    };
    const t = transportsOption();
    if (t) o.transports = t;
    this.socket = ioClient(opts.url, o);
    const s = this.socket;

    s.on('connect', () => {
      this.up = true;
      if (this.everConnected) stats.reconnects++;
      else stats.connected++;
      this.everConnected = true;
      this.noteTransport();
      this.wake();
    });
    s.on('connect_error', (err) => {
      stats.connect_errors++;
      noteError(`connect_error: ${errMsg(err)}`);
      if (!opts.reconnect) {
        this.failed = true;
        this.wake();
      }
    });
    if (opts.version === '2') {
      s.on('connect_timeout', () => noteError('connect_timeout'));
    }
    s.on('disconnect', (reason) => {
      const wasUp = this.up;
      this.up = false;
      // v4 also reports a 'disconnect' when a session dies before its namespace connect: that is a connect error.
      if (!wasUp || this.closing || finished) return;
      stats.disconnects++;
      noteError(`disconnect: ${reason}`);
      for (const reject of this.pending) reject(new Error(`disconnected during emit: ${reason}`));
      this.pending.clear();
      // Socket.IO does not reconnect after a server-side disconnect even with reconnection on.
      if (!opts.reconnect || reason === 'io server disconnect') {
        this.failed = true;
        this.wake();
      }
    });
  }

  wake() {
    for (const w of this.waiters) w();
    this.waiters.clear();
  }

  engineTransport() {
    const engine = this.socket.io && this.socket.io.engine;
    return engine && engine.transport ? engine.transport.name : null;
  }

  noteTransport() {
    if (this.socket.connected) {
      const t = this.engineTransport();
      if (t) this.lastTransport = t;
    }
  }

  // Resolves true once connected, false once failed or out of time (bounded by `ms`).
  waitConnected(ms) {
    if (this.socket.connected) return Promise.resolve(true);
    if (this.failed) return Promise.resolve(false);
    return new Promise((resolve) => {
      let done = false;
      const settle = () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.waiters.delete(settle);
        resolve(this.socket.connected);
      };
      const timer = setTimeout(settle, Math.max(0, Math.min(ms, remaining())));
      this.waiters.add(settle);
    });
  }

  async waitUpgrade() {
    while (remaining() > 0 && !this.failed) {
      if (this.socket.connected && this.engineTransport() === 'websocket') return true;
      await sleep(Math.min(50, remaining()));
    }
    return false;
  }

  // One acknowledged whoami emit; resolves {ok, answer|error}.
  async whoami() {
    if (!this.socket.connected) {
      if (this.failed || !(await this.waitConnected(opts.ackTimeout))) {
        return { ok: false, error: 'not connected' };
      }
    }
    return new Promise((resolve) => {
      let done = false;
      const settle = (result) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.pending.delete(reject);
        resolve(result);
      };
      const reject = (err) => settle({ ok: false, error: errMsg(err) });
      const timer = setTimeout(
        () => settle({ ok: false, error: `ack timeout after ${opts.ackTimeout} ms` }),
        opts.ackTimeout,
      );
      this.pending.add(reject);
      // A plain emit with a manual timer works the same on both versions (equivalent to v4's socket.timeout().emit).
      this.socket.emit('whoami', (answer) => settle({ ok: true, answer }));
    });
  }

  async emitOnce(phase) {
    this.inFlight++;
    const r = await this.whoami();
    this.inFlight--;
    if (finished) return r;
    if (r.ok && r.answer && typeof r.answer.node === 'string') {
      stats.emits_ok++;
      if (phase === 'hold') stats.hold_emits_ok++;
      if (this.firstNode === null) this.firstNode = r.answer.node;
      this.nodes.add(r.answer.node);
      if (r.answer.sid) this.sids.add(r.answer.sid);
    } else {
      stats.emit_errors++;
      if (phase === 'hold') stats.hold_emit_errors++;
      noteError(r.ok ? `bad whoami answer: ${JSON.stringify(r.answer)}` : `emit: ${r.error}`);
    }
    this.noteTransport();
    return r;
  }

  async run() {
    if (!(await this.waitConnected(remaining()))) return;
    if (opts.waitUpgrade && opts.transports === 'default') {
      if (!(await this.waitUpgrade())) {
        noteError('upgrade to websocket did not happen in time');
        if (remaining() <= 0) return;
      }
    }
    for (let i = 0; i < opts.emits; i++) {
      if (remaining() <= 0) return;
      if (this.failed) {
        // Disconnected for good: the emits left can no longer happen.
        stats.emit_errors += opts.emits - i;
        return;
      }
      await this.emitOnce('main');
    }
    if (opts.hold > 0) {
      const holdEnd = Date.now() + opts.hold;
      while (Date.now() < holdEnd && remaining() > 0 && !this.failed) {
        const started = Date.now();
        await this.emitOnce('hold');
        await sleep(Math.min(HOLD_INTERVAL - (Date.now() - started), holdEnd - Date.now(), remaining()));
      }
    }
    this.noteTransport();
    this.close();
  }

  close() {
    this.noteTransport();
    this.closing = true;
    try {
      this.socket.disconnect();
    } catch (e) {
      /* ignore */
    }
  }
}

function errMsg(err) {
  if (err === undefined || err === null) return 'unknown error';
  if (typeof err === 'string') return err;
  let m = err.message || String(err);
  if (err.description && err.description.message) m += ` (${err.description.message})`;
  else if (err.description !== undefined && typeof err.description !== 'object') m += ` (${err.description})`;
  return m;
}

function report(timedOut) {
  const nodes = {};
  let nodeChanges = 0;
  let sidChanges = 0;
  const transports = { websocket: 0, polling: 0 };
  let unfinished = 0;
  let cut = 0;
  for (const c of clients) {
    cut += c.inFlight;
    if (c.firstNode !== null) nodes[c.firstNode] = (nodes[c.firstNode] || 0) + 1;
    if (c.nodes.size > 1) nodeChanges++;
    if (c.sids.size > 1) sidChanges++;
    if (!c.closing && !c.failed) c.noteTransport();
    if (c.everConnected && c.lastTransport) transports[c.lastTransport] = (transports[c.lastTransport] || 0) + 1;
    if (!c.closing && !c.failed) unfinished++;
  }
  return {
    connected: stats.connected,
    connect_errors: stats.connect_errors,
    emits_ok: stats.emits_ok,
    emit_errors: stats.emit_errors,
    disconnects: stats.disconnects,
    nodes,
    node_changes: nodeChanges,
    transports,
    errors: [...errorSet],
    // extras
    clients: opts.clients,
    version: Number(opts.version),
    reconnects: stats.reconnects,
    sid_changes: sidChanges,
    hold_emits_ok: stats.hold_emits_ok,
    hold_emit_errors: stats.hold_emit_errors,
    timed_out: timedOut,
    unfinished,
    emits_cut: cut,
    elapsed_ms: Date.now() - START,
    alpn,
  };
}

function finish(timedOut) {
  if (finished) return;
  const out = report(timedOut);
  if (out.emits_cut > 0) {
    // Emits still waiting for their ack (or for a reconnect) when --timeout struck count as failed.
    out.emit_errors += out.emits_cut;
    if (out.errors.length < MAX_ERRORS) out.errors.push(`${out.emits_cut} emit(s) unfinished at --timeout`);
  }
  finished = true;
  for (const c of clients) if (!c.closing) c.close();
  process.stdout.write(JSON.stringify(out) + '\n', () => {
    // Give the close packets a moment to reach the servers, within --timeout.
    setTimeout(() => process.exit(0), Math.max(0, Math.min(200, START + opts.timeout - Date.now() - 50)));
  });
}

process.on('uncaughtException', (e) => {
  process.stderr.write(`client.js: uncaught: ${e && e.stack ? e.stack : e}\n`);
  noteError(`uncaught: ${errMsg(e)}`);
});
process.on('unhandledRejection', (e) => {
  process.stderr.write(`client.js: unhandled rejection: ${e && e.stack ? e.stack : e}\n`);
  noteError(`unhandled rejection: ${errMsg(e)}`);
});
exitWhenOrphaned(() => process.exit(0));

setTimeout(() => finish(true), Math.max(0, DEADLINE - Date.now()));
for (let i = 0; i < opts.clients; i++) clients.push(new Client(i));
Promise.all(clients.map((c) => c.run().catch((e) => noteError(`client error: ${errMsg(e)}`)))).then(() =>
  finish(false),
);

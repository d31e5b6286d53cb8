#!/usr/bin/env node
'use strict';
// One Socket.IO node for limpet's integration tests.
//
//   node node.js --id n1 [--version 4|2] [--port 0] [--host 127.0.0.1] [--sid-prefix n1]
//                [--cookie | --no-cookie] [--ping-interval MS] [--ping-timeout MS] [--no-parent-watch]
//
// stdout: exactly one line `LISTENING <port>` once the server accepts connections; nothing else.
// stderr: free-form diagnostics.
//
// Socket.IO: event `whoami` (ack) -> {node, sid (Engine.IO id), socket_id, transport};
//            event `echo` (payload, ack) -> payload.
// Plain HTTP on the same port (outside the /socket.io/ path):
//   GET /whoami  -> 200 {"node":"n1"}
//   GET /health  -> 200 ok
//   GET /stats   -> 200 {"node","version","engine_clients","handshakes","connections"}
//   GET /request -> 200 {"node","method","url","remote_address","remote_port","headers"}
//   GET /slow?ms=N -> 200 {"node"} after N ms (a server too slow for a proxy's read timeout)
//   anything else -> 404
// SIGTERM / SIGINT: close everything and exit 0.

const http = require('http');
const crypto = require('crypto');
const { parseArgs, exitWhenOrphaned } = require('./common');

const opts = parseArgs(
  process.argv.slice(2),
  {
    id: 'string',
    version: 'string',
    port: 'int',
    host: 'string',
    'sid-prefix': 'string',
    cookie: 'bool',
    'no-cookie': 'bool',
    'ping-interval': 'int',
    'ping-timeout': 'int',
    'no-parent-watch': 'bool',
  },
  { id: 'n1', version: '4', port: 0, host: '127.0.0.1' },
);
if (opts.version !== '4' && opts.version !== '2') {
  process.stderr.write(`error: --version must be 4 or 2, got ${opts.version}\n`);
  process.exit(2);
}
const NODE_ID = opts.id;
const log = (msg) => process.stderr.write(`[node ${NODE_ID}] ${msg}\n`);

let handshakes = 0;
let connections = 0;
let io = null;

function sendJson(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

// Handles every request outside the Socket.IO path (Engine.IO takes its own path first).
const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (req.method === 'GET' && path === '/whoami') {
    sendJson(res, 200, { node: NODE_ID });
  } else if (req.method === 'GET' && path === '/health') {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 2 });
    res.end('ok');
  } else if (req.method === 'GET' && path === '/stats') {
    sendJson(res, 200, {
      node: NODE_ID,
      version: Number(opts.version),
      engine_clients: io ? io.engine.clientsCount : 0,
      handshakes,
      connections,
    });
  } else if (req.method === 'GET' && path === '/slow') {
    const ms = Number(new URLSearchParams(req.url.split('?')[1] || '').get('ms')) || 0;
    const timer = setTimeout(() => sendJson(res, 200, { node: NODE_ID }), ms);
    req.socket.once('close', () => clearTimeout(timer));
  } else if (path === '/request') {
    sendJson(res, 200, {
      node: NODE_ID,
      method: req.method,
      url: req.url,
      remote_address: req.socket.remoteAddress,
      remote_port: req.socket.remotePort,
      headers: req.headers,
    });
  } else {
    res.writeHead(404, { 'Content-Type': 'text/plain', 'Content-Length': 9 });
    res.end('not found');
  }
});

const ioOpts = {};
if (opts.pingInterval) ioOpts.pingInterval = opts.pingInterval;
if (opts.pingTimeout) ioOpts.pingTimeout = opts.pingTimeout;
// Defaults: v4 sets no cookie, v2 sets `io=<sid>`. --cookie / --no-cookie override.
if (opts.cookie) ioOpts.cookie = opts.version === '4' ? true : 'io';
if (opts.noCookie) ioOpts.cookie = false;

if (opts.version === '4') {
  const { Server } = require('socket.io');
  io = new Server(server, ioOpts);
} else {
  const ioV2 = require('socket.io-v2');
  io = ioV2(server, ioOpts);
}

if (opts.sidPrefix) {
  // The sid_prefix feature (limpet `sticky.sid_prefix = true`, server `route = "<prefix>"`) is, on a real node:
  //   const io = new Server(httpServer);
  //   io.engine.generateId = () => "n1." + require("crypto").randomBytes(15).toString("base64url");
  const prefix = opts.sidPrefix;
  io.engine.generateId = () => `${prefix}.${crypto.randomBytes(15).toString('base64url')}`;
}

io.engine.on('connection', () => {
  handshakes++;
});

io.on('connection', (socket) => {
  connections++;
  socket.on('whoami', (...args) => {
    const ack = args[args.length - 1];
    if (typeof ack !== 'function') return;
    ack({
      node: NODE_ID,
      sid: socket.conn.id,
      socket_id: socket.id,
      transport: socket.conn.transport.name,
    });
  });
  socket.on('echo', (...args) => {
    const ack = args[args.length - 1];
    if (typeof ack !== 'function') return;
    ack(args.length > 1 ? args[0] : null);
  });
});

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: closing`);
  const done = () => process.exit(0);
  setTimeout(done, 1000).unref();
  try {
    io.close(done); // closes the Engine.IO clients and the HTTP server
  } catch (e) {
    done();
  }
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
if (!opts.noParentWatch) exitWhenOrphaned(() => stop('parent gone'));

server.on('error', (e) => {
  log(`server error: ${e.stack || e}`);
  process.exit(1);
});
server.listen(opts.port, opts.host, () => {
  const { port } = server.address();
  process.stdout.write(`LISTENING ${port}\n`);
  log(`socket.io v${opts.version} listening on ${opts.host}:${port}` + (opts.sidPrefix ? ` sid prefix ${opts.sidPrefix}.` : ''));
});

#!/usr/bin/env node
'use strict';
// One raw Engine.IO v4 / Socket.IO v5-protocol session over HTTP long-polling, with each step sent from a chosen
// local source address, for tests that move a session between client addresses (ip_hash fallback, sid lookup).
// Uses only Node's `http` module; every request is a fresh TCP connection (no keep-alive) bound to the step's
// source address.
//
//   node session.js --url http://127.0.0.1:PORT --steps "127.0.0.2:handshake,127.0.1.3:poll,127.0.1.3:post"
//                   [--path /socket.io/] [--timeout MS] [--request-timeout MS]
//
// A step is `<local IPv4 source address>:<action>`; Linux binds any 127.x.y.z without setup. Actions:
//   handshake  GET ?EIO=4&transport=polling (open packet -> sid), POST `40` (connect the default namespace),
//              GET the `40{"sid":...}` answer, then one whoami round trip (POST `42N["whoami"]`, GET `43N[{...}]`)
//              so the step also reports the node.
//   poll       one whoami round trip; the step's status is the GET's.
//   post       one whoami round trip; the step's status is the POST's.
//   close      POST `1` (Engine.IO close): ends the session on the node.
// Server pings (`2`) read along the way are answered with a pong (`3`) from the same source address.
//
// stdout: exactly one JSON line:
//   {"sid":"…"|null,"steps":[{"from":"127.0.1.3","action":"poll","status":200,"node":"n2","ms":3},…],
//    "ok":true|false,"error":null|"…"}
// A step that fails carries "error" too; the run stops at the first failed step (later steps are not listed).
// "status" is the first non-200 HTTP status among the step's requests, else the status named above
// (0 when no HTTP answer came: connect error or timeout). Exit status 0 (2 only for bad arguments).
// Each request is bounded by --request-timeout (default 5000 ms); the whole run by --timeout (default 30000 ms).

const http = require('http');
const { parseArgs, fail, exitWhenOrphaned } = require('./common');

const START = Date.now();
const opts = parseArgs(
  process.argv.slice(2),
  { url: 'string', steps: 'string', path: 'string', timeout: 'int', 'request-timeout': 'int' },
  { path: '/socket.io/', timeout: 30000, requestTimeout: 5000 },
);
if (!opts.url) fail('--url is required');
if (!opts.steps) fail('--steps is required');
const ACTIONS = ['handshake', 'poll', 'post', 'close'];
const steps = opts.steps
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean)
  .map((s) => {
    const i = s.lastIndexOf(':');
    if (i <= 0) fail(`bad step (want ADDR:ACTION): ${s}`);
    const from = s.slice(0, i);
    const action = s.slice(i + 1);
    if (!ACTIONS.includes(action)) fail(`bad action in step ${s} (want one of ${ACTIONS.join('|')})`);
    return { from, action };
  });
const base = new URL(opts.url);
let path = opts.path;
if (!path.endsWith('/')) path += '/';

const SEP = '\x1e'; // Engine.IO v4 polling payload separator
const result = { sid: null, steps: [], ok: false, error: null };
let printed = false;
function print() {
  if (printed) return;
  printed = true;
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
}

// One HTTP request from `from`; resolves {status, body, headers}, status 0 with `error` on failure.
function request(from, method, query, body) {
  return new Promise((resolve) => {
    const qs = new URLSearchParams(Object.assign({ EIO: '4', transport: 'polling' }, query)).toString();
    const headers = { Accept: '*/*' };
    let payload = null;
    if (body !== undefined) {
      payload = Buffer.from(body, 'utf8');
      headers['Content-Type'] = 'text/plain;charset=UTF-8';
      headers['Content-Length'] = payload.length;
    }
    let done = false;
    const settle = (r) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(r);
    };
    const req = http.request(
      {
        host: base.hostname,
        port: base.port || 80,
        method,
        path: `${path}?${qs}`,
        headers,
        localAddress: from,
        agent: false,
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () =>
          settle({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }),
        );
        res.on('error', (e) => settle({ status: 0, error: `${method} response: ${e.message}` }));
      },
    );
    const timer = setTimeout(() => {
      settle({ status: 0, error: `${method} timed out after ${opts.requestTimeout} ms` });
      req.destroy();
    }, opts.requestTimeout);
    req.on('error', (e) => settle({ status: 0, error: `${method}: ${e.message}` }));
    if (payload) req.write(payload);
    req.end();
  });
}

class StepError extends Error {}

// Runs requests for one step, remembering statuses.
class Step {
  constructor(from, action) {
    this.from = from;
    this.action = action;
    this.statuses = { GET: [], POST: [] };
    this.firstBad = null;
  }

  async req(method, query, body) {
    const r = await request(this.from, method, query, body);
    this.statuses[method].push(r.status);
    if (r.status !== 200 && this.firstBad === null) this.firstBad = r.status;
    if (r.status === 0) throw new StepError(r.error);
    if (r.status !== 200) throw new StepError(`${method} answered ${r.status}: ${r.body.slice(0, 200)}`);
    return r;
  }

  async post(body) {
    const r = await this.req('POST', { sid: result.sid }, body);
    if (r.body !== 'ok') throw new StepError(`POST answered 200 with unexpected body: ${r.body.slice(0, 200)}`);
    return r;
  }

  // GETs until a packet matching `want` arrives (answering pings); returns the match.
  async readUntil(want, what) {
    for (let i = 0; i < 4; i++) {
      const r = await this.req('GET', { sid: result.sid });
      const packets = r.body.split(SEP);
      let found = null;
      for (const p of packets) {
        if (p === '2') await this.post('3');
        else if (p === '1') throw new StepError('server closed the session (close packet)');
        else if (found === null) {
          const m = want(p);
          if (m) found = m;
        }
      }
      if (found) return found;
    }
    throw new StepError(`no ${what} in 4 polls`);
  }

  async whoami() {
    const id = nextAckId++;
    await this.post(`42${id}["whoami"]`);
    const answer = await this.readUntil((p) => {
      const m = /^43(\d+)(\[[\s\S]*\])$/.exec(p);
      if (!m || Number(m[1]) !== id) return null;
      const args = JSON.parse(m[2]);
      return args[0] || {};
    }, `ack ${id}`);
    if (answer.sid && answer.sid !== result.sid) {
      throw new StepError(`whoami answered for sid ${answer.sid}, not ${result.sid}`);
    }
    return answer;
  }
}

let nextAckId = 1;

async function runStep(step) {
  const started = Date.now();
  const out = { from: step.from, action: step.action, status: 0, node: null, ms: 0 };
  result.steps.push(out);
  const s = new Step(step.from, step.action);
  try {
    if (step.action === 'handshake') {
      result.sid = null;
      const r = await s.req('GET', {});
      if (!r.body.startsWith('0')) throw new StepError(`not an open packet: ${r.body.slice(0, 200)}`);
      let open;
      try {
        open = JSON.parse(r.body.split(SEP)[0].slice(1));
      } catch (e) {
        throw new StepError(`bad open packet: ${r.body.slice(0, 200)}`);
      }
      if (!open.sid) throw new StepError(`open packet without sid: ${r.body.slice(0, 200)}`);
      result.sid = open.sid;
      await s.post('40');
      await s.readUntil((p) => (p.startsWith('40') ? p : null), 'namespace connect answer');
      out.node = (await s.whoami()).node || null;
      out.status = s.statuses.GET[0];
    } else {
      if (!result.sid) throw new StepError('no session: the first step must be a handshake');
      if (step.action === 'close') {
        await s.post('1');
        out.status = s.statuses.POST[0];
      } else {
        out.node = (await s.whoami()).node || null;
        out.status = step.action === 'post' ? s.statuses.POST[0] : s.statuses.GET[s.statuses.GET.length - 1];
      }
    }
    if (s.firstBad !== null) out.status = s.firstBad;
    out.ms = Date.now() - started;
    return true;
  } catch (e) {
    out.status = s.firstBad !== null ? s.firstBad : 0;
    out.error = e instanceof StepError ? e.message : `internal: ${e && e.stack ? e.stack : e}`;
    out.ms = Date.now() - started;
    result.error = `step ${result.steps.length} (${step.from}:${step.action}): ${out.error}`;
    return false;
  }
}

async function main() {
  for (const step of steps) {
    if (!(await runStep(step))) return;
  }
  result.ok = true;
}

exitWhenOrphaned(() => process.exit(0));
setTimeout(() => {
  result.ok = false;
  result.error = `run did not finish within --timeout ${opts.timeout} ms`;
  print();
}, Math.max(0, opts.timeout - 100 - (Date.now() - START)));
main().then(print, (e) => {
  result.ok = false;
  result.error = `internal: ${e && e.stack ? e.stack : e}`;
  print();
});

'use strict';
// The fleet the browser tests run: redis-server, three chat nodes (examples/chat) sharing rooms through the Redis
// adapter, limpet on the shipped config/limpet.toml with its addresses swapped for free loopback ports, and a
// headless Chromium. Also a test CA and a certificate for TLS listeners.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { chromium } = require('playwright-core');
const { Proc, freePort } = require('./procs');

const ROOT = path.resolve(__dirname, '..', '..');
const TARGET = process.env.CARGO_TARGET_DIR ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR) : path.join(ROOT, 'target');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.LIMPET_ARTIFACTS || path.join(TARGET, 'browser-test');
const NODE_IDS = ['n1', 'n2', 'n3'];
const WAIT_MS = 20_000;

function limpetBinary() {
  if (process.env.LIMPET_BIN) return process.env.LIMPET_BIN;
  const found = ['debug', 'release'].map((p) => path.join(TARGET, p, 'limpet')).find((p) => fs.existsSync(p));
  if (!found) throw new Error(`no limpet binary under ${TARGET}: run cargo build (scripts/browser-test.sh does)`);
  return found;
}

/** redis-server on a free loopback port, retried if another process takes the port first. */
async function startRedis(dir) {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const redis = new Proc('redis', 'redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir,
    ]);
    try {
      await redis.waitFor(/Ready to accept connections/, WAIT_MS, 'redis ready');
      return { redis, url: `redis://127.0.0.1:${port}` };
    } catch (e) {
      await redis.stop();
      if (attempt >= 5 || !redis.lines.some((l) => l.includes('Address already in use'))) throw e;
    }
  }
}

/** A chat node on a free port (it binds port 0 and prints the port it got). */
async function startNode(id, redisUrl) {
  const node = new Proc(`chat ${id}`, process.execPath, [path.join(ROOT, 'examples', 'chat', 'server.js')], {
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', NODE_ID: id, REDIS_URL: redisUrl },
  });
  const m = await node.waitFor(/listening on http:\/\/127\.0\.0\.1:(\d+)\//, WAIT_MS, 'listening line');
  return { node, id, addr: `127.0.0.1:${m[1]}` };
}

/** The shipped config/limpet.toml with its listener, admin and node addresses replaced. */
function limpetConfig(nodeAddrs, edits = []) {
  let toml = fs.readFileSync(path.join(ROOT, 'config', 'limpet.toml'), 'utf8');
  const swaps = [
    ['"127.0.0.1:8080"', '"127.0.0.1:0"'],
    ['"127.0.0.1:9100"', '"127.0.0.1:0"'],
    ...nodeAddrs.map((addr, i) => [`"127.0.0.1:${3001 + i}"`, `"${addr}"`]),
    ...edits,
  ];
  for (const [from, to] of swaps) {
    assert.ok(toml.includes(from), `config/limpet.toml no longer contains ${from}: update the browser test`);
    toml = toml.replace(from, to);
  }
  return toml;
}

/**
 * limpet on the shipped config with `edits` ([from, to] text swaps) after the address swaps. `scheme` is the
 * listener's ("https" when an edit gives it TLS); the URL names "localhost", which the test certificate covers.
 */
async function startLimpet(dir, nodeAddrs, { edits = [], scheme = 'http', name = 'limpet' } = {}) {
  const config = path.join(dir, `${name}.toml`);
  fs.writeFileSync(config, limpetConfig(nodeAddrs, edits));
  const limpet = new Proc(name, limpetBinary(), ['-c', config], { env: { ...process.env, RUST_LOG: 'info' } });
  const listen = await limpet.waitFor(/ listening listen=\S+ local=(\S+)/, WAIT_MS, 'listening line');
  const admin = await limpet.waitFor(/admin listening .*local=(\S+)/, WAIT_MS, 'admin listening line');
  const host = scheme === 'https' ? listen[1].replace('127.0.0.1', 'localhost') : listen[1];
  return { limpet, url: `${scheme}://${host}`, admin: `http://${admin[1]}` };
}

/** Waits until limpet's active health checks have put every node in service. */
async function allNodesUp(admin, nodes) {
  const { eventually } = require('./procs');
  await eventually(WAIT_MS, 'limpet to mark all three nodes up', async () => {
    const { body } = await get(`${admin}/metrics`);
    const up = body.split('\n').filter((l) => l.startsWith('limpet_upstream_server_up{') && l.trim().endsWith(' 1'));
    return nodes.every((n) => up.some((l) => l.includes(`"${n.addr}"`)));
  });
}

/**
 * A test CA and a certificate it signed for localhost and 127.0.0.1 (openssl), and a home directory whose NSS
 * database (certutil) trusts that CA, for Chromium to run with. Returns { cert, key, home }.
 */
function testCertificates(dir) {
  const file = (name) => path.join(dir, name);
  const run = (cmd, args) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  run('openssl', ['req', '-x509', ...ec, '-keyout', file('ca.key'), '-out', file('ca.pem'), '-days', '2',
    '-subj', '/CN=limpet browser test CA', '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign']);
  run('openssl', ['req', ...ec, '-keyout', file('key.pem'), '-out', file('leaf.csr'), '-subj', '/CN=localhost']);
  fs.writeFileSync(file('leaf.ext'),
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  run('openssl', ['x509', '-req', '-in', file('leaf.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca.key'),
    '-CAcreateserial', '-out', file('cert.pem'), '-days', '2', '-extfile', file('leaf.ext')]);
  const home = file('home');
  const nssdb = path.join(home, '.pki', 'nssdb');
  fs.mkdirSync(nssdb, { recursive: true });
  run('certutil', ['-d', `sql:${nssdb}`, '-N', '--empty-password']);
  run('certutil', ['-d', `sql:${nssdb}`, '-A', '-t', 'C,,', '-n', 'limpet-test-ca', '-i', file('ca.pem')]);
  return { cert: file('cert.pem'), key: file('key.pem'), home };
}

/** Headless Chromium with its own profile under `dir` (and `home` as its HOME, for a test CA's NSS database). */
function launchChromium(dir, { home } = {}) {
  return chromium.launchPersistentContext(path.join(dir, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 900, height: 720 },
    env: home ? { ...process.env, HOME: home } : process.env,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
}

module.exports = {
  ROOT, ARTIFACTS, NODE_IDS, WAIT_MS,
  startRedis, startNode, startLimpet, allNodesUp, get, tabState, testCertificates, launchChromium,
};

async function get(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  return { status: res.status, headers: res.headers, body: await res.text() };
}

/** What a tab shows about its connection. */
function tabState(page) {
  return page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent.trim();
    return {
      pageNode: text('page-node'),
      sessionNode: text('session-node'),
      sid: text('sid'),
      transport: text('transport'),
      connects: Number(text('connects')),
      joined: text('joined'),
      status: text('status'),
    };
  });
}


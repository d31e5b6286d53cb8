'use strict';
// Headless Chromium opens the example chat (examples/chat) through limpet in three tabs forced onto long-polling,
// sends a message from one tab and sees it arrive in all three. The fleet is real: redis-server, three chat
// nodes sharing rooms through the Redis adapter, and limpet running the shipped config/limpet.toml with its
// addresses swapped for free loopback ports. Long-polling only works through a proxy that keeps every request
// of a session on the node that opened it, so the test fails if limpet's sid stickiness does.
//
// Run with scripts/browser-test.sh (installs what it needs). Environment:
//   LIMPET_BIN        limpet binary (default: target/debug/limpet, else target/release/limpet)
//   CHROMIUM          browser (default /usr/bin/chromium)
//   LIMPET_ARTIFACTS  where screenshots go (default target/browser-test)

const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { Proc, freePort, eventually } = require('./procs');

const ROOT = path.resolve(__dirname, '..', '..');
const TARGET = process.env.CARGO_TARGET_DIR ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR) : path.join(ROOT, 'target');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.LIMPET_ARTIFACTS || path.join(TARGET, 'browser-test');
const NODE_IDS = ['n1', 'n2', 'n3'];
const TABS = 3;
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
function limpetConfig(nodeAddrs) {
  let toml = fs.readFileSync(path.join(ROOT, 'config', 'limpet.toml'), 'utf8');
  const swaps = [
    ['"127.0.0.1:8080"', '"127.0.0.1:0"'],
    ['"127.0.0.1:9100"', '"127.0.0.1:0"'],
    ...nodeAddrs.map((addr, i) => [`"127.0.0.1:${3001 + i}"`, `"${addr}"`]),
  ];
  for (const [from, to] of swaps) {
    assert.ok(toml.includes(from), `config/limpet.toml no longer contains ${from}: update the browser test`);
    toml = toml.replace(from, to);
  }
  return toml;
}

async function startLimpet(dir, nodeAddrs) {
  const config = path.join(dir, 'limpet.toml');
  fs.writeFileSync(config, limpetConfig(nodeAddrs));
  const limpet = new Proc('limpet', limpetBinary(), ['-c', config], { env: { ...process.env, RUST_LOG: 'info' } });
  const listen = await limpet.waitFor(/ listening listen=\S+ local=(\S+)/, WAIT_MS, 'listening line');
  const admin = await limpet.waitFor(/admin listening .*local=(\S+)/, WAIT_MS, 'admin listening line');
  return { limpet, url: `http://${listen[1]}`, admin: `http://${admin[1]}` };
}

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

test('a chat message reaches three long-polling tabs on different nodes through limpet', { timeout: 120_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'limpet-browser-'));
  const procs = [];
  let context = null;
  const pages = [];
  const pageErrors = [];
  try {
    const { redis, url: redisUrl } = await startRedis(dir);
    procs.push(redis);
    const nodes = await Promise.all(NODE_IDS.map((id) => startNode(id, redisUrl)));
    procs.push(...nodes.map((n) => n.node));
    const { limpet, url, admin } = await startLimpet(dir, nodes.map((n) => n.addr));
    procs.push(limpet);

    // Active health checks put every node in service; only then can sessions spread over the three.
    await eventually(WAIT_MS, 'limpet to mark all three nodes up', async () => {
      const { body } = await get(`${admin}/metrics`);
      const up = body.split('\n').filter((l) => l.startsWith('limpet_upstream_server_up{') && l.trim().endsWith(' 1'));
      return nodes.every((n) => up.some((l) => l.includes(`"${n.addr}"`)));
    });
    const home = await get(`${url}/`);
    assert.equal(home.status, 200, 'the chat page through limpet');
    assert.ok(NODE_IDS.includes(home.headers.get('x-chat-node')), `page served by a chat node: ${home.headers.get('x-chat-node')}`);

    context = await chromium.launchPersistentContext(path.join(dir, 'profile'), {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 900, height: 720 },
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

    // One tab at a time, each connected and in the room before the next opens, as three people would.
    const room = `browser-${process.pid}`;
    const start = [];
    for (let i = 1; i <= TABS; i++) {
      const page = i === 1 && context.pages().length > 0 ? context.pages()[0] : await context.newPage();
      page.on('pageerror', (e) => pageErrors.push(`tab${i}: ${e.message}`));
      pages.push(page);
      await page.goto(`${url}/?transport=polling&room=${room}&name=tab${i}`, { timeout: WAIT_MS });
      await page
        .waitForFunction(
          (r) =>
            document.getElementById('joined').textContent.startsWith(`in #${r} `) &&
            document.getElementById('sid').textContent.trim() !== '–',
          room,
          { timeout: WAIT_MS },
        )
        .catch(async (e) => {
          throw new Error(`tab${i} did not connect and join: ${e.message}\nit shows ${JSON.stringify(await tabState(page))}`);
        });
      start.push(await tabState(page));
    }

    const text = `hello from tab1 at ${Date.now()}`;
    await pages[0].fill('#message', text);
    await pages[0].click('#send');
    await Promise.all(
      pages.map((page, i) =>
        page
          .locator('#messages li.message', { hasText: text })
          .waitFor({ timeout: WAIT_MS })
          .catch((e) => {
            throw new Error(`tab${i + 1} never showed the message: ${e.message}`);
          }),
      ),
    );

    fs.mkdirSync(ARTIFACTS, { recursive: true });
    for (const [i, page] of pages.entries()) {
      await page.screenshot({ path: path.join(ARTIFACTS, `chat-tab${i + 1}.png`) });
    }

    const end = await Promise.all(pages.map(tabState));
    const spread = end.map((s, i) => `tab${i + 1}: page from ${s.pageNode}, session ${s.sid} on ${s.sessionNode} (${s.transport})`);
    for (const line of spread) t.diagnostic(line);
    t.diagnostic(`screenshots: ${ARTIFACTS}/chat-tab{1,2,3}.png`);

    for (const [i, s] of end.entries()) {
      const tab = `tab${i + 1}`;
      assert.ok(NODE_IDS.includes(s.pageNode), `${tab} page node: ${s.pageNode}`);
      assert.ok(NODE_IDS.includes(s.sessionNode), `${tab} session node: ${s.sessionNode}`);
      assert.equal(s.transport, 'polling', `${tab} stays on long-polling`);
      assert.equal(s.sid, start[i].sid, `${tab} kept its Engine.IO session`);
      assert.equal(s.connects, 1, `${tab} connected once (a polling request sent to the wrong node ends the session)`);
    }
    const via = await pages[1].locator('#messages li.message', { hasText: text }).locator('.via').textContent();
    assert.equal(via, `via ${end[0].sessionNode}`, 'the message names the node of the sender');
    const sessionNodes = new Set(end.map((s) => s.sessionNode));
    assert.ok(sessionNodes.size >= 2, `sessions spread over at least two nodes:\n${spread.join('\n')}`);
    assert.deepEqual(pageErrors, [], 'no script errors on the page');
  } catch (e) {
    if (pages.length > 0) {
      fs.mkdirSync(ARTIFACTS, { recursive: true });
      for (const [i, page] of pages.entries()) {
        await page.screenshot({ path: path.join(ARTIFACTS, `failed-tab${i + 1}.png`) }).catch(() => {});
      }
    }
    const logs = procs.map((p) => p.tail()).join('\n');
    e.message += `\n--- process output (screenshots in ${ARTIFACTS}) ---\n${logs}`;
    throw e;
  } finally {
    if (context) await context.close().catch(() => {});
    await Promise.all(procs.reverse().map((p) => p.stop()));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

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
const { startRedis, startNode, startLimpet, allNodesUp, get, tabState, launchChromium, NODE_IDS, WAIT_MS, ARTIFACTS } =
  require('./fleet');

const TABS = 3;

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
    await allNodesUp(admin, nodes);
    const home = await get(`${url}/`);
    assert.equal(home.status, 200, 'the chat page through limpet');
    assert.ok(NODE_IDS.includes(home.headers.get('x-chat-node')), `page served by a chat node: ${home.headers.get('x-chat-node')}`);

    context = await launchChromium(dir);

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

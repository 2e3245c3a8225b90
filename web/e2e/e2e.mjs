// End-to-end test of the dashboard and chat pages in headless Chromium. Started by run.sh,
// which provides the server (TICKWIRE_BIN, E2E_PORT, E2E_PIDFILE, E2E_LOG, E2E_WORK).
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { openSync, readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { TICKWIRE_BIN, E2E_PORT, E2E_PIDFILE, E2E_LOG, E2E_WORK } = process.env;
const base = `http://127.0.0.1:${E2E_PORT}`;
const started = Date.now();
const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function healthy() {
  try {
    return (await fetch(`${base}/healthz`)).ok;
  } catch {
    return false;
  }
}

async function restartServer() {
  const pid = Number(readFileSync(E2E_PIDFILE, 'utf8'));
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 100; i++) {
    try { process.kill(pid, 0); } catch { break; }
    await sleep(100);
  }
  log(`server (pid ${pid}) stopped`);
  await sleep(1000); // the page sees the server down for a while
  const out = openSync(E2E_LOG, 'a');
  const child = spawn(TICKWIRE_BIN, ['serve'], { stdio: ['ignore', out, out], env: process.env });
  writeFileSync(E2E_PIDFILE, String(child.pid));
  child.unref();
  for (let i = 0; i < 100 && !(await healthy()); i++) await sleep(100);
  assert.ok(await healthy(), 'restarted server is not healthy');
  log(`server restarted on the same port (pid ${child.pid})`);
}

/** Symbol -> last price text of the dashboard's table. */
const lastPrices = (page) => page.$$eval('#rows tr', (trs) =>
  Object.fromEntries(trs.map((tr) => [tr.dataset.symbol, tr.querySelector('td.last').textContent])));

function changed(a, b) {
  return Object.keys(b).filter((s) => a[s] !== undefined && a[s] !== b[s]).length;
}

// A fresh profile (--user-data-dir) for every run.
const context = await chromium.launchPersistentContext(mkdtempSync(join(E2E_WORK, 'chromium-')), {
  viewport: { width: 1100, height: 780 },
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const errors = [];
try {
  // The module is served with a JavaScript content type.
  const js = await fetch(`${base}/tickwire.js`);
  assert.equal(js.status, 200);
  assert.match(js.headers.get('content-type'), /^text\/javascript/);
  log('GET /tickwire.js: 200 ' + js.headers.get('content-type'));

  const watch = (page, name) => {
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') console.log(`  (${name} console) ${m.text()}`); });
  };

  // (a) The dashboard shows prices that change.
  const dash = await context.newPage();
  watch(dash, 'dashboard');
  await dash.goto(`${base}/`);
  await dash.waitForSelector('#status[data-status="open"]', { timeout: 10000 });
  await dash.waitForFunction(() => document.querySelectorAll('#rows tr').length >= 20, null, { timeout: 10000 });
  const p0 = await lastPrices(dash);
  await sleep(2000);
  const p1 = await lastPrices(dash);
  const n1 = changed(p0, p1);
  log(`(a) dashboard connected, ${Object.keys(p1).length} symbols, ${n1} prices changed in 2 s (e.g. BTC-USD ${p0['BTC-USD']} -> ${p1['BTC-USD']})`);
  assert.ok(n1 >= 10, `only ${n1} prices changed`);
  const age = await dash.textContent('#age');
  assert.match(age, /s ago$/, `age shows ${age}`);
  const points = await dash.$eval('#rows tr[data-symbol="BTC-USD"] polyline', (l) => l.getAttribute('points').split(' ').length);
  assert.ok(points >= 10, `sparkline has ${points} points`);
  log(`    last update age "${age}", BTC-USD sparkline ${points} points`);

  // (b) The server restarts; the page reconnects by itself and prices move again.
  const statuses = [];
  await dash.exposeFunction('e2eStatus', (s) => statuses.push(s));
  await dash.evaluate(() => {
    window.tickwire.addEventListener('status', (e) => window.e2eStatus(e.detail));
    window.e2eResets = 0;
    window.tickwire.addEventListener('reset', () => window.e2eResets++);
  });
  await restartServer();
  await dash.waitForFunction(() => document.querySelector('#status').dataset.status === 'open' && window.tickwire.status === 'open', null, { timeout: 20000 });
  log(`(b) page status went ${statuses.join(' -> ')}`);
  assert.ok(statuses.includes('reconnecting'), 'the page never noticed the restart');
  assert.equal(statuses.at(-1), 'open');
  // A restarted server has new epochs: every topic is reset (recovered:false) and snapshotted.
  await dash.waitForFunction(() => window.e2eResets >= 20, null, { timeout: 5000 });
  log(`    ${await dash.evaluate(() => window.e2eResets)} topics reset (new epochs after the restart)`);
  const p2 = await lastPrices(dash);
  await sleep(2000);
  const p3 = await lastPrices(dash);
  const n3 = changed(p2, p3);
  log(`    after reconnect ${n3} prices changed in 2 s (BTC-USD ${p2['BTC-USD']} -> ${p3['BTC-USD']})`);
  assert.ok(n3 >= 10, `only ${n3} prices changed after the restart`);

  // (d) Screenshot of the dashboard.
  // CI writes under target/ so a test run leaves the tree clean; UPDATE_SCREENSHOT=1 refreshes
  // the committed docs/dashboard.png.
  const shot = process.env.UPDATE_SCREENSHOT === '1'
    ? join(root, 'docs', 'dashboard.png')
    : join(root, 'target', 'e2e-dashboard.png');
  await dash.screenshot({ path: shot });
  log(`(d) screenshot saved to ${shot}`);

  // (c) The chat delivers a message between two pages.
  const alice = await context.newPage();
  const bob = await context.newPage();
  watch(alice, 'alice');
  watch(bob, 'bob');
  await alice.goto(`${base}/chat?name=alice`);
  await bob.goto(`${base}/chat?name=bob`);
  for (const p of [alice, bob]) {
    await p.waitForSelector('#status[data-status="open"]', { timeout: 10000 });
    await p.waitForSelector('li.notice:has-text("joined chat.lobby")', { timeout: 10000 });
  }
  const text = `hello from alice ${Date.now()}`;
  await alice.fill('#text', text);
  await alice.press('#text', 'Enter');
  const got = await bob.waitForSelector(`li.msg:has-text("${text}")`, { timeout: 5000 });
  const user = await got.$eval('.user', (e) => e.textContent);
  assert.equal(user, 'alice');
  await alice.waitForSelector(`li.msg:has-text("${text}")`, { timeout: 5000 });
  log(`(c) chat: bob received "${text}" from ${user}`);

  // (e) Recovery: bob's connection drops (the server keeps running); messages published while
  // he is away arrive after the reconnect, once each and in order, with no reset.
  await bob.evaluate(() => {
    window.e2eResets = [];
    window.tickwire.addEventListener('reset', (e) => window.e2eResets.push(e.detail.topic));
    window.tickwire.backoff.initial = 1500; // a fixed 1.5 s gap (jitter pinned below)
    Math.random = () => 0.999;
    window.tickwire.ws.close();
  });
  await bob.waitForFunction(() => window.tickwire.status === 'reconnecting', null, { timeout: 5000 });
  const missed = ['one', 'two', 'three'].map((w) => `missed ${w} ${Date.now()}`);
  for (const text of missed) {
    const r = await fetch(`${base}/api/v1/publish`, {
      method: 'POST',
      body: JSON.stringify({ topic: 'chat.lobby', data: { user: 'http', text } }),
    });
    assert.equal(r.status, 200);
  }
  await bob.waitForFunction(() => window.tickwire.status === 'open', null, { timeout: 10000 });
  await bob.waitForSelector(`li.msg:has-text("${missed[2]}")`, { timeout: 5000 });
  const texts = await bob.$$eval('li.msg .text', (els) => els.map((e) => e.textContent));
  assert.deepEqual(texts.filter((t) => t.startsWith('missed ')), missed, 'recovered messages');
  assert.deepEqual(await bob.evaluate(() => window.e2eResets), [], 'resets');
  log(`(e) bob reconnected and recovered ${missed.length} missed messages in order, no reset`);

  assert.deepEqual(errors, [], 'page errors');
  log('e2e: all checks passed');
} finally {
  await context.close();
}

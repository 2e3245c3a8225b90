// End-to-end test of the dashboard, chat and console pages in headless Chromium. Started by
// run.sh, which provides the server (TICKWIRE_BIN, E2E_PORT, E2E_PIDFILE, E2E_LOG, E2E_WORK).
// Screenshots go to target/e2e/.
import { chromium } from 'playwright-core';
import { spawn, spawnSync } from 'node:child_process';
import { openSync, readFileSync, writeFileSync, mkdtempSync, mkdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

import { createServer, connect } from 'node:net';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const out = join(root, 'target', 'e2e');
mkdirSync(out, { recursive: true });
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

/** A free loopback port (bound, then released). */
const freePort = () => new Promise((resolve, reject) => {
  const s = createServer().listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  s.on('error', reject);
});

/** Waits until `url` answers 200. */
async function until200(url, what) {
  for (let i = 0; i < 150; i++) {
    try { if ((await fetch(url)).ok) return; } catch { /* not up yet */ }
    await sleep(100);
  }
  throw new Error(`${what}: ${url} did not answer 200 within 15 s`);
}

/** Processes this script started (a cluster node, its Redis), killed at the end. */
const children = [];
process.on('exit', () => { for (const c of children) try { c.kill('SIGKILL'); } catch { /* gone */ } });

/** Starts redis-server on `port` (no persistence) and waits until it answers. */
async function startRedis(port) {
  const redis = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' });
  children.push(redis);
  for (let i = 0; i < 100; i++) {
    const up = await new Promise((resolve) => {
      const c = spawn('redis-cli', ['-p', String(port), 'PING'], { stdio: ['ignore', 'pipe', 'ignore'] });
      let out = '';
      c.stdout.on('data', (d) => { out += d; });
      c.on('close', () => resolve(out.trim() === 'PONG'));
    });
    if (up) return redis;
    await sleep(100);
  }
  throw new Error(`redis-server on port ${port} did not answer PING`);
}

/** A TCP proxy in front of the server, on its own port (so pages loaded through it are
 * same-origin with what they open): `cut()` drops every connection as a network would, `open`
 * false drops new ones at once, `blockWebSocket` answers an upgrade with 502 as a proxy that
 * breaks WebSocket does. `heads` keeps the head of every request forwarded. */
async function startProxy(targetPort) {
  const proxy = { open: true, blockWebSocket: false, sockets: new Set(), heads: [] };
  const server = createServer((inbound) => {
    if (!proxy.open) return inbound.destroy();
    proxy.sockets.add(inbound);
    inbound.once('data', (first) => {
      const head = first.toString('latin1');
      proxy.heads.push(head.slice(0, head.indexOf('\r\n\r\n') + 1 || 2000));
      if (proxy.blockWebSocket && /^upgrade:\s*websocket/im.test(head)) {
        inbound.end('HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
        return;
      }
      const outbound = connect(targetPort, '127.0.0.1', () => { outbound.write(first); inbound.pipe(outbound); outbound.pipe(inbound); });
      proxy.sockets.add(outbound);
      const drop = () => { inbound.destroy(); outbound.destroy(); proxy.sockets.delete(inbound); proxy.sockets.delete(outbound); };
      inbound.on('error', drop).on('close', drop);
      outbound.on('error', drop).on('close', drop);
    });
    inbound.on('error', () => inbound.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxy.port = server.address().port;
  proxy.base = `http://127.0.0.1:${proxy.port}`;
  proxy.cut = () => { for (const s of proxy.sockets) s.destroy(); proxy.sockets.clear(); };
  proxy.close = () => { proxy.cut(); server.close(); };
  return proxy;
}

/** Publishes `data` to `topic` over HTTP; resolves with the seq. */
async function publishHttp(topic, data) {
  const r = await fetch(`${base}/api/v1/publish`, { method: 'POST', body: JSON.stringify({ topic, data }) });
  const body = await r.json();
  assert.equal(r.status, 200, JSON.stringify(body));
  return body.seq;
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
  // The server was down, not WebSocket broken: `auto` stays on WebSocket.
  assert.equal(await dash.evaluate(() => window.tickwire.transport), 'websocket');
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
    : join(out, 'dashboard.png');
  await dash.screenshot({ path: shot });
  log(`(d) screenshot saved to ${shot}`);
  await dash.close(); // fewer live pages: one 2-core machine runs them all

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
  await alice.close();
  await bob.close();

  // (f) A dashboard that connects to a cluster node while its Redis is down: the subscription
  // is refused (`unavailable`) and retried with backoff; once Redis is up the prices flow.
  const [nodePort, redisPort] = [await freePort(), await freePort()];
  const node = spawn(TICKWIRE_BIN, ['serve'], {
    stdio: ['ignore', openSync(E2E_LOG, 'a'), openSync(E2E_LOG, 'a')],
    env: {
      ...process.env,
      TICKWIRE__SERVER__LISTEN: `127.0.0.1:${nodePort}`,
      TICKWIRE__BROKER__KIND: 'redis',
      TICKWIRE__BROKER__REDIS_URL: `redis://127.0.0.1:${redisPort}`,
      TICKWIRE__BROKER__PREFIX: `e2e-${process.pid}`,
      TICKWIRE__BROKER__RECONNECT_MIN: '50ms',
      TICKWIRE__BROKER__RECONNECT_MAX: '200ms',
    },
  });
  children.push(node);
  const nodeBase = `http://127.0.0.1:${nodePort}`;
  await until200(`${nodeBase}/healthz`, 'cluster node');
  assert.equal((await fetch(`${nodeBase}/readyz`)).status, 503, 'the node must start without Redis');
  const blip = await context.newPage();
  watch(blip, 'dashboard without Redis');
  await blip.goto(`${nodeBase}/`);
  await blip.waitForSelector('#status[data-subscription="retrying"]', { timeout: 10000 });
  const states = [];
  await blip.exposeFunction('e2eSubscription', (s) => states.push(s));
  await blip.evaluate(() => window.tickwire.addEventListener('subscription', (e) => window.e2eSubscription({
    topics: e.detail.topics, state: e.detail.state, code: e.detail.error?.code, attempt: e.detail.attempt,
  })));
  // Retries keep being refused while Redis is down.
  await blip.waitForFunction(() => document.querySelector('#status').textContent.startsWith('no data (unavailable)'));
  for (let i = 0; i < 50 && states.length === 0; i++) await sleep(100);
  assert.ok(states.length >= 1, 'no retry while Redis is down');
  assert.deepEqual(states[0].topics, ['prices.*']);
  assert.equal(states[0].state, 'retrying');
  assert.equal(states[0].code, 'unavailable');
  assert.ok(states[0].attempt >= 2, `attempt ${states[0].attempt}`);
  assert.equal(await blip.$$eval('#rows tr', (trs) => trs.length), 0, 'no prices without a subscription');
  log(`(f) dashboard on a cluster node without Redis: subscription ${states[0].state} (${states[0].code}), attempt ${states[0].attempt}`);
  await startRedis(redisPort);
  await until200(`${nodeBase}/readyz`, 'cluster node with Redis');
  await blip.waitForSelector('#status[data-subscription="subscribed"]', { timeout: 40000 });
  await blip.waitForFunction(() => document.querySelectorAll('#rows tr').length >= 20, null, { timeout: 10000 });
  const q0 = await lastPrices(blip);
  await sleep(2000);
  const q1 = await lastPrices(blip);
  const nq = changed(q0, q1);
  assert.equal(states.at(-1).state, 'subscribed');
  assert.ok(states.slice(0, -1).every((s) => s.state === 'retrying'), JSON.stringify(states));
  assert.equal(await blip.evaluate(() => window.tickwire.status), 'open');
  log(`    Redis started: ${states.length - 1} refused retries, then subscribed; ${nq} prices changed in 2 s`);
  assert.ok(nq >= 10, `only ${nq} prices changed after Redis came up`);
  await blip.close();

  // (g) The README's browser snippet, exactly as README.md shows it, pasted into the devtools
  // console of /console: the update arrives. The console evaluates in REPL mode (a `const` stays
  // for the next line), so this does too, through the DevTools protocol.
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const section = readme.split('\n### Subscribe from a browser\n')[1].split(/\n#{2,3} /)[0];
  const snippet = section.match(/```js\n([\s\S]*?)\n```/)[1];
  const publishLine = section.match(/Publish from the same console with\s+`([^`]+)`/)[1];
  const consolePage = await context.newPage();
  watch(consolePage, 'console page');
  const logged = [];
  consolePage.on('console', async (m) => {
    if (m.type() === 'log' && m.args().length) logged.push(await m.args()[0].jsonValue().catch(() => null));
  });
  await consolePage.goto(`${base}/console`);
  assert.match(await consolePage.textContent('#hint'), /Open the devtools console .* paste the README's snippet/s);
  const cdp = await context.newCDPSession(consolePage);
  const paste = async (code) => {
    const r = await cdp.send('Runtime.evaluate', { expression: code, replMode: true });
    assert.equal(r.exceptionDetails, undefined, `${code}: ${JSON.stringify(r.exceptionDetails)}`);
  };
  await paste(snippet);
  const seen = async (pred, what) => {
    for (let i = 0; i < 100 && !logged.some(pred); i++) await sleep(100);
    assert.ok(logged.some(pred), `${what} not logged; logged: ${JSON.stringify(logged.slice(0, 5))}`);
  };
  await seen((m) => m?.type === 'subscribed' && m.id === 1, 'subscribed');
  await seen((m) => m?.type === 'update' && /^prices\./.test(m.topic), 'an update of prices.*');
  await paste(publishLine);
  await seen((m) => m?.type === 'published' && m.id === 2 && m.topic === 'chat.lobby', 'published');
  log(`(g) README snippet on /console: subscribed, ${logged.filter((m) => m?.type === 'update').length} updates, publish line answered published`);
  await consolePage.close();

  // (h) The chat shows the room's recent history on join, not only the latest message.
  const room = `hist${Date.now()}`;
  const said = ['first', 'second', 'third'].map((w) => `${w} before carol`);
  for (const text of said) {
    const r = await fetch(`${base}/api/v1/publish`, {
      method: 'POST', body: JSON.stringify({ topic: `chat.${room}`, data: { user: 'http', text } }),
    });
    assert.equal(r.status, 200);
  }
  const carol = await context.newPage();
  watch(carol, 'carol');
  await carol.goto(`${base}/chat?name=carol&room=${room}`);
  await carol.waitForSelector(`li.notice:has-text("joined chat.${room}")`, { timeout: 10000 });
  await carol.waitForFunction((n) => document.querySelectorAll('li.msg').length >= n, said.length, { timeout: 5000 });
  await sleep(300); // a duplicate would show up by now
  const history = await carol.$$eval('li.msg .text', (els) => els.map((e) => e.textContent));
  assert.deepEqual(history, said, 'history on join');
  log(`(h) chat on join shows the room's ${history.length} earlier messages in order`);
  await carol.close();

  // (i) Phone width (390 x 844): no horizontal overflow; screenshots of both pages.
  const phone = await context.newPage();
  watch(phone, 'phone');
  await phone.setViewportSize({ width: 390, height: 844 });
  await phone.goto(`${base}/`);
  await phone.waitForFunction(() => document.querySelectorAll('#rows tr').length >= 20, null, { timeout: 10000 });
  await sleep(1200); // ages and sparklines filled in
  const widths = {};
  widths['/'] = await phone.evaluate(() => document.documentElement.scrollWidth);
  await phone.screenshot({ path: join(out, 'phone-dashboard.png') });
  await phone.goto(`${base}/chat?name=dave&room=${room}`);
  await phone.waitForFunction((n) => document.querySelectorAll('li.msg').length >= n, said.length, { timeout: 10000 });
  widths['/chat'] = await phone.evaluate(() => document.documentElement.scrollWidth);
  await phone.screenshot({ path: join(out, 'phone-chat.png') });
  for (const [path, w] of Object.entries(widths)) assert.ok(w <= 390, `${path} is ${w} px wide at 390`);
  log(`(i) at 390 px: scrollWidth ${JSON.stringify(widths)}; screenshots in ${out}`);
  await phone.close();

  // (j) JWT mode (auth.mode = "jwt", feed off): without a token the dashboard says
  // "authentication required" and stops after one attempt; with ?token= it is live, and its
  // empty table says why (the feed is off) until something is published to prices.*.
  const jwtPort = await freePort();
  const secret = `e2e-secret-${process.pid}-0123456789abcdef0123456789`;
  const jwtNode = spawn(TICKWIRE_BIN, ['serve'], {
    stdio: ['ignore', openSync(E2E_LOG, 'a'), openSync(E2E_LOG, 'a')],
    env: {
      ...process.env,
      TICKWIRE__SERVER__LISTEN: `127.0.0.1:${jwtPort}`,
      TICKWIRE__AUTH__MODE: 'jwt',
      TICKWIRE__AUTH__JWT__HS256_SECRET: secret,
      TICKWIRE__FEED__ENABLED: 'false',
      TICKWIRE__PRESENCE__PATTERNS: 'chat.>', // for (p)
    },
  });
  children.push(jwtNode);
  const jwtBase = `http://127.0.0.1:${jwtPort}`;
  await until200(`${jwtBase}/healthz`, 'JWT-mode server');
  const rejectedAuth = async () => {
    const text = await (await fetch(`${jwtBase}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith('tickwire_connections_rejected_total{reason="auth"}'));
    return line ? Number(line.split(' ').at(-1)) : 0;
  };
  const guest = await context.newPage();
  watch(guest, 'dashboard without token');
  let attempts = 0;
  guest.on('websocket', () => attempts++);
  await guest.goto(`${jwtBase}/`);
  await guest.waitForSelector('#auth:not([hidden])', { timeout: 10000 });
  await sleep(3000); // the old page reconnected 4 to 6 times in this while
  const authText = await guest.textContent('#auth');
  assert.match(authText, /^authentication required \(missing token/);
  assert.match(authText, /\?token=/);
  assert.equal(await guest.textContent('#status'), 'authentication required');
  assert.equal(attempts, 1, `${attempts} WebSocket attempts without a token`);
  const refused = await rejectedAuth();
  assert.ok(refused <= 2, `${refused} refused for auth (one upgrade, one plain GET asking why)`);
  log(`(j) JWT mode without token: "${authText.slice(0, 60)}…", ${attempts} WebSocket attempt, ${refused} auth rejections in 3 s`);
  await guest.close();
  const minted = spawnSync(TICKWIRE_BIN, ['token', '--sub', 'e2e', '--subscribe', 'prices.>', '--ttl', '1h'],
    { env: { ...process.env, TICKWIRE_JWT_SECRET: secret }, encoding: 'utf8' });
  assert.equal(minted.status, 0, minted.stderr);
  const token = minted.stdout.trim();
  const member = await context.newPage();
  watch(member, 'dashboard with token');
  await member.goto(`${jwtBase}/?token=${encodeURIComponent(token)}`);
  await member.waitForSelector('#status[data-status="open"]', { timeout: 10000 });
  await member.waitForSelector('#empty:not([hidden])', { timeout: 5000 });
  const hint = await member.textContent('#empty');
  assert.equal(hint, 'no prices yet: the built-in feed is off (feed.enabled) — publish to prices.* to see rows');
  const quote = (last) => fetch(`${jwtBase}/api/v1/publish`, {
    method: 'POST',
    body: JSON.stringify({ topic: 'prices.E2E', data: { symbol: 'E2E', bid: last - 1, ask: last + 1, last, volume: 1, ts: Date.now() } }),
  });
  assert.equal((await quote(101)).status, 200);
  await member.waitForSelector('#rows tr[data-symbol="E2E"]', { timeout: 5000 });
  assert.equal(await member.isHidden('#empty'), true, 'the hint goes once a row is there');
  assert.equal((await quote(202)).status, 200);
  await member.waitForFunction(() => document.querySelector('#rows tr[data-symbol="E2E"] td.last').textContent === '202.00', null, { timeout: 5000 });
  assert.equal(await member.isHidden('#auth'), true);
  log(`(j) JWT mode with ?token=: connected, hint "${hint.slice(0, 40)}…", then live updates (E2E 101 -> 202)`);

  // (p) Presence in the chat (the JWT server has presence.patterns = ["chat.>"]): alice and bob,
  // each with a token of their own, see each other in "online" and as join/leave lines. The
  // main server has no presence room, so (c), (e) and (h) above ran the page's fallback.
  const chatToken = (sub) => {
    const r = spawnSync(TICKWIRE_BIN, ['token', '--sub', sub, '--subscribe', 'chat.>', '--publish', 'chat.>', '--ttl', '1h'],
      { env: { ...process.env, TICKWIRE_JWT_SECRET: secret }, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.trim();
  };
  const online = (page) => page.$$eval('#online .member', (els) => els.map((e) => e.textContent));
  const presenceLines = (page) => page.$$eval('li.notice.presence', (els) => els.map((e) => e.textContent));
  const whoRoom = `who${Date.now()}`;
  const alicePres = await context.newPage();
  watch(alicePres, 'alice (presence)');
  await alicePres.goto(`${jwtBase}/chat?room=${whoRoom}&token=${encodeURIComponent(chatToken('alice'))}`);
  await alicePres.waitForSelector(`li.notice:has-text("joined chat.${whoRoom}")`, { timeout: 10000 });
  await alicePres.waitForFunction(() => document.querySelector('#online-count').textContent === 'online (1):', null, { timeout: 5000 });
  assert.deepEqual(await online(alicePres), ['alice']);
  const bobPres = await context.newPage();
  watch(bobPres, 'bob (presence)');
  await bobPres.goto(`${jwtBase}/chat?room=${whoRoom}&token=${encodeURIComponent(chatToken('bob'))}`);
  await bobPres.waitForFunction(() => document.querySelector('#online-count').textContent === 'online (2):', null, { timeout: 10000 });
  assert.deepEqual(await online(bobPres), ['alice', 'bob'], 'bob sees alice, who was there first');
  await alicePres.waitForSelector('li.notice.presence:has-text("bob joined")', { timeout: 5000 });
  await alicePres.waitForFunction(() => document.querySelector('#online-count').textContent === 'online (2):', null, { timeout: 5000 });
  assert.deepEqual(await online(alicePres), ['alice', 'bob'], 'alice sees bob join');
  assert.deepEqual(await presenceLines(bobPres), [], 'no line for those already there, nor for bob himself');
  await bobPres.close(); // the WebSocket goes with the page
  await alicePres.waitForSelector('li.notice.presence:has-text("bob left")', { timeout: 5000 });
  await alicePres.waitForFunction(() => document.querySelector('#online-count').textContent === 'online (1):', null, { timeout: 5000 });
  assert.deepEqual(await online(alicePres), ['alice'], 'bob gone from alice\'s list');
  assert.deepEqual(await presenceLines(alicePres), ['bob joined', 'bob left']);
  log('(p) presence: alice saw "bob joined" and "bob left" and her online list follow; bob saw alice on arrival');
  // Over SSE: carol's stream makes her a member, and her list comes from the HTTP endpoint.
  const carolPres = await context.newPage();
  watch(carolPres, 'carol (presence over SSE)');
  await carolPres.goto(`${jwtBase}/chat?room=${whoRoom}&transport=sse&token=${encodeURIComponent(chatToken('carol'))}`);
  await carolPres.waitForFunction(() => document.querySelector('#online-count').textContent === 'online (2):', null, { timeout: 10000 });
  assert.equal(await carolPres.textContent('#status'), 'connected (SSE)');
  assert.deepEqual(await online(carolPres), ['alice', 'carol']);
  await alicePres.waitForSelector('li.notice.presence:has-text("carol joined")', { timeout: 5000 });
  await carolPres.close();
  await alicePres.waitForSelector('li.notice.presence:has-text("carol left")', { timeout: 5000 });
  assert.deepEqual(await online(alicePres), ['alice']);
  log('(p) over SSE: carol is a member, her list [alice, carol] from GET …/presence; alice saw her join and leave');
  await alicePres.close();

  // (k) Subscribe options in the browser client: a page subscribes to doc.* with {delta: true}
  // and to rate.e2e with {maxRate: 2}; random documents published over HTTP arrive whole, each
  // deep-equal to what was published, almost all of them as Fossil deltas; after a reconnect
  // both options still hold.
  const docs = await context.newPage();
  watch(docs, 'deltas page');
  await docs.goto(`${base}/console`);
  await docs.evaluate(async () => {
    const { TickwireClient } = await import('/tickwire.js');
    window.e2eGot = [];
    window.e2eErrors = [];
    const client = new TickwireClient('/ws', {
      onMessage: (u) => window.e2eGot.push(u),
      onError: (e) => window.e2eErrors.push(e.code || e.message),
    });
    window.e2eClient = client;
    await client.subscribe(['doc.*'], { delta: true });
    await client.subscribe('rate.e2e', { maxRate: 2 });
    await client.subscribe('rate.bad', { maxRate: 0 }).then(
      () => window.e2eErrors.push('maxRate 0 accepted'),
      (e) => { if (e.code !== 'bad_request') window.e2eErrors.push(`maxRate 0: ${e.code}`); });
  });
  let seed = 18;
  const rand = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return Math.floor(seed / 65536) % n; };
  // JSON text fragments: multi-byte UTF-8 and escapes (a quote, a backslash, newline, tab).
  const words = ['price', 'é', 'мир', '🟢', '中文', '\\"quoted\\"', 'back\\\\slash', 'line\\nbreak', 'tab\\t'];
  const fields = Array.from({ length: 30 }, (_, i) => `"${words[i % words.length]}-${i}"`);
  const nextDoc = () => {
    for (let n = 1 + rand(3); n > 0; n--) {
      const i = rand(fields.length);
      fields[i] = [() => String(rand(1e6)), () => `"${words[rand(9)]} ${words[rand(9)]}"`,
        () => `{"bid": ${rand(1000)}, "ask": [1, 2.5, null]}`][rand(3)]();
    }
    return `{${fields.map((v, i) => `"k${i}": ${v}`).join(', ')}}`;
  };
  const deltaFrames = async () => {
    const line = (await (await fetch(`${base}/metrics`)).text()).split('\n').find((l) => l.startsWith('tickwire_delta_frames_total '));
    return line ? Number(line.split(' ').at(-1)) : 0;
  };
  /** Publishes `n` documents to doc.e2e and checks that the page got each one, deep-equal. */
  const publishDocs = async (n) => {
    const sent = new Map();
    for (let i = 0; i < n; i++) {
      const text = nextDoc();
      const r = await fetch(`${base}/api/v1/publish`, { method: 'POST', body: `{"topic":"doc.e2e","data":${text}}` });
      const reply = await r.json();
      assert.equal(r.status, 200, JSON.stringify(reply));
      sent.set(reply.seq, JSON.parse(text));
    }
    const last = Math.max(...sent.keys());
    await docs.waitForFunction((s) => window.e2eGot.some((u) => u.topic === 'doc.e2e' && u.seq === s), last, { timeout: 10000 });
    const got = await docs.evaluate(() => window.e2eGot.filter((u) => u.topic === 'doc.e2e'));
    for (const [seq, doc] of sent) {
      const u = got.find((g) => g.seq === seq);
      assert.ok(u, `doc.e2e #${seq} never arrived`);
      assert.deepEqual(u.data, doc, `doc.e2e #${seq}`);
      assert.equal(u.delta, undefined, 'the page sees data, not the delta');
    }
  };
  const [frames0, applied0] = [await deltaFrames(), await docs.evaluate(() => window.e2eClient.deltaFrames)];
  await publishDocs(60);
  const [frames1, applied1] = [await deltaFrames(), await docs.evaluate(() => window.e2eClient.deltaFrames)];
  assert.ok(applied1 - applied0 >= 55, `${applied1 - applied0} of 60 documents came as deltas`);
  assert.equal(frames1 - frames0, applied1 - applied0, 'the page applied every delta the server sent');
  log(`(k) 60 random documents arrived exact on a {delta: true} subscription, ${applied1 - applied0} as deltas`);
  // A burst of 300 to the {maxRate: 2} subscription: a few updates, the last the newest.
  const burst = async () => {
    const messages = Array.from({ length: 300 }, (_, i) => ({ topic: 'rate.e2e', data: { i } }));
    const r = await fetch(`${base}/api/v1/publish`, { method: 'POST', body: JSON.stringify({ messages }) });
    const last = (await r.json()).results.at(-1).seq;
    await docs.waitForFunction((s) => window.e2eGot.some((u) => u.topic === 'rate.e2e' && u.seq === s), last, { timeout: 10000 });
    const got = await docs.evaluate((s) => window.e2eGot.filter((u) => u.topic === 'rate.e2e' && u.seq > s - 300), last);
    assert.ok(got.length <= 4, `${got.length} updates of a burst of 300 at maxRate 2`);
    assert.deepEqual(got.at(-1).data, { i: 299 }, 'the newest arrives');
    return got.length;
  };
  const thinned = await burst();
  // The connection drops; the client re-subscribes with both options.
  await docs.evaluate(() => window.e2eClient.ws.close());
  await docs.waitForFunction(() => window.e2eClient.status === 'reconnecting', null, { timeout: 5000 });
  await docs.waitForFunction(() => window.e2eClient.status === 'open', null, { timeout: 10000 });
  await sleep(600); // past the rate's interval
  const applied2 = await docs.evaluate(() => window.e2eClient.deltaFrames);
  await publishDocs(20);
  const applied3 = await docs.evaluate(() => window.e2eClient.deltaFrames);
  assert.ok(applied3 - applied2 >= 18, `${applied3 - applied2} of 20 as deltas after the reconnect`);
  const thinnedAgain = await burst();
  assert.deepEqual(await docs.evaluate(() => window.e2eErrors), [], 'client errors');
  log(`    bursts of 300 at maxRate 2 gave ${thinned} and ${thinnedAgain} updates; after a reconnect ${applied3 - applied2} of 20 documents as deltas`);
  await docs.close();

  // (l) Server-Sent Events with the browser's own EventSource, through a proxy the test can
  // cut: subscribed, the snapshot, then updates, each with an id; after a cut, the browser
  // reconnects by itself with Last-Event-ID and gets exactly the 50 publications it missed,
  // then live ones.
  const proxy = await startProxy(Number(E2E_PORT));
  const raw = await context.newPage();
  watch(raw, 'EventSource page');
  await raw.goto(`${proxy.base}/console`);
  await publishHttp('sse.raw', { n: 0 });
  await raw.evaluate(() => {
    window.e2eEvents = [];
    const es = new EventSource('/sse?topics=sse.raw');
    for (const type of ['subscribed', 'snapshot', 'update']) {
      es.addEventListener(type, (e) => window.e2eEvents.push({ type, id: e.lastEventId, frame: JSON.parse(e.data) }));
    }
    es.onerror = () => window.e2eEvents.push({ type: 'error', readyState: es.readyState });
    window.e2eSource = es;
  });
  const events = (type) => raw.evaluate((t) => window.e2eEvents.filter((e) => !t || e.type === t), type);
  const untilSeq = (seq) => raw.waitForFunction((s) => window.e2eEvents.some((e) => e.type === 'update' && e.frame.seq === s), seq, { timeout: 15000 });
  await raw.waitForFunction(() => window.e2eEvents.some((e) => e.type === 'snapshot'), null, { timeout: 5000 });
  for (let n = 1; n <= 3; n++) await publishHttp('sse.raw', { n });
  await untilSeq(4);
  let evs = await events();
  assert.deepEqual(evs.map((e) => `${e.type}:${e.frame.seq ?? ''}`), ['subscribed:', 'snapshot:1', 'update:2', 'update:3', 'update:4']);
  assert.deepEqual(evs[0].frame.positions['sse.raw'].seq, 1);
  assert.ok(evs.slice(1).every((e) => /^[A-Za-z0-9_-]+$/.test(e.id)), 'every update and snapshot carries a URL-safe id');
  assert.deepEqual(evs[4].frame.data, { n: 3 });
  log(`(l) EventSource: subscribed, snapshot #1, updates #2-#4 (id ${evs[4].id.length} chars)`);
  proxy.open = false;
  proxy.cut();
  await raw.waitForFunction(() => window.e2eEvents.some((e) => e.type === 'error'), null, { timeout: 5000 });
  for (let n = 4; n < 54; n++) await publishHttp('sse.raw', { n });
  proxy.open = true;
  await raw.waitForFunction(() => window.e2eEvents.filter((e) => e.type === 'subscribed').length === 2, null, { timeout: 15000 });
  const live = await publishHttp('sse.raw', { n: 'live' });
  await untilSeq(live);
  evs = await events();
  const again = evs.findLastIndex((e) => e.type === 'subscribed');
  assert.deepEqual(evs[again].frame.recovered, { 'sse.raw': true });
  assert.deepEqual(evs.slice(again + 1).map((e) => e.frame.seq), Array.from({ length: 51 }, (_, i) => 5 + i), 'the 50 missed, then live');
  assert.ok(proxy.heads.some((h) => h.startsWith('GET /sse?topics=sse.raw') && /^last-event-id: [A-Za-z0-9_-]+$/im.test(h)), 'the browser sent Last-Event-ID');
  await raw.evaluate(() => window.e2eSource.close());
  log('(l) EventSource after a cut: the browser reconnected with Last-Event-ID; recovered, exactly the 50 missed (#5-#54) then live #55');
  await raw.close();

  // (m) tickwire.js with transport: "sse": the same events as over WebSocket (snapshot, updates,
  // deltas applied, publish over HTTP), a subscription added while streaming (the stream is
  // re-opened from its last id: no gap, no duplicate), and after a cut with 50 publications
  // missed, a reconnect that recovers them without a reset.
  const ssePage = await context.newPage();
  watch(ssePage, 'tickwire.js sse page');
  await ssePage.goto(`${proxy.base}/console`);
  await publishHttp('sse.js', { n: 0 });
  // Published once: a topic that never was gets a new epoch whenever it is created again, and
  // a client that reconnects to it reports a reset (over WebSocket too).
  await publishHttp('sse.other', { n: 0 });
  await ssePage.evaluate(async () => {
    const { TickwireClient } = await import('/tickwire.js');
    window.e2eGot = [];
    window.e2eResets = [];
    window.e2eErrors = [];
    const client = new TickwireClient('/ws', {
      transport: 'sse',
      backoff: { initial: 300, max: 600 },
      onMessage: (u) => window.e2eGot.push({ type: u.type, topic: u.topic, seq: u.seq, data: u.data }),
      onReset: (t) => window.e2eResets.push(t),
      onError: (e) => window.e2eErrors.push(e.code || e.message),
    });
    window.e2eClient = client;
    const reply = await client.subscribe('sse.js');
    window.e2eReply = reply;
  });
  assert.equal(await ssePage.evaluate(() => window.e2eClient.transport), 'sse');
  assert.deepEqual(await ssePage.evaluate(() => window.e2eReply.positions['sse.js'].seq), 1);
  const jsGot = (topic) => ssePage.evaluate((t) => window.e2eGot.filter((u) => u.topic === t), topic);
  const jsUntil = (topic, seq) => ssePage.waitForFunction(([t, s]) => window.e2eGot.some((u) => u.topic === t && u.seq === s), [topic, seq], { timeout: 15000 });
  for (let n = 1; n <= 3; n++) await publishHttp('sse.js', { n });
  await jsUntil('sse.js', 4);
  // Published by the page itself: an HTTP POST (open publishing: no API key configured).
  const published = await ssePage.evaluate(() => window.e2eClient.publish('sse.js', { n: 'page' }));
  assert.equal(published.seq, 5);
  await jsUntil('sse.js', 5);
  // A second subscription while updates flow: sse.js goes on without gap or duplicate.
  const flowing = (async () => { for (let n = 6; n <= 25; n++) { await publishHttp('sse.js', { n }); await sleep(5); } })();
  await ssePage.evaluate(() => window.e2eClient.subscribe(['doc.*'], { delta: true }));
  await ssePage.evaluate(() => window.e2eClient.subscribe('sse.other'));
  await flowing;
  await jsUntil('sse.js', 25);
  let seqs = (await jsGot('sse.js')).map((u) => u.seq);
  assert.deepEqual(seqs, Array.from({ length: 25 }, (_, i) => 1 + i), 'sse.js across two re-opens of its stream');
  log(`(m) tickwire.js over SSE: snapshot, updates, a publish over HTTP (seq ${published.seq}), two subscriptions added while streaming: #1-#25 once each`);
  // Deltas over SSE: documents arrive whole.
  const [sseApplied0] = [await ssePage.evaluate(() => window.e2eClient.deltaFrames)];
  const sentDocs = new Map();
  for (let i = 0; i < 20; i++) {
    const text = nextDoc();
    const r = await fetch(`${base}/api/v1/publish`, { method: 'POST', body: `{"topic":"doc.sse","data":${text}}` });
    sentDocs.set((await r.json()).seq, JSON.parse(text));
  }
  await jsUntil('doc.sse', Math.max(...sentDocs.keys()));
  const docsGot = await jsGot('doc.sse');
  for (const [seq, doc] of sentDocs) assert.deepEqual(docsGot.find((u) => u.seq === seq)?.data, doc, `doc.sse #${seq}`);
  const sseApplied = (await ssePage.evaluate(() => window.e2eClient.deltaFrames)) - sseApplied0;
  assert.ok(sseApplied >= 18, `${sseApplied} of 20 documents as deltas over SSE`);
  log(`    20 documents on {delta: true} over SSE arrived exact, ${sseApplied} as deltas`);
  // A delta that does not apply (the page's copy of the last data damaged on purpose): an
  // `error` event with code `delta`, the stream starts over (a reset, the snapshot), and the
  // documents are whole again.
  await ssePage.evaluate(() => {
    const base = window.e2eClient._bases.get('doc.sse');
    base.text = base.text.replace('"k0"', '"kX"');
  });
  let lastDoc;
  for (let i = 0; i < 3; i++) {
    lastDoc = nextDoc();
    const r = await fetch(`${base}/api/v1/publish`, { method: 'POST', body: `{"topic":"doc.sse","data":${lastDoc}}` });
    sentDocs.set((await r.json()).seq, JSON.parse(lastDoc));
  }
  const lastSeq = Math.max(...sentDocs.keys());
  await jsUntil('doc.sse', lastSeq);
  assert.deepEqual((await jsGot('doc.sse')).findLast((u) => u.seq === lastSeq).data, JSON.parse(lastDoc));
  assert.ok((await ssePage.evaluate(() => window.e2eErrors)).includes('delta'), 'the failed delta was reported');
  // The stream's other topic (doc.e2e, from (k)) starts over too.
  assert.deepEqual((await ssePage.evaluate(() => window.e2eResets)).sort(), ['doc.e2e', 'doc.sse']);
  await ssePage.evaluate(() => { window.e2eErrors = []; window.e2eResets = []; });
  log(`    a delta that did not apply: error "delta", the stream's topics reset, doc.sse whole again (#${lastSeq})`);
  // The cut: 50 publications while the proxy refuses, then the client's own reconnect.
  proxy.open = false;
  proxy.cut();
  await ssePage.waitForFunction(() => window.e2eClient.status === 'reconnecting', null, { timeout: 5000 });
  for (let n = 26; n < 76; n++) await publishHttp('sse.js', { n });
  proxy.open = true;
  await ssePage.waitForFunction(() => window.e2eClient.status === 'open', null, { timeout: 15000 });
  await jsUntil('sse.js', 75);
  const jsLive = await publishHttp('sse.js', { n: 'live' });
  await jsUntil('sse.js', jsLive);
  seqs = (await jsGot('sse.js')).map((u) => u.seq);
  assert.deepEqual(seqs, Array.from({ length: 76 }, (_, i) => 1 + i), 'sse.js after the cut: the 50 missed, then live');
  assert.deepEqual(await ssePage.evaluate(() => window.e2eResets), [], 'no reset');
  assert.deepEqual(await ssePage.evaluate(() => window.e2eErrors), [], 'client errors');
  assert.ok(proxy.heads.some((h) => /^GET \/sse\?topics=sse\.js.*last_event_id=/m.test(h)), 'the re-opened stream carried its last event id');
  await ssePage.evaluate(() => window.e2eClient.close());
  log('(m) after a cut with 50 publications missed: the client reconnected over SSE and recovered #26-#75, then live, no reset');
  await ssePage.close();

  // (n) transport "auto" behind a proxy that breaks WebSocket (502 to every upgrade): two
  // failed WebSocket connections, then SSE (the chat page works over it); once the proxy lets
  // WebSocket through, the client goes back to it, and nothing is lost on the way.
  proxy.blockWebSocket = true;
  const autoPage = await context.newPage();
  watch(autoPage, 'auto page');
  await autoPage.goto(`${proxy.base}/chat?room=auto&name=carol`);
  await autoPage.waitForFunction(() => window.tickwire.transport === 'sse' && window.tickwire.status === 'open', null, { timeout: 20000 });
  await autoPage.evaluate(() => {
    window.e2eTransports = [];
    window.tickwire.addEventListener('transport', (e) => window.e2eTransports.push(e.detail));
    // The next try of WebSocket in 1.5 s rather than a minute.
    window.tickwire.options.wsRetryInterval = 1500;
    window.tickwire._scheduleProbe();
  });
  assert.equal(await autoPage.textContent('#status'), 'connected (SSE)');
  await autoPage.fill('#text', 'over sse');
  await autoPage.press('#text', 'Enter');
  await autoPage.waitForSelector('li.msg:has-text("over sse")', { timeout: 5000 });
  const wsTries = proxy.heads.filter((h) => /^upgrade:\s*websocket/im.test(h)).length;
  assert.ok(wsTries >= 2, `${wsTries} WebSocket attempts before SSE`);
  log(`(n) auto: ${wsTries} WebSocket upgrades refused by the proxy, then SSE ("${await autoPage.textContent('#status')}"); a chat message sent over HTTP came back`);
  proxy.blockWebSocket = false;
  await autoPage.waitForFunction(() => window.tickwire.transport === 'websocket' && window.tickwire.status === 'open', null, { timeout: 15000 });
  await publishHttp('chat.auto', { user: 'http', text: 'back on websocket' });
  await autoPage.waitForSelector('li.msg:has-text("back on websocket")', { timeout: 5000 });
  const autoTexts = await autoPage.$$eval('li.msg .text', (els) => els.map((e) => e.textContent));
  assert.deepEqual(autoTexts, ['over sse', 'back on websocket'], 'each message once, in order');
  assert.deepEqual(await autoPage.evaluate(() => window.e2eTransports), ['websocket'], 'went back to WebSocket');
  log('(n) auto: once the proxy let WebSocket through, the client went back to it; messages once each, in order');
  await autoPage.close();
  proxy.close();
  // The dashboard with ?transport=sse: the feed's 20 symbols, prices moving.
  const sseDash = await context.newPage();
  watch(sseDash, 'dashboard over SSE');
  await sseDash.goto(`${base}/?transport=sse`);
  await sseDash.waitForFunction(() => document.querySelector('#status').textContent === 'connected (SSE)'
    && document.querySelectorAll('#rows tr').length === 20, null, { timeout: 10000 });
  const ssePrices = await lastPrices(sseDash);
  await sleep(1500);
  const sseMoved = changed(ssePrices, await lastPrices(sseDash));
  assert.ok(sseMoved > 0, 'prices move over SSE');
  log(`    /?transport=sse: "connected (SSE)", 20 symbols, ${sseMoved} prices changed in 1.5 s`);
  await sseDash.close();

  assert.deepEqual(errors, [], 'page errors');
  log('e2e: all checks passed');
} finally {
  await context.close();
  for (const c of children) c.kill('SIGTERM');
}

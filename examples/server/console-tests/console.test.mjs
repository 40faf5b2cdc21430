// Browser test of the operator console (issue 14, item 2).
//
// Starts the built dreamnet-server binary on a free loopback port, drives Debian's Chromium
// with playwright-core (no browser download) through the console, and checks the server's
// answers from outside the browser too. Exits non-zero on the first failed check; prints
// `console: N passed, M failed` last. The whole run is bounded (RUN_LIMIT_MS).
//
//   cargo build -p dreamnet-server && npm ci && node console.test.mjs
//
// DREAMNET_SERVER_BIN overrides the binary (default <repo>/target/debug/dreamnet-server, or
// under CARGO_TARGET_DIR), CHROMIUM the browser (default /usr/bin/chromium). Screenshots go
// to ./screenshots/ (gitignored).

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../../..');
const BIN = process.env.DREAMNET_SERVER_BIN
  || path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target'), 'debug', 'dreamnet-server');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = path.join(HERE, 'screenshots');
const RUN_LIMIT_MS = 60_000;
const STEP_MS = 5_000;
const TOKEN = randomBytes(24).toString('hex');
const ACTOR = 'ci-browser';

let passed = 0;
let failed = 0;

class CheckFailed extends Error {}

function check(ok, what, detail) {
  if (ok) {
    passed += 1;
    console.log(`ok ${passed} - ${what}`);
    return;
  }
  failed += 1;
  console.log(`not ok - ${what}${detail === undefined ? '' : `: ${detail}`}`);
  throw new CheckFailed(what);
}

/** Polls `probe` until it returns a truthy value or `ms` pass; returns the last value. */
async function eventually(probe, ms = STEP_MS) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await probe();
    } catch (err) {
      last = undefined;
      if (Date.now() >= end) throw err;
    }
    if (last || Date.now() >= end) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// ---- the server ------------------------------------------------------------------------

let server;
let serverLog = '';

async function startServer() {
  check(fs.existsSync(BIN), `the server binary exists (${BIN})`, 'run cargo build -p dreamnet-server first');
  const port = await freePort();
  const env = { ...process.env, DREAMNET_ADMIN_TOKEN: TOKEN, RUST_LOG: 'warn' };
  // Memory stores only: this test needs no Redis or PostgreSQL.
  for (const key of ['DREAMNET_REDIS_URL', 'DREAMNET_DATABASE_URL', 'DREAMNET_CONFIG', 'DREAMNET_ADDR']) {
    delete env[key];
  }
  server = spawn(BIN, ['--addr', `127.0.0.1:${port}`], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const keep = (chunk) => { serverLog = (serverLog + chunk).slice(-4000); };
  server.stdout.on('data', keep);
  server.stderr.on('data', keep);
  const base = `http://127.0.0.1:${port}`;
  const up = await eventually(async () => (await fetch(`${base}/healthz`)).ok, 15_000);
  check(up, `the server answers /healthz on ${base}`, serverLog);
  return base;
}

async function http(base, method, urlPath, { token, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(base + urlPath, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}

// ---- the test --------------------------------------------------------------------------

async function run() {
  const base = await startServer();

  // The page itself: no token needed, strict headers.
  const pageRes = await http(base, 'GET', '/console');
  check(pageRes.status === 200, 'GET /console answers 200 without a token', pageRes.status);
  check(/^text\/html/.test(pageRes.headers.get('content-type') || ''), 'the page is text/html',
    pageRes.headers.get('content-type'));
  const csp = pageRes.headers.get('content-security-policy') || '';
  check(csp.includes("script-src 'self'") && !csp.includes('unsafe-inline'),
    'the page has a strict Content-Security-Policy', csp);
  check(pageRes.headers.get('x-content-type-options') === 'nosniff', 'the page says nosniff');
  const js = await http(base, 'GET', '/console/console.js');
  check(js.status === 200 && /javascript/.test(js.headers.get('content-type') || ''),
    'the script is served as JavaScript', `${js.status} ${js.headers.get('content-type')}`);

  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'dreamnet-console-'));
  fs.mkdirSync(SHOTS, { recursive: true });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 20_000,
  });
  try {
    await drive(context, base);
  } finally {
    await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

async function drive(context, base) {
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  const requests = [];
  const problems = [];
  page.on('request', (r) => requests.push({ url: r.url(), method: r.method(), auth: r.headers().authorization }));
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    // Chromium logs every 4xx it fetched ("Failed to load resource"); the test provokes those.
    if (msg.type() === 'error' && !/Failed to load resource/.test(msg.text())) problems.push(msg.text());
  });
  const apiCalls = () => requests.filter((r) => new URL(r.url).pathname.startsWith('/api/'));
  const posts = (suffix) => requests.filter((r) => r.method === 'POST' && r.url.endsWith(suffix)).length;

  await page.goto(`${base}/console`);
  check(await page.locator('#token').isVisible(), 'the token form is shown');
  check(await page.locator('#dashboard').isHidden(), 'no dashboard without a token');
  await page.waitForTimeout(1800); // longer than one poll interval
  check(apiCalls().length === 0, 'without a token the page fetches no data', JSON.stringify(apiCalls()));

  // A wrong token: the 401 problem is shown, nothing is kept.
  await page.fill('#token', 'not-the-token');
  await page.click('#login-form button[type=submit]');
  const loginProblem = page.locator('#login-error .problem');
  await loginProblem.waitFor();
  const loginText = await loginProblem.innerText();
  check(/401/.test(loginText) && /Unauthorized/i.test(loginText), 'a wrong token shows the 401 problem', loginText);
  check(/Trace id/.test(loginText), 'the 401 problem shows its trace id', loginText);
  check(await page.locator('#dashboard').isHidden(), 'a wrong token shows no dashboard');
  check(await page.evaluate(() => sessionStorage.getItem('dreamnet.console.token')) === null,
    'a wrong token is not kept in sessionStorage');
  check(apiCalls().some((r) => r.auth === 'Bearer not-the-token'), 'the token is sent as Authorization: Bearer');

  // The right token.
  await page.fill('#token', TOKEN);
  await page.fill('#actor', ACTOR);
  await page.press('#token', 'Enter');
  await page.locator('article[data-cluster="wolf-pack"]').waitFor();
  const clusters = await page.locator('#cluster-list article').count();
  check(clusters === 12, 'every default cluster has a card', clusters);
  check(await page.locator('article[data-cluster="wolf-pack"] .window').count() === 3,
    'wolf-pack shows its three rate-limit windows');
  const minute = await page.locator('article[data-cluster="wolf-pack"] [data-window="minute"]').innerText();
  check(/0 \/ 60/.test(minute) && /resets in/.test(minute), 'a window shows used / limit and its reset', minute);
  check(apiCalls().every((r) => !r.url.includes(TOKEN) && !r.url.includes('not-the-token')),
    'no URL ever carries a token');
  check(await page.evaluate(() => sessionStorage.getItem('dreamnet.console.token')) !== null,
    'the token is kept in sessionStorage');

  // Engage the kill switch: the reason is required (checked in the page), then confirmed.
  const reason = `ci browser test ${randomBytes(3).toString('hex')}`;
  await page.click('#ks-engage');
  await page.locator('dialog#confirm[open]').waitFor();
  check(await page.evaluate(() => document.activeElement && document.activeElement.id) === 'field-reason',
    'the dialog opens with the focus on the reason');
  await page.click('#confirm-ok');
  const reasonError = await page.locator('#field-reason-error').innerText();
  check(reasonError.length > 0 && await page.locator('dialog#confirm[open]').isVisible(),
    'engaging without a reason is refused in the page', reasonError);
  check(posts('/kill-switch/enable') === 0, 'nothing was sent without a reason');
  await page.fill('#field-reason', reason);
  await page.press('#field-reason', 'Enter');
  await page.locator('dialog#confirm').waitFor({ state: 'hidden' });
  const engaged = await eventually(async () => /ENGAGED/.test(await page.locator('#ks-state').innerText()));
  check(engaged, 'the page shows the kill switch engaged');
  const facts = await page.locator('#ks-facts').innerText();
  check(facts.includes(reason) && facts.includes(ACTOR), 'the page shows the reason and who engaged it', facts);
  const echo = await http(base, 'GET', '/api/wolf-pack/echo');
  check(echo.status === 503, 'the guarded echo answers 503 with the kill switch engaged', echo.status);
  check((await http(base, 'GET', '/console')).status === 200, 'the console is not blocked by the kill switch');
  await page.screenshot({ path: path.join(SHOTS, 'engaged-1280.png'), fullPage: true });

  // Release it again from the page.
  await page.click('#ks-release');
  await page.locator('dialog#confirm[open]').waitFor();
  await page.click('#confirm-ok');
  const released = await eventually(async () => /Released/.test(await page.locator('#ks-state').innerText()));
  check(released, 'the page shows the kill switch released');
  const echoAgain = await http(base, 'GET', '/api/wolf-pack/echo');
  check(echoAgain.status === 200, 'the guarded echo answers 200 again', echoAgain.status);

  // Edit a rate limit: the page refuses a negative number, the API's 400 is shown, then 7.
  const orca = page.locator('article[data-cluster="orca-pack"]');
  await orca.getByRole('button', { name: 'Edit limits of orca-pack' }).click();
  await page.locator('dialog#confirm[open]').waitFor();
  await page.fill('#field-requestsPerMinute', '-1');
  await page.click('#confirm-ok');
  const limitError = await page.locator('#field-requestsPerMinute-error').innerText();
  check(limitError.length > 0, 'a negative limit is refused in the page', limitError);
  check(posts('/rate-limit') === 0, 'nothing was sent for a negative limit');
  await page.fill('#field-requestsPerMinute', '2000000000000');
  await page.click('#confirm-ok');
  const apiProblem = page.locator('#confirm-error .problem');
  await apiProblem.waitFor();
  const apiText = await apiProblem.innerText();
  check(/400/.test(apiText) && /Trace id/.test(apiText), "the API's 400 problem is shown in the dialog", apiText);
  await page.fill('#field-requestsPerMinute', '7');
  await page.click('#confirm-ok');
  await page.locator('dialog#confirm').waitFor({ state: 'hidden' });
  const limit = await http(base, 'GET', '/api/control/cluster/orca-pack/rate-limit', { token: TOKEN });
  check(limit.json && limit.json.requestsPerMinute === 7, 'the API has the new limit', limit.text);
  for (let i = 0; i < 2; i += 1) await http(base, 'GET', '/api/orca-pack/echo');
  const used = await eventually(async () => {
    const text = await orca.locator('[data-window="minute"] .window-value').innerText();
    return /^2 \/ 7/.test(text) && text;
  });
  check(used, 'the page shows the new limit and live usage (2 / 7)', used);

  // The audit trail, newest first.
  const newest = await eventually(async () => page.locator('#audit-list li').first().getAttribute('data-action'));
  check(newest === 'rate_limit.update', 'the audit trail lists the newest change first', newest);
  check(await page.locator('#audit-list li', { hasText: reason }).count() >= 1, 'the audit trail has the kill switch reason');

  // API data is text, never markup.
  const markup = '<img id="xss" src="x"><b>bold</b>';
  await http(base, 'POST', '/api/control/cluster/spider-web/disable',
    { token: TOKEN, body: { reason: markup, disabledBy: 'ci' } });
  const spider = page.locator('article[data-cluster="spider-web"]');
  const shown = await eventually(async () => (await spider.locator('.note').innerText()).includes(markup));
  check(shown, 'a disabled cluster shows its reason as text');
  check(await page.locator('#xss').count() === 0, 'a reason with markup is not turned into elements');
  await spider.getByRole('button', { name: 'Enable spider-web' }).click();
  await page.locator('dialog#confirm[open]').waitFor();
  await page.keyboard.press('Escape');
  await page.locator('dialog#confirm').waitFor({ state: 'hidden' });
  check(await page.evaluate(() => document.activeElement && document.activeElement.textContent) === 'Enable…',
    'Escape closes the dialog and gives the focus back');
  check(posts('/spider-web/enable') === 0, 'a cancelled dialog sends nothing');
  await spider.getByRole('button', { name: 'Enable spider-web' }).click();
  await page.click('#confirm-ok');
  const reenabled = await eventually(async () => (await spider.locator('.badge').first().innerText()) === 'enabled');
  check(reenabled, 'a cluster enabled from the page shows enabled');

  // Trip and reset a breaker.
  const jaggy = page.locator('article[data-cluster="jaggy-core"]');
  await jaggy.getByRole('button', { name: 'Trip breaker of jaggy-core' }).click();
  await page.click('#confirm-ok');
  const tripped = await eventually(async () => /forced open/.test(await jaggy.locator('.breaker').innerText()));
  check(tripped, 'a tripped breaker shows forced open');
  const blocked = await http(base, 'GET', '/api/jaggy-core/echo');
  check(blocked.status === 503, 'the tripped cluster answers 503', blocked.status);
  await jaggy.getByRole('button', { name: 'Reset breaker of jaggy-core' }).click();
  await page.click('#confirm-ok');
  const closed = await eventually(async () => /closed/.test(await jaggy.locator('.breaker').innerText()));
  check(closed, 'a reset breaker shows closed');

  // Account lookup and credit.
  await page.fill('#account-id', 'ci-acct');
  await page.click('#account-form button[type=submit]');
  await page.locator('#account-view .problem').waitFor();
  check(/404/.test(await page.locator('#account-view .problem').innerText()), 'an unknown account shows the 404 problem');
  await page.locator('#account-view').getByRole('button', { name: 'Add credit…' }).click();
  await page.fill('#field-amount', '500');
  await page.click('#confirm-ok');
  const credited = await eventually(async () => (await page.locator('#account-view').innerText()).includes('5.00 USD'));
  check(credited, 'a credit shows on the account');

  // Phone width: nothing sticks out sideways, also with a dialog open.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  await page.waitForTimeout(300);
  check(await overflow() <= 0, 'no horizontal overflow at 390 px', await overflow());
  await page.screenshot({ path: path.join(SHOTS, 'console-390.png') });
  await orca.getByRole('button', { name: 'Edit limits of orca-pack' }).click();
  await page.locator('dialog#confirm[open]').waitFor();
  await page.screenshot({ path: path.join(SHOTS, 'dialog-390.png') });
  const box = await page.locator('dialog#confirm').boundingBox();
  check(box && box.x >= 0 && box.x + box.width <= 390, 'the dialog fits a 390 px screen', JSON.stringify(box));
  await page.click('#confirm-cancel');
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.waitForTimeout(300);
  check(await overflow() <= 0, 'no horizontal overflow at 1280 px', await overflow());

  // Forgetting the token drops the data and stops polling.
  await page.click('#sign-out');
  check(await page.locator('#dashboard').isHidden() && await page.locator('#cluster-list article').count() === 0,
    'forgetting the token clears the page');
  const before = apiCalls().length;
  await page.waitForTimeout(1800);
  check(apiCalls().length === before, 'no data is fetched after the token is forgotten');

  check(problems.length === 0, 'no script errors or CSP violations in the page', problems.join(' | '));
}

// ---- main ------------------------------------------------------------------------------

const limit = setTimeout(() => {
  console.log(`not ok - the run took more than ${RUN_LIMIT_MS / 1000} s`);
  console.log(`console: ${passed} passed, ${failed + 1} failed`);
  if (server) server.kill('SIGKILL');
  process.exit(1);
}, RUN_LIMIT_MS);

let code = 0;
const started = Date.now();
try {
  await run();
} catch (err) {
  code = 1;
  if (!(err instanceof CheckFailed)) {
    failed += 1;
    console.log(`not ok - ${err.stack || err}`);
  }
  if (serverLog) console.log(`server output (last lines):\n${serverLog}`);
} finally {
  clearTimeout(limit);
  if (server && server.exitCode === null) server.kill('SIGTERM');
}
console.log(`(${((Date.now() - started) / 1000).toFixed(1)} s)`);
console.log(`console: ${passed} passed, ${failed} failed`);
process.exit(code || (failed ? 1 : 0));

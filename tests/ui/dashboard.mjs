// Drives canaryd's /ui in real headless Chromium (Debian's `chromium`) with playwright-core.
// Run by tests/dashboard.rs against a running canaryd with traffic and a paused rollout:
//
//   node tests/ui/dashboard.mjs --admin http://127.0.0.1:PORT --token T --rollout-route web \
//        --plain-route plain --config-error FIELD --out target/dashboard
//
// Every check is made on what the page shows, then (for actions) on what the admin API says,
// read here with node's own fetch as an independent client. Exits non-zero with the reason
// on the first failure; console errors and CSP violations fail the run.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const admin = args.admin;
const token = args.token;
const out = args.out || 'target/dashboard';
const rolloutRoute = args['rollout-route'];
const plainRoute = args['plain-route'];
const TIMEOUT = 30_000;

function fail(msg) {
  console.error(`FAIL: ${msg}`);
  process.exit(1);
}

async function apiGet(path) {
  const r = await fetch(admin + path, { headers: { Authorization: `Bearer ${token}` } });
  if (!r.ok) fail(`GET ${path}: ${r.status}`);
  return r.json();
}

async function until(what, fn) {
  const end = Date.now() + TIMEOUT;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 200));
  }
  fail(`timed out waiting for ${what}`);
}

const problems = [];
function watch(page, name) {
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`${name}: console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`${name}: page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    // The event stream is cut when the page closes; anything else failing is a problem.
    if (!r.url().endsWith('/api/v1/events')) problems.push(`${name}: request failed: ${r.url()} ${r.failure()?.errorText}`);
  });
}

// Open /ui, give the token when asked, wait for both versions' shares and non-empty charts.
async function open(page, route) {
  const resp = await page.goto(`${admin}/ui#${route}`);
  const csp = resp.headers()['content-security-policy'] || '';
  if (!csp.includes("script-src 'self'") || csp.includes('unsafe-inline')) fail(`weak or missing CSP on /ui: ${csp}`);
  await page.locator('#token-form').waitFor({ state: 'visible', timeout: TIMEOUT });
  await page.fill('#token-input', token);
  await page.click('#token-use');
  for (const v of ['stable', 'canary']) {
    const share = page.locator(`#versions tr[data-version="${v}"] .share`);
    await until(`${v}'s share on ${route}`, async () => /^\d+\.\d\d %$/.test((await share.textContent()) || ''));
  }
  for (const c of ['rate', 'success', 'p50', 'p99']) {
    const fig = page.locator(`.chart[data-chart="${c}"]`);
    await until(`chart ${c} with points`, async () => Number(await fig.getAttribute('data-points')) > 0);
    const canvas = await fig.locator('canvas').boundingBox();
    if (!canvas || canvas.width < 100 || canvas.height < 50) fail(`chart ${c} has no drawing area`);
  }
  await until('the live stream', async () => (await page.textContent('#live')) === 'live');
}

async function confirmClick(page, selector) {
  await page.click(selector);
  await page.locator('#confirm').waitFor({ state: 'visible' });
  await page.click('#confirm-ok');
  await page.locator('#confirm').waitFor({ state: 'hidden' });
}

async function noOverflow(page, name) {
  const { scroll, inner } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    inner: window.innerWidth,
  }));
  if (scroll > inner + 1) fail(`${name}: the page is ${scroll}px wide in a ${inner}px viewport`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu'],
});
try {
  mkdirSync(out.replace(/\/[^/]*$/, ''), { recursive: true });
  const desktop = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  watch(desktop, 'desktop');
  await open(desktop, rolloutRoute);

  // The rollout waits at an indefinite pause: PROMOTE must be on, RESUME too, RETRY off.
  const phase = desktop.locator('#rollout-phase');
  await until('the paused rollout', async () => (await phase.textContent()).startsWith('paused'));
  const before = await apiGet(`/api/v1/routes/${rolloutRoute}/rollout`);
  if (before.phase !== 'paused') fail(`the API says ${before.phase} before PROMOTE`);
  for (const [verb, on] of [['promote', true], ['promote-full', true], ['abort', true], ['retry', false]]) {
    const disabled = await desktop.locator(`button[data-verb="${verb}"]`).isDisabled();
    if (disabled === on) fail(`${verb} is ${disabled ? 'disabled' : 'enabled'} on a paused rollout`);
  }
  // Cancel does nothing.
  await desktop.click('button[data-verb="promote"]');
  await desktop.click('#confirm-cancel');
  if ((await apiGet(`/api/v1/routes/${rolloutRoute}/rollout`)).step !== before.step) fail('a cancelled PROMOTE acted');

  await confirmClick(desktop, 'button[data-verb="promote"]');
  await until('the phase after PROMOTE', async () => (await phase.textContent()).startsWith('progressing'));
  const promoted = await apiGet(`/api/v1/routes/${rolloutRoute}/rollout`);
  if (promoted.phase !== 'progressing' || promoted.step <= before.step) {
    fail(`after PROMOTE the API says ${promoted.phase} at step ${promoted.step} (was ${before.step})`);
  }
  const current = desktop.locator('#rollout-steps li[aria-current="step"]');
  if ((await current.count()) !== 1) fail('no current step marked');
  await desktop.screenshot({ path: `${out}.png`, fullPage: true });

  await confirmClick(desktop, 'button[data-verb="abort"]');
  await until('the phase after ABORT', async () => (await phase.textContent()).startsWith('aborted'));
  const canaryWeight = desktop.locator('#versions tr[data-version="canary"] .weight');
  await until('the canary at 0 %', async () => (await canaryWeight.textContent()) === '0.00 %');
  const aborted = await apiGet(`/api/v1/routes/${rolloutRoute}`);
  const canary = aborted.versions.find((v) => v.name === 'canary');
  if (canary.weight !== 0) fail(`after ABORT the API says canary ${canary.weight} %`);
  if ((await apiGet(`/api/v1/routes/${rolloutRoute}/rollout`)).phase !== 'aborted') fail('the API does not say aborted');
  if (!(await desktop.locator('button[data-verb="retry"]').isEnabled())) fail('RETRY is off after ABORT');
  await desktop.screenshot({ path: `${out}-aborted.png`, fullPage: true });

  // A route without a rollout: the weight control sets the canary's share.
  if (plainRoute) {
    await desktop.click(`#routes a[href="#${plainRoute}"]`);
    await until(`route ${plainRoute} on the page`, async () => (await desktop.textContent('#route-name')) === plainRoute);
    await desktop.locator('#weight-control').waitFor({ state: 'visible', timeout: TIMEOUT });
    if (await desktop.locator('#rollout-panel').isVisible()) fail('a route without a rollout shows a rollout panel');
    await desktop.fill('#weight-inputs input[data-version="canary"]', '35');
    await confirmClick(desktop, '#weights-set');
    await until('canary at 35 % in the API', async () => {
      const r = await apiGet(`/api/v1/routes/${plainRoute}`);
      return r.versions.find((v) => v.name === 'canary').weight === 35;
    });
    await until('canary at 35 % on the page', async () => (await desktop.textContent('#versions tr[data-version="canary"] .weight')) === '35.00 %');
  }
  // A refused reload: the config panel names the field, and the proxy kept its last good config.
  if (args['config-error']) {
    const err = desktop.locator('#config-error');
    await err.waitFor({ state: 'visible', timeout: TIMEOUT });
    const text = await err.textContent();
    if (!text.includes(args['config-error'])) fail(`the config panel says "${text}", not ${args['config-error']}`);
  }
  await noOverflow(desktop, 'desktop');

  // A phone: a new tab (the token is per tab, so it is asked again), one column, no overflow.
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  watch(phone, 'mobile');
  await open(phone, rolloutRoute);
  await noOverflow(phone, 'mobile');
  const a = await phone.locator('.chart[data-chart="rate"]').boundingBox();
  const b = await phone.locator('.chart[data-chart="success"]').boundingBox();
  if (!(b.y >= a.y + a.height - 1)) fail('charts are not stacked on a narrow screen');
  await phone.screenshot({ path: `${out}-mobile.png`, fullPage: true });

  await desktop.close();
  await phone.close();
  if (problems.length) fail(problems.join('\n'));
  console.log(JSON.stringify({ ok: true, screenshots: [`${out}.png`, `${out}-aborted.png`, `${out}-mobile.png`] }));
} finally {
  await browser.close();
}

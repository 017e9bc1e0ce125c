// console.mjs - the web console in a real browser (Debian's chromium driven by
// playwright-core; no browser download). Run by tests/blackbox/test_console_browser.py:
//   node console.mjs CONFIG.json
// CONFIG: {url, chromium, out_dir, operators: {name: {cert, key}}, monitor_vitals: [argv],
//          monitor_alarms: [argv], vitals_device, alarm_device, release_id, approve_device}
// Prints one JSON line of results on stdout; exit 0 when every step passed.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { createRequire } from 'node:module';
import path from 'node:path';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const require = createRequire(path.join(cfg.node_modules, 'x.js'));
const { chromium } = require('playwright-core');

const results = { steps: [], csp_violations: [], page_errors: [] };
function step(name, extra) {
  results.steps.push({ name, at: Date.now(), ...(extra || {}) });
  process.stderr.write('step: ' + name + (extra ? ' ' + JSON.stringify(extra) : '') + '\n');
}

// One request as the device (its own certificate), as a monitor's updater would make it.
function device(method, p, body) {
  return new Promise((resolve, reject) => {
    const data = body ? JSON.stringify(body) : null;
    const req = https.request(cfg.url + p, {
      method, cert: readFileSync(cfg.device.cert), key: readFileSync(cfg.device.key),
      ca: readFileSync(cfg.ca), servername: 'localhost',
      headers: data ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {},
    }, (res) => {
      let out = '';
      res.on('data', (c) => { out += c; });
      res.on('end', () => resolve({ status: res.statusCode, body: out }));
    });
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

function run(argv) {
  return new Promise((resolve) => {
    const p = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'inherit'] });
    p.on('exit', (code) => resolve(code));
  });
}

async function context(browser, name) {
  const op = cfg.operators[name];
  const ctx = await browser.newContext({
    clientCertificates: [{ origin: cfg.url, certPath: op.cert, keyPath: op.key }],
    ignoreHTTPSErrors: true, // the test CA is not in chromium's store; the certificate is checked by curl/Python elsewhere
    viewport: { width: 1280, height: 900 },
  });
  const page = await ctx.newPage();
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) results.csp_violations.push(m.text());
  });
  page.on('pageerror', (e) => results.page_errors.push(String(e)));
  return { ctx, page };
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(cfg.out_dir, name + '.png'), fullPage: true });
}

async function main() {
  const browser = await chromium.launch({ executablePath: cfg.chromium, args: ['--no-sandbox'] });
  try {
    // 1. The console loads for operator1: identity from the certificate, live stream open.
    const a = await context(browser, 'operator1');
    await a.page.goto(cfg.url + '/console/#ward');
    await a.page.waitForSelector('body[data-ready]', { timeout: 20000 });
    const who = await a.page.textContent('#who');
    if (!who.includes('operator1')) throw new Error('identity not shown: ' + who);
    await a.page.waitForSelector('#live.on', { timeout: 10000 });
    step('loaded', { who });
    await shot(a.page, '01-ward');

    // 2. A bed tile updates when cms-monitor sends.
    const hr = `#tile-${cfg.vitals_device} .num[data-code="147842"] .v`;
    const t0 = Date.now();
    const mon = run(cfg.monitor_vitals);
    await a.page.waitForSelector(`#tile-${cfg.vitals_device}:not([data-live-updates="0"]) .num[data-code="147842"]`,
      { timeout: 20000 });
    step('tile_updated', { ms: Date.now() - t0, value: await a.page.textContent(hr) });
    const rc = await mon;
    if (rc !== 0) throw new Error('cms-monitor (vitals) exit ' + rc);
    await shot(a.page, '02-tile-updated');

    // 3. An alarm appears in its priority colour, then clears.
    const alarmSel = `#tile-${cfg.alarm_device} .alarm`;
    const alarms = run(cfg.monitor_alarms);
    await a.page.waitForSelector(alarmSel, { timeout: 60000 });
    const alarmId = await a.page.getAttribute(alarmSel, 'data-alarm');
    const cls = await a.page.getAttribute(alarmSel, 'class');
    const tileCls = await a.page.getAttribute(`#tile-${cfg.alarm_device}`, 'class');
    step('alarm_shown', { id: alarmId, class: cls, tile: tileCls, text: await a.page.textContent(alarmSel) });
    await shot(a.page, '03-alarm');
    await a.page.waitForSelector(`${alarmSel}[data-alarm="${alarmId}"]`, { state: 'detached', timeout: 90000 });
    step('alarm_cleared');
    await shot(a.page, '04-alarm-cleared');
    const arc = await alarms;
    if (arc !== 0) throw new Error('cms-monitor (alarms) exit ' + arc);

    // 4. The importer may not approve its own release; a second operator does.
    await a.page.goto(cfg.url + '/console/#firmware');
    await a.page.waitForSelector(`tr[data-release="${cfg.release_id}"]`, { timeout: 20000 });
    await a.page.fill(`tr[data-release="${cfg.release_id}"] .approve-target`, cfg.approve_device);
    await a.page.click(`tr[data-release="${cfg.release_id}"] button.approve`);
    await a.page.waitForSelector('#message.error', { timeout: 20000 });
    step('self_approval_refused', { message: await a.page.textContent('#message') });
    await shot(a.page, '05-self-approval-refused');

    const b = await context(browser, 'operator2');
    await b.page.goto(cfg.url + '/console/#firmware');
    await b.page.waitForSelector(`tr[data-release="${cfg.release_id}"]`, { timeout: 20000 });
    await b.page.fill(`tr[data-release="${cfg.release_id}"] .approve-target`, cfg.approve_device);
    await b.page.click(`tr[data-release="${cfg.release_id}"] button.approve`);
    await b.page.waitForSelector('#message.ok', { timeout: 20000 });
    await b.page.waitForSelector(`tr[data-release="${cfg.release_id}"]`, { timeout: 20000 });
    step('approved', { message: await b.page.textContent('#message'),
      approvals: await b.page.textContent(`tr[data-release="${cfg.release_id}"] .approvals`) });
    await shot(b.page, '06-approved');

    // 5. A rollout of it (created from the page, CSRF token and all), paused from the rollouts page.
    const created = await b.page.evaluate(async (rid) =>
      (await api('POST', '/api/v1/firmware/rollouts', { release_id: rid, stages: ['100%'] })).rollout, cfg.release_id);
    await b.page.goto(cfg.url + '/console/#rollouts');
    const row = `tr[data-rollout="${created.id}"]`;
    await b.page.waitForSelector(row + ' button.pause', { timeout: 20000 });
    // The page holds a stale CSRF token (as after a key rotation or two midnights): the
    // pause is refused once, the page fetches the current token and sends it again.
    const stale = 'f'.repeat(64);
    await b.page.evaluate((t) => { state.session.csrf_token = t; }, stale);
    await b.page.click(row + ' button.pause');
    await b.page.waitForFunction((sel) => {
      const e = document.querySelector(sel + ' .rollout-state');
      return e && e.textContent === 'paused';
    }, row, { timeout: 20000 });
    step('rollout_paused', { id: created.id,
      token_renewed: await b.page.evaluate((t) => state.session.csrf_token !== t, stale) });
    await shot(b.page, '07-rollout-paused');

    // 5b. Resumed from the page; the device is offered the release, reports a failure, and
    // the rollout pauses by itself (failure threshold): the page shows why.
    await b.page.click(row + ' button.resume');
    await b.page.waitForFunction((sel) => {
      const e = document.querySelector(sel + ' .rollout-state');
      return e && e.textContent === 'running';
    }, row, { timeout: 20000 });
    const offer = await device('GET', '/fw/v1/manifest?installed=1.0.0');
    if (offer.status !== 200) throw new Error('no offer to the device: ' + offer.status + ' ' + offer.body);
    const rep = await device('POST', '/fw/v1/report', { status: 'failed', version: '1.0.0',
      sha256: cfg.release_sha256, reason: 'flash error injected by the browser test' });
    if (rep.status !== 200) throw new Error('report refused: ' + rep.status + ' ' + rep.body);
    let reason = null;
    for (let i = 0; i < 40 && !reason; i++) {
      await b.page.waitForTimeout(500);
      await b.page.reload();
      await b.page.waitForSelector(row, { timeout: 20000 });
      const st = await b.page.textContent(row + ' .rollout-state');
      if (st === 'paused') reason = await b.page.textContent(row + ' .pause-reason');
    }
    if (!reason || !reason.startsWith('auto')) throw new Error('rollout not paused automatically: ' + reason);
    step('rollout_auto_paused', { reason });
    await shot(b.page, '07b-rollout-auto-paused');

    // 6. Fleet and audit pages render (the chain status shown).
    await b.page.goto(cfg.url + '/console/#fleet');
    await b.page.waitForSelector(`#view-fleet tr[data-serial="${cfg.vitals_device}"]`, { timeout: 20000 });
    await shot(b.page, '08-fleet');
    await b.page.goto(cfg.url + '/console/#audit');
    await b.page.waitForSelector('#chain', { timeout: 20000 });
    step('audit', { chain: await b.page.textContent('#chain') });
    await shot(b.page, '09-audit');
    await a.ctx.close();
    await b.ctx.close();
    results.ok = true;
  } catch (e) {
    results.ok = false;
    results.error = String(e && e.stack || e);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(results) + '\n');
  process.exit(results.ok ? 0 : 1);
}

main();

// app.js - the CMS operator console (no dependencies, no build step).
// Identity: the browser's operator certificate (the server decides who it is).
// Every state change sends the CSRF token of GET /api/v1/console/session.
'use strict';

const state = { session: null, view: null, es: null, lastEventId: null, tiles: new Map() };

// ---- helpers ---------------------------------------------------------------------------

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of kids.flat()) e.append(c instanceof Node ? c : document.createTextNode(c == null ? '' : String(c)));
  return e;
}

function message(text, kind) {
  const m = document.getElementById('message');
  m.textContent = text || '';
  m.className = text ? (kind || 'ok') : '';
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.error + ': ' + body.detail)) || ('HTTP ' + status));
    this.status = status; this.body = body;
  }
}

// A state change refused for its CSRF token (the token is per certificate and day and keyed
// by the server's TLS key: a page open across two midnights or a key rotation holds a stale
// one) fetches the current token and is sent once more: nothing was changed by the refusal.
async function api(method, path, body, retried) {
  const opt = { method, credentials: 'same-origin', headers: {} };
  if (method !== 'GET') {
    opt.headers['X-CSRF-Token'] = state.session ? state.session.csrf_token : '';
    opt.headers['Content-Type'] = 'application/json';
    opt.body = JSON.stringify(body || {});
  }
  const res = await fetch(path, opt);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok && res.status === 403 && method !== 'GET' && !retried && data &&
      data.error === 'csrf_refused' && /X-CSRF-Token/.test(data.detail || '')) {
    state.session = await api('GET', '/api/v1/console/session');
    return api(method, path, body, true);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

function fmtTime(t) {
  if (!t) return '—';
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}

function table(headers, rows) {
  return el('table', {}, el('thead', {}, el('tr', {}, headers.map(h => el('th', {}, h)))),
    el('tbody', {}, rows));
}

async function action(label, fn) {
  try {
    await fn();
    message(label + ': done', 'ok');
    await render();
  } catch (e) {
    message(label + ': ' + e.message, 'error');
  }
}

// ---- ward: live bed tiles ---------------------------------------------------------------

// MDC codes shown on a tile, in order.
const NUMERICS = [
  ['147842', 'HR', 'bpm'], ['150456', 'SpO2', '%'], ['149530', 'PR', 'bpm'],
  ['150021', 'NIBP sys', 'mmHg'], ['150022', 'NIBP dia', 'mmHg'], ['151562', 'RR', '/min'],
  ['150344', 'Temp', '°C'], ['151712', 'etCO2', 'mmHg'],
];
const PRIORITY = { PH: 3, PM: 2, PL: 1 };

function ward(location) {
  const s = String(location || '');
  return s.split('^')[0] || 'unassigned';
}

function bed(location) {
  const parts = String(location || '').split('^');
  return parts.filter(Boolean).join(' / ') || 'no location';
}

function tileFor(serial) {
  let t = state.tiles.get(serial);
  if (t) return t;
  t = { serial, location: '', values: {}, alarms: [], updated: null, node: null };
  state.tiles.set(serial, t);
  return t;
}

function drawTile(t) {
  const nums = el('div', { class: 'nums' }, NUMERICS.filter(([code]) => t.values[code] !== undefined)
    .map(([code, label, unit]) => el('div', { class: 'num', 'data-code': code },
      el('div', { class: 'v' }, t.values[code]), el('div', { class: 'l' }, label + ' ' + unit))));
  const top = t.alarms.reduce((p, a) => Math.max(p, PRIORITY[a.priority] || 0), 0);
  const prio = Object.keys(PRIORITY).find(k => PRIORITY[k] === top);
  const node = el('div', { class: 'tile' + (prio ? ' alarm-' + prio : ''), id: 'tile-' + t.serial,
    'data-serial': t.serial, 'data-live-updates': String(t.live || 0) },
    el('h3', {}, el('span', {}, t.serial), el('span', { class: 'bed' }, bed(t.location))),
    nums,
    t.alarms.map(a => el('div', { class: 'alarm prio-' + (a.priority || 'PL'), 'data-alarm': a.alarm_id },
      (a.priority || '') + ' ' + (a.alarm_text || a.text || a.event_label || a.label || 'alarm'))),
    el('div', { class: 'updated' }, t.updated ? 'updated ' + t.updated.toLocaleTimeString() : 'no data yet'));
  if (t.node && t.node.parentNode) t.node.replaceWith(node);
  t.node = node;
  return node;
}

async function loadAlarms(device) {
  const q = '/api/v1/alarms?current=true&limit=1000' + (device ? '&device=' + encodeURIComponent(device) : '');
  const data = await api('GET', q);
  if (device) tileFor(device).alarms = [];
  else for (const t of state.tiles.values()) t.alarms = [];
  for (const a of data.alarms) {
    const t = tileFor(a.device_serial);
    if (a.priority === 'PN') continue;
    t.alarms.push(a);
    if (!t.location && a.location) t.location = a.location;
  }
}

async function renderWard(view) {
  state.tiles.clear();
  const [devs, latest] = await Promise.all([
    api('GET', '/api/v1/devices?status=active&limit=1000'),
    api('GET', '/api/v1/vitals/latest?limit=1000'),
  ]);
  for (const d of devs.devices) tileFor(d.serial).location = d.location || '';
  for (const d of latest.devices) {
    const t = tileFor(d.device_serial);
    for (const v of d.vitals) {
      t.values[v.mdc_code] = v.value;
      const at = new Date(v.received_at || v.observed_at);
      if (!t.updated || at > t.updated) t.updated = at;
    }
  }
  await loadAlarms(null);
  const wards = [...new Set([...state.tiles.values()].map(t => ward(t.location)))].sort();
  const pick = el('select', { id: 'ward-select' }, el('option', { value: '' }, 'all wards'),
    wards.map(w => el('option', { value: w }, w)));
  const grid = el('div', { class: 'tiles', id: 'tiles' });
  if (state.esWard && wards.includes(state.esWard)) pick.value = state.esWard;
  const draw = () => {
    grid.replaceChildren();
    for (const t of [...state.tiles.values()].sort((a, b) => a.serial.localeCompare(b.serial)))
      if (!pick.value || ward(t.location) === pick.value) grid.append(drawTile(t));
  };
  pick.addEventListener('change', () => { connectEvents(pick.value); draw(); });
  view.append(el('form', { class: 'inline' }, el('label', {}, 'Ward ', pick),
    el('span', { class: 'muted' }, 'Tiles update live; alarm colours: PH red, PM yellow, PL cyan.')), grid);
  draw();
}

function onVitals(ev) {
  const d = JSON.parse(ev.data);
  const t = tileFor(d.device);
  if (d.location) t.location = d.location;
  for (const o of d.observations) t.values[o.code] = Number(o.value);
  t.updated = new Date();
  t.live = (t.live || 0) + 1;
  if (state.view === 'ward') {
    if (t.node && t.node.parentNode) drawTile(t);
    else { const g = document.getElementById('tiles'); if (g && (!state.esWard || ward(t.location) === state.esWard)) g.append(drawTile(t)); }
  }
}

async function onAlarm(ev) {
  const d = JSON.parse(ev.data);
  if (state.view !== 'ward') return;
  await loadAlarms(d.device);
  const t = tileFor(d.device);
  if (d.location) t.location = d.location;
  if (t.node && t.node.parentNode) drawTile(t);
  else { const g = document.getElementById('tiles'); if (g) g.append(drawTile(t)); }
}

// The live stream: every event, or one ward's (?ward=) when a ward is picked.
function connectEvents(wardName) {
  const want = wardName || '';
  if (state.es && state.esWard === want) return;
  if (state.es) state.es.close();
  const es = new EventSource('/api/v1/events' + (want ? '?ward=' + encodeURIComponent(want) : ''));
  const live = document.getElementById('live');
  es.addEventListener('open', () => { live.textContent = 'live' + (want ? ' (' + want + ')' : ''); live.className = 'live on'; });
  es.addEventListener('error', () => { live.textContent = 'reconnecting'; live.className = 'live off'; });
  es.addEventListener('vitals', e => { state.lastEventId = e.lastEventId; onVitals(e); });
  es.addEventListener('alarm', e => { state.lastEventId = e.lastEventId; onAlarm(e).catch(err => message(err.message, 'error')); });
  es.addEventListener('reset', () => { if (state.view === 'ward') render(); });
  state.es = es;
  state.esWard = want;
}

// ---- fleet ------------------------------------------------------------------------------

async function renderFleet(view) {
  const data = await api('GET', '/api/v1/devices?limit=1000');
  view.append(el('h2', {}, 'Fleet'), table(
    ['Serial', 'Model', 'State', 'Location', 'Last heard', 'Firmware', 'Certificate expires', 'Groups'],
    data.devices.map(d => el('tr', { 'data-serial': d.serial },
      el('td', {}, d.serial), el('td', {}, d.model || ''),
      el('td', { class: 'state-' + d.status }, d.status),
      el('td', {}, bed(d.location)), el('td', {}, fmtTime(d.last_seen_at)),
      el('td', {}, d.firmware_version || '—'),
      el('td', {}, d.certificate ? fmtTime(d.certificate.not_after) : 'none recorded'),
      el('td', {}, (d.groups || []).join(', '))))));
}

// ---- enrollment tokens ------------------------------------------------------------------

async function renderTokens(view) {
  const data = await api('GET', '/api/v1/enroll/tokens?limit=200');
  const serial = el('input', { name: 'serial', placeholder: 'MON-0042', required: 'required' });
  const model = el('input', { name: 'model', placeholder: 'model (optional)' });
  const ttl = el('input', { name: 'ttl_s', type: 'number', value: '3600', min: '60' });
  const form = el('form', { class: 'inline', id: 'token-form' }, 'New token for ', serial, model, 'valid (s) ', ttl,
    el('button', { type: 'submit' }, 'Create'));
  form.addEventListener('submit', ev => {
    ev.preventDefault();
    const body = { serial: serial.value, ttl_s: Number(ttl.value) };
    if (model.value) body.model = model.value;
    action('create token', async () => {
      const t = await api('POST', '/api/v1/enroll/tokens', body);
      setTimeout(() => message('token for ' + t.serial + ' (shown once): ' + t.token, 'ok'), 0);
    });
  });
  view.append(el('h2', {}, 'Enrollment tokens'), form, table(
    ['Id', 'Serial', 'Model', 'State', 'Created by', 'Expires', 'Used', ''],
    data.tokens.map(t => el('tr', {},
      el('td', {}, t.id), el('td', {}, t.serial), el('td', {}, t.model || ''), el('td', {}, t.state),
      el('td', {}, t.created_by), el('td', {}, fmtTime(t.expires_at)), el('td', {}, fmtTime(t.used_at)),
      el('td', {}, t.state === 'active' ? el('button', { on: { click: () =>
        action('revoke token ' + t.id, () => api('POST', '/api/v1/enroll/tokens/' + t.id + '/revoke')) } }, 'Revoke') : '')))));
}

// ---- firmware releases and approvals ----------------------------------------------------

async function renderFirmware(view) {
  const data = await api('GET', '/api/v1/firmware/releases');
  const list = data.releases || [];
  view.append(el('h2', {}, 'Firmware releases'),
    el('p', { class: 'muted' }, 'Import with cmsctl firmware import. Approval needs a second operator (not the importer).'),
    table(['Id', 'Model', 'Version', 'Approvals', 'Installed', 'Imported by', 'Imported', 'Approve for', ''],
      list.map(r => {
        const target = el('input', { placeholder: 'MON-0001,MON-0002 or group:NAME', class: 'approve-target', size: '28' });
        return el('tr', { 'data-release': r.id },
          el('td', {}, r.id), el('td', {}, r.model), el('td', {}, r.version),
          el('td', { class: 'approvals' }, r.active_approvals), el('td', {}, r.installed_devices),
          el('td', {}, r.imported_by), el('td', {}, fmtTime(r.imported_at)),
          el('td', {}, target),
          el('td', {}, el('button', { class: 'approve', on: { click: () => {
            const devices = [], groups = [];
            for (const x of target.value.split(',').map(s => s.trim()).filter(Boolean))
              (x.startsWith('group:') ? groups : devices).push(x.replace(/^group:/, ''));
            action('approve release ' + r.id, () => api('POST', '/api/v1/firmware/releases/' + r.id + '/approve', { devices, groups }));
          } } }, 'Approve'),
          el('button', { class: 'withdraw', on: { click: () =>
            action('withdraw release ' + r.id, () => api('POST', '/api/v1/firmware/releases/' + r.id + '/withdraw')) } }, 'Withdraw')));
      })));
}

// ---- rollouts ---------------------------------------------------------------------------

async function renderRollouts(view) {
  const data = await api('GET', '/api/v1/firmware/rollouts');
  const btn = (r, verb) => el('button', { class: verb, on: { click: () =>
    action(verb + ' rollout ' + r.id, () => api('POST', '/api/v1/firmware/rollouts/' + r.id + '/' + verb)) } }, verb);
  view.append(el('h2', {}, 'Staged rollouts'),
    el('p', { class: 'muted' }, 'Create with cmsctl firmware rollout create; pause, resume or abort here.'),
    table(['Id', 'Release', 'State', 'Stage', 'Devices', 'Installed', 'Failed', 'Pause reason', 'Window', ''],
      (data.rollouts || []).map(r => el('tr', { 'data-rollout': r.id },
        el('td', {}, r.id), el('td', {}, r.model + ' ' + r.version + ' (#' + r.release_id + ')'),
        el('td', { class: 'rollout-state' }, r.state), el('td', {}, r.current_stage + '/' + r.stages_total),
        el('td', {}, r.devices), el('td', {}, r.installed), el('td', {}, r.failed),
        el('td', { class: 'pause-reason' }, r.pause_reason || ''), el('td', {}, r.window ? r.window + ' ' + r.time_zone : 'any time'),
        el('td', {}, ['running', 'created'].includes(r.state) ? btn(r, 'pause') : '',
          ['paused', 'created'].includes(r.state) ? btn(r, 'resume') : '',
          ['completed', 'aborted'].includes(r.state) ? '' : btn(r, 'abort'))))));
}

// ---- audit ------------------------------------------------------------------------------

async function renderAudit(view) {
  const [chain, log] = await Promise.all([api('GET', '/api/v1/audit/verify'), api('GET', '/api/v1/audit?limit=200')]);
  view.append(el('h2', {}, 'Audit log'),
    el('p', { id: 'chain', class: chain.intact ? 'chain-ok' : 'chain-bad' },
      chain.intact ? 'Hash chain intact: ' + chain.rows_checked + ' rows checked, head ' + chain.last_id
        : 'Hash chain BROKEN at row ' + chain.first_bad_id + ': ' + chain.reason),
    table(['Id', 'At', 'Event', 'Actor', 'Device', 'Peer', 'Detail'],
      log.events.map(e => el('tr', {}, el('td', {}, e.id), el('td', {}, fmtTime(e.at)), el('td', {}, e.event),
        el('td', {}, e.actor || ''), el('td', {}, e.device || ''), el('td', {}, e.peer || ''),
        el('td', {}, el('code', {}, e.detail ? JSON.stringify(e.detail) : ''))))));
}

// ---- shell ------------------------------------------------------------------------------

const VIEWS = { ward: renderWard, fleet: renderFleet, tokens: renderTokens, firmware: renderFirmware,
  rollouts: renderRollouts, audit: renderAudit };

async function render() {
  const name = (location.hash || '#ward').slice(1);
  state.view = VIEWS[name] ? name : 'ward';
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.view === state.view);
  const view = el('div', { id: 'view-' + state.view });
  try {
    await VIEWS[state.view](view);
  } catch (e) {
    view.append(el('p', { class: 'chain-bad' }, 'Cannot load this page: ' + e.message));
  }
  document.getElementById('view').replaceChildren(view);
  document.body.dataset.view = state.view;
  document.body.dataset.ready = String(Date.now());
}

async function start() {
  try {
    state.session = await api('GET', '/api/v1/console/session');
  } catch (e) {
    document.getElementById('who').textContent = 'not signed in';
    document.getElementById('view').replaceChildren(el('div', { id: 'signin' },
      el('h2', {}, 'No operator certificate'),
      el('p', {}, 'Import your operator certificate (PKCS#12) into this browser and reload; see README, "Web console".'),
      el('p', { class: 'muted' }, e.message)));
    document.body.dataset.ready = 'signin';
    return;
  }
  document.getElementById('who').textContent = state.session.name + ' (' + state.session.role + ')';
  window.addEventListener('hashchange', () => { message(''); render(); });
  connectEvents();
  await render();
}

document.addEventListener('DOMContentLoaded', start);

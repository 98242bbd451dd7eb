// Voltage EMS dashboard.
//
// REST (Authorization: Bearer <token>) gives the node name, channel status,
// point names and units and sends commands; the WebSocket /ws?token=<token>
// (docs/websocket.md) streams live values as snapshot and update frames.
// No build step: this file is served as it is, uPlot is vendored under
// /static/vendor/.

const TOKEN_KEY = 'voltage.token';
const PATTERN_KEY = 'voltage.pattern';
const CHANNELS_EVERY_MS = 2000;
const TREND_WINDOW_MS = 10 * 60 * 1000; // what the trend keeps client side
const TREND_MAX_SAMPLES = 6000; // per point, a bound whatever the update rate
const CONTROL_WAIT = '3s';
const WS_BACKOFF_MIN_MS = 500;
const WS_BACKOFF_MAX_MS = 10000;
const WS_PING_EVERY_MS = 20000;
const WS_SILENT_LIMIT_MS = 50000; // no frame for this long: the connection is dead
const TYPE_ORDER = { m: 0, s: 1, c: 2, a: 3 };
const TYPE_NAMES = { m: 'measurement', s: 'signal', c: 'command', a: 'setpoint' };

const $ = (id) => document.getElementById(id);

const state = {
  token: '',
  signedOut: false,
  patterns: ['*'],
  meta: new Map(), // key -> {key, name, unit, point_type, channel_id, point_id}
  latest: new Map(), // key -> {value, ts, q}: newest known sample of every point seen
  rows: new Map(), // key -> {tr, value, quality, age}: rows of the table
  series: new Map(), // key -> {t: [] (s), v: []}: the trend buffer
  channels: new Map(), // id -> channel status
  writable: new Map(), // key -> meta of c and a points
  selected: '',
  control: '',
};

// ---------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function fmtNum(v) {
  if (v === null || v === undefined) return '—';
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return v.toFixed(a >= 1000 ? 1 : a >= 1 ? 2 : 3);
}

// decimals remembers per point how many decimals its values have needed,
// so that a value that happens to be whole (27 after 27.1) keeps its
// column aligned (27.00).
const decimals = new Map();

// fmtValue is a point's value as the table shows it: ON/OFF for status
// and command bits, numbers with a steady number of decimals otherwise.
function fmtValue(type, v, key) {
  if ((type === 's' || type === 'c') && (v === 0 || v === 1)) return v === 1 ? 'ON' : 'OFF';
  if (!key || typeof v !== 'number' || !Number.isFinite(v)) return fmtNum(v);
  let d = decimals.get(key) || 0;
  if (!Number.isInteger(v)) {
    const a = Math.abs(v);
    d = Math.max(d, a >= 1000 ? 1 : a >= 1 ? 2 : 3);
    decimals.set(key, d);
  }
  return v.toFixed(d);
}

function fmtAge(ms) {
  if (!Number.isFinite(ms)) return '—';
  if (ms < 0) ms = 0;
  if (ms < 10000) return (ms / 1000).toFixed(1) + ' s';
  if (ms < 60000) return Math.round(ms / 1000) + ' s';
  if (ms < 3600000) return Math.round(ms / 60000) + ' min';
  if (ms < 86400000) return Math.round(ms / 3600000) + ' h';
  return Math.round(ms / 86400000) + ' d';
}

function parseKey(key) {
  const [ch, type, pt] = key.split(':');
  return { ch: Number(ch), type, pt: Number(pt) };
}

function compareKeys(a, b) {
  const x = parseKey(a), y = parseKey(b);
  return x.ch - y.ch || (TYPE_ORDER[x.type] ?? 9) - (TYPE_ORDER[y.type] ?? 9) || x.pt - y.pt;
}

let toastTimer = 0;
function toast(msg) {
  const t = $('toast');
  t.textContent = msg;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 6000);
}

// ---------------------------------------------------------------- auth and REST

// takeToken moves ?token= from the address bar into session storage, so a
// link can open a ready dashboard without the token staying in the history.
function takeToken() {
  const url = new URL(location.href);
  if (url.searchParams.has('token')) {
    const t = url.searchParams.get('token').trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    url.searchParams.delete('token');
    history.replaceState(history.state, '', url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

class AuthError extends Error {}

function errorText(data, status) {
  if (data && data.error && data.error.message) return data.error.message;
  return 'HTTP ' + status;
}

// api calls the node's REST API with the token; a 401 (or a 429: this
// address failed to sign in too often) shows the login.
async function api(path, { method = 'GET', body } = {}) {
  const headers = {};
  if (state.token) headers.Authorization = 'Bearer ' + state.token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  let data = null;
  try { data = await resp.json(); } catch { /* not JSON */ }
  if (resp.status === 401) {
    showLogin(state.token ? 'The token was not accepted: ' + errorText(data, 401) : 'This node needs an API token.');
    throw new AuthError(errorText(data, 401));
  }
  if (resp.status === 429) { // too many failed sign-ins from this address
    const secs = resp.headers.get('Retry-After');
    showLogin('Too many failed sign-ins from this address' + (secs ? `: try again in ${secs} s.` : '.'));
    throw new AuthError(errorText(data, 429));
  }
  return { status: resp.status, ok: resp.ok, data };
}

function showLogin(message) {
  const wasHidden = $('login').hidden;
  $('login').hidden = false;
  $('login-message').textContent = message;
  $('login-message').classList.toggle('error', !!state.token);
  state.signedOut = true;
  stopWS('signed out');
  if (wasHidden) $('login-token').focus();
}

function signIn(token) {
  state.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  state.signedOut = false;
  alarms.readOnly = false;
  $('login').hidden = true;
  start();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = '';
  $('login-token').value = '';
  showLogin('Signed out. Sign in with an API token.');
  $('login-message').classList.remove('error');
}

// ---------------------------------------------------------------- header

async function loadHealth() {
  try {
    const r = await fetch('/health', { cache: 'no-store' });
    const h = await r.json();
    $('node-name').textContent = h.node || '—';
    $('node-version').textContent = h.version ? String(h.version) : '';
    if (h.node) document.title = h.node + ' · Voltage EMS';
  } catch {
    $('node-name').textContent = 'unreachable';
  }
}

function setConn(kind, text) {
  $('conn').dataset.state = kind;
  $('conn-text').textContent = text;
}

function tickClock() {
  $('clock').textContent = new Date().toLocaleTimeString('en-GB', { hour12: false });
}

// ---------------------------------------------------------------- channels

async function refreshChannels() {
  if (state.signedOut) return;
  let r;
  try {
    r = await api('/api/channels');
  } catch (e) {
    if (!(e instanceof AuthError)) $('channels-summary').textContent = 'node unreachable';
    return;
  }
  if (!r.ok) {
    $('channels-summary').textContent = errorText(r.data, r.status);
    return;
  }
  for (const ch of r.data) state.channels.set(ch.id, ch);
  renderChannels(r.data);
}

function channelState(ch) {
  if (ch.protocol === 'compute') return 'computed';
  return ch.connected ? 'connected' : 'disconnected';
}

function renderChannels(list) {
  const box = $('channels');
  if (!list.length) {
    box.replaceChildren(el('div', { class: 'empty', text: 'No channels configured.' }));
    return;
  }
  if (box.querySelector('.empty')) box.replaceChildren();
  const seen = new Set();
  let up = 0, field = 0;
  for (const ch of list) {
    const id = String(ch.id);
    seen.add(id);
    let card = box.querySelector(`[data-channel-id="${id}"]`);
    if (!card) {
      card = el('div', { class: 'channel', 'data-channel-id': id, id: 'channel-' + id },
        el('div', { class: 'ch-title' }, el('span', { class: 'ch-name' }), el('span', { class: 'ch-id' }), el('span', { class: 'ch-proto' })),
        el('span', { class: 'ch-status' }),
        el('div', { class: 'ch-stats' }),
        el('div', { class: 'ch-error' }));
      box.append(card);
    }
    const st = channelState(ch);
    if (st !== 'computed') { field++; if (ch.connected) up++; }
    card.dataset.state = st;
    card.dataset.connected = String(!!ch.connected);
    card.querySelector('.ch-name').textContent = ch.name;
    card.querySelector('.ch-id').textContent = '#' + ch.id;
    card.querySelector('.ch-proto').textContent = ch.protocol;
    card.querySelector('.ch-status').textContent = st;
    card.dataset.lastPoll = ch.last_poll || '';
    const stats = card.querySelector('.ch-stats');
    const stat = (label, value, cls) => el('div', { class: 'stat' }, el('span', { text: label }), el('b', { class: cls || '', text: value }));
    if (st === 'computed') {
      stats.replaceChildren(stat('points', String(ch.points)), stat('updates', 'on input change'));
    } else {
      stats.replaceChildren(
        stat('last poll', fmtAge(pollAge(ch)), 'poll-age'),
        stat('latency', ch.polls ? fmtNum(ch.last_poll_latency_ms) + ' ms' : '—'),
        stat('errors', String(ch.errors), ch.errors ? 'alert' : ''),
        stat('restarts', String(ch.restarts), ch.restarts ? 'alert' : ''),
        stat('points', String(ch.points)));
    }
    const err = card.querySelector('.ch-error');
    err.textContent = !ch.connected && ch.last_error ? ch.last_error : '';
    err.title = ch.last_error || '';
    err.hidden = !err.textContent;
  }
  for (const card of box.querySelectorAll('[data-channel-id]')) {
    if (!seen.has(card.dataset.channelId)) card.remove();
  }
  $('channels-summary').textContent = field ? `${up} of ${field} connected` : '';
}

function pollAge(ch) {
  const t = Date.parse(ch.last_poll);
  if (!Number.isFinite(t) || t < Date.UTC(2000, 0, 1)) return NaN; // zero time: never polled
  return Date.now() - t;
}

function tickChannelAges() {
  for (const card of $('channels').querySelectorAll('[data-channel-id]')) {
    const b = card.querySelector('.poll-age');
    const ch = state.channels.get(Number(card.dataset.channelId));
    if (b && ch) b.textContent = fmtAge(pollAge(ch));
  }
}

// ---------------------------------------------------------------- points table

function parsePatterns(text) {
  const ps = text.split(/[\s,]+/).filter(Boolean);
  return ps.length ? ps : ['*'];
}

// applyPatterns loads names and units of the points the patterns match,
// rebuilds the table and moves the WebSocket subscription to them.
async function applyPatterns(patterns) {
  let results;
  try {
    results = await Promise.all(patterns.map((p) => api('/api/points?pattern=' + encodeURIComponent(p))));
  } catch (e) {
    if (!(e instanceof AuthError)) toast('Loading points failed: ' + e.message);
    return;
  }
  const bad = results.find((r) => !r.ok);
  if (bad) {
    toast('Pattern refused: ' + errorText(bad.data, bad.status));
    $('pattern').setCustomValidity(errorText(bad.data, bad.status));
    $('pattern').reportValidity();
    return;
  }
  $('pattern').setCustomValidity('');
  const old = state.patterns;
  state.patterns = patterns;
  sessionStorage.setItem(PATTERN_KEY, patterns.join(' '));
  state.meta.clear();
  for (const r of results) {
    for (const p of r.data) {
      state.meta.set(p.key, p);
      if (p.timestamp) mergeSample(p.key, { value: p.value, ts: p.timestamp, q: p.quality }, false);
    }
  }
  buildTable();
  resubscribe(old, patterns);
}

function buildTable() {
  const body = $('points-body');
  const keys = [...state.meta.keys()].sort(compareKeys);
  state.rows.clear();
  const frag = document.createDocumentFragment();
  for (const key of keys) frag.append(makeRow(state.meta.get(key)));
  body.replaceChildren(frag);
  $('points-empty').hidden = keys.length > 0;
  $('points-count').textContent = keys.length === 1 ? '1 point' : `${keys.length} points`;
  for (const key of keys) renderRow(key, false);
}

function makeRow(p) {
  const { ch, type, pt } = parseKey(p.key);
  const value = el('td', { class: 'value' });
  const quality = el('td', { class: 'quality' });
  const age = el('td', { class: 'age' });
  const tr = el('tr', { 'data-key': p.key, 'data-type': type, id: 'pt-' + p.key.replaceAll(':', '-'), title: TYPE_NAMES[type] || '' },
    el('td', { class: 'key' }, String(ch) + ':', el('span', { class: 't type-' + type, text: type }), ':' + String(pt)),
    el('td', { class: 'name', text: p.name || '' }),
    value,
    el('td', { class: 'unit', text: p.unit || '' }),
    quality,
    age);
  if (p.key === state.selected) tr.classList.add('selected');
  tr.addEventListener('click', () => selectPoint(p.key));
  state.rows.set(p.key, { tr, value, quality, age });
  return tr;
}

function renderRow(key, flash) {
  const row = state.rows.get(key);
  if (!row) return;
  const s = state.latest.get(key);
  const type = parseKey(key).type;
  const v = s ? s.value : null;
  const text = fmtValue(type, v, key);
  if (row.value.textContent !== text) {
    row.value.textContent = text;
    if (flash) {
      row.value.classList.add('flash');
      setTimeout(() => row.value.classList.remove('flash'), 120);
    }
  }
  row.value.dataset.value = v === null || v === undefined ? '' : String(v);
  row.value.classList.toggle('bool-on', text === 'ON');
  row.value.classList.toggle('bool-off', text === 'OFF');
  const q = s && s.q ? s.q : 'none';
  if (row.tr.dataset.q !== q) {
    row.tr.dataset.q = q;
    row.quality.replaceChildren(el('span', { class: 'q q-' + q, text: q === 'none' ? 'no value' : q.replace('_', ' ') }));
  }
  row.tr.dataset.ts = s && s.ts ? String(s.ts) : '';
  row.age.textContent = s && s.ts ? fmtAge(Date.now() - s.ts) : '—';
}

function tickAges() {
  const now = Date.now();
  for (const [key, row] of state.rows) {
    const s = state.latest.get(key);
    row.age.textContent = s && s.ts ? fmtAge(now - s.ts) : '—';
  }
}

// mergeSample records a sample if it is not older than the one known.
function mergeSample(key, s, fromLive) {
  const cur = state.latest.get(key);
  if (cur && cur.ts > s.ts) return false;
  state.latest.set(key, s);
  if (s.value !== null && s.value !== undefined && s.ts) pushSeries(key, s.ts, s.value);
  if (fromLive && key === state.control) renderControlCurrent();
  return true;
}

// applyPoints applies the points of a snapshot or update frame.
function applyPoints(points) {
  for (const p of points || []) {
    if (!p || typeof p.key !== 'string') continue;
    if (mergeSample(p.key, { value: p.value, ts: p.ts, q: p.q }, true)) renderRow(p.key, true);
  }
  scheduleChartRedraw();
}

// ---------------------------------------------------------------- trend

let chart = null;
let chartKey = '';
let redrawQueued = false;

function pushSeries(key, ts, value) {
  let s = state.series.get(key);
  if (!s) { s = { t: [], v: [] }; state.series.set(key, s); }
  const t = ts / 1000;
  const n = s.t.length;
  if (n && t < s.t[n - 1]) return; // out of order: the trend keeps time order
  if (n && t === s.t[n - 1]) { s.v[n - 1] = value; return; }
  s.t.push(t);
  s.v.push(value);
  const cutoff = (Date.now() - TREND_WINDOW_MS) / 1000;
  let drop = 0;
  while (drop < s.t.length - 1 && s.t[drop] < cutoff) drop++;
  drop = Math.max(drop, s.t.length - TREND_MAX_SAMPLES);
  if (drop > 0) { s.t.splice(0, drop); s.v.splice(0, drop); }
}

// loadInitialHistory returns [[unixMs, value], ...] of the point's last
// 10 minutes from GET /api/history (5 s means), for the trend to start with;
// the live frames continue it. No history (503, or none stored) is an empty
// start, not an error.
async function loadInitialHistory(key) {
  const q = new URLSearchParams({ point: key, start: '-10m', end: 'now', every: '5s', fn: 'mean' });
  const r = await api('/api/history?' + q.toString());
  if (!r.ok || !r.data || !Array.isArray(r.data.series) || !r.data.series.length) return [];
  return r.data.series[0].points.map((p) => [p.t, p.v]);
}

function mergeHistory(key, samples) {
  if (!samples.length) return;
  const s = state.series.get(key) || { t: [], v: [] };
  const first = s.t.length ? s.t[0] : Infinity;
  const older = samples.filter(([ms]) => ms / 1000 < first).sort((a, b) => a[0] - b[0]);
  s.t.unshift(...older.map(([ms]) => ms / 1000));
  s.v.unshift(...older.map(([, v]) => v));
  state.series.set(key, s);
}

function selectPoint(key) {
  state.selected = key;
  for (const [k, row] of state.rows) row.tr.classList.toggle('selected', k === key);
  const meta = state.meta.get(key) || state.writable.get(key) || { key };
  $('trend-point').textContent = [key, meta.name, meta.unit ? `(${meta.unit})` : ''].filter(Boolean).join(' · ').replace(' · (', ' (');
  buildChart(key, meta);
  loadInitialHistory(key).then((samples) => {
    if (state.selected !== key) return;
    mergeHistory(key, samples);
    scheduleChartRedraw();
  }).catch((e) => toast('Loading history failed: ' + e.message));
  if (state.writable.has(key)) setControlPoint(key);
}

function buildChart(key, meta) {
  const box = $('trend');
  if (chart) { chart.destroy(); chart = null; }
  box.replaceChildren();
  chartKey = key;
  const type = parseKey(key).type;
  const stepped = type === 's' || type === 'c';
  const s = state.series.get(key) || { t: [], v: [] };
  state.series.set(key, s);
  const css = getComputedStyle(document.documentElement);
  const muted = css.getPropertyValue('--muted').trim() || '#8b97b1';
  const grid = 'rgba(139,151,177,0.12)';
  const axis = { stroke: muted, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, font: '11px system-ui, sans-serif' };
  const opts = {
    width: Math.max(200, box.clientWidth - 8),
    height: Math.max(120, box.clientHeight - 8),
    cursor: { drag: { x: true, y: false } },
    legend: { show: false },
    scales: { x: { time: true }, y: { auto: true, range: (u, min, max) => padRange(min, max, stepped) } },
    axes: [
      { ...axis, space: 72, values: (u, vals, i, space, incr) => vals.map((v) => fmtClock(v, incr)) },
      { ...axis, size: 56, values: (u, vals) => vals.map((v) => fmtAxis(v)) },
    ],
    series: [
      {},
      {
        label: meta.name || key,
        stroke: '#60a5fa',
        width: 2,
        fill: 'rgba(96,165,250,0.12)',
        points: { show: false },
        paths: stepped && uPlot.paths && uPlot.paths.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
      },
    ],
  };
  chart = new uPlot(opts, [s.t, s.v], box);
  renderTrendLast();
}

function padRange(min, max, stepped) {
  if (min === null || max === null) return [0, 1];
  if (stepped) return [Math.min(0, min) - 0.1, Math.max(1, max) + 0.1];
  if (min === max) { const d = Math.abs(min) * 0.01 || 1; return [min - d, max + d]; }
  const pad = (max - min) * 0.08;
  return [min - pad, max + pad];
}

// fmtClock labels the time axis in 24-hour local time, with seconds when
// the ticks are less than a minute apart.
function fmtClock(sec, incr) {
  const d = new Date(sec * 1000);
  const hh = String(d.getHours()).padStart(2, '0');
  const mm = String(d.getMinutes()).padStart(2, '0');
  if (incr >= 60) return `${hh}:${mm}`;
  return `${hh}:${mm}:${String(d.getSeconds()).padStart(2, '0')}`;
}

function fmtAxis(v) {
  const a = Math.abs(v);
  if (a >= 10000) return (v / 1000).toFixed(1) + 'k';
  if (a >= 100 || Number.isInteger(v)) return v.toFixed(0);
  if (a >= 1) return v.toFixed(1);
  return v.toFixed(2);
}

function scheduleChartRedraw() {
  if (!chart || redrawQueued) return;
  redrawQueued = true;
  requestAnimationFrame(() => {
    redrawQueued = false;
    if (!chart) return;
    const s = state.series.get(chartKey);
    if (s) chart.setData([s.t, s.v]);
    renderTrendLast();
  });
}

function renderTrendLast() {
  const s = state.latest.get(chartKey);
  const meta = state.meta.get(chartKey) || state.writable.get(chartKey) || {};
  $('trend-last').textContent = s ? fmtValue(parseKey(chartKey).type, s.value, chartKey) + (meta.unit ? ' ' + meta.unit : '') : '';
}

function resizeChart() {
  if (!chart) return;
  const box = $('trend');
  chart.setSize({ width: Math.max(200, box.clientWidth - 8), height: Math.max(120, box.clientHeight - 8) });
}

// ---------------------------------------------------------------- control

async function loadWritable() {
  let rs;
  try {
    rs = await Promise.all(['*:c:*', '*:a:*'].map((p) => api('/api/points?pattern=' + encodeURIComponent(p))));
  } catch {
    return;
  }
  if (rs.some((r) => !r.ok)) return;
  state.writable.clear();
  const all = rs.flatMap((r) => r.data).sort((a, b) => compareKeys(a.key, b.key));
  for (const p of all) {
    state.writable.set(p.key, p);
    if (p.timestamp) mergeSample(p.key, { value: p.value, ts: p.timestamp, q: p.quality }, false);
  }
  const sel = $('control-point');
  const keep = sel.value;
  const groups = new Map();
  for (const p of all) {
    if (!groups.has(p.channel_id)) {
      const ch = state.channels.get(p.channel_id);
      groups.set(p.channel_id, el('optgroup', { label: ch ? `${ch.name} (#${ch.id})` : `channel ${p.channel_id}` }));
    }
    groups.get(p.channel_id).append(el('option', {
      value: p.key,
      text: `${p.key}  ${p.name || ''}${p.unit ? ' [' + p.unit + ']' : ''}`,
    }));
  }
  sel.replaceChildren(el('option', { value: '', text: all.length ? '— choose a command or setpoint —' : 'no writable points' }), ...groups.values());
  if (keep && state.writable.has(keep)) sel.value = keep;
}

function setControlPoint(key) {
  state.control = key;
  const sel = $('control-point');
  if (sel.value !== key) sel.value = key;
  const p = state.writable.get(key);
  const type = p ? p.point_type : '';
  $('control-bool').hidden = type !== 'c';
  $('control-numeric').hidden = type === 'c';
  $('control-unit').textContent = p && p.unit ? p.unit : '';
  $('control-hint').textContent = p ? (type === 'c' ? 'command: ON = 1, OFF = 0' : 'setpoint') : '';
  $('control-send').disabled = !p;
  $('control-value').placeholder = type === 'c' ? '0 or 1' : 'value';
  $('control-value').value = '';
  setResult('', '');
  renderControlCurrent();
}

function renderControlCurrent() {
  const key = state.control;
  const s = key ? state.latest.get(key) : null;
  const p = state.writable.get(key) || {};
  $('control-current').textContent = s ? fmtValue(p.point_type, s.value, key) + (p.unit ? ' ' + p.unit : '') : '—';
}

function setResult(status, ...parts) {
  const box = $('control-result');
  box.dataset.status = status;
  box.replaceChildren(...parts.filter((x) => x !== ''));
}

async function sendControl(value) {
  const key = state.control;
  const p = state.writable.get(key);
  if (!p) return;
  if (!Number.isFinite(value)) {
    setResult('error', el('b', { text: 'invalid' }), 'enter a number');
    return;
  }
  const buttons = [$('control-send'), $('control-on'), $('control-off')];
  buttons.forEach((b) => { b.disabled = true; });
  setResult('pending', el('b', { text: 'sending' }), `${fmtNum(value)} to ${key}…`);
  const t0 = performance.now();
  try {
    const r = await api(`/control/${p.channel_id}/${p.point_id}`, {
      method: 'POST',
      body: { type: p.point_type, value, wait: CONTROL_WAIT },
    });
    const ms = Math.round(performance.now() - t0);
    showControlAnswer(r, ms);
  } catch (e) {
    if (e instanceof AuthError) setResult('error', el('b', { text: 'unauthorized' }), 'sign in again');
    else setResult('error', el('b', { text: 'error' }), 'request failed: ' + e.message);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function showControlAnswer(r, ms) {
  const d = r.data || {};
  if (r.status === 403) {
    setResult('forbidden', el('b', { text: 'operator token needed' }), errorText(d, 403));
    return;
  }
  if (!r.ok) {
    const code = r.status === 504 ? 'timeout' : (d.error && d.error.code) || 'error';
    setResult(r.status === 504 ? 'timeout' : 'error', el('b', { text: code.replaceAll('_', ' ') }), errorText(d, r.status));
    return;
  }
  if (d.status === 'duplicate') {
    setResult('duplicate', el('b', { text: 'duplicate' }), 'this command id was already sent');
    return;
  }
  const details = [];
  if (d.readback !== undefined && d.readback !== null) details.push(`readback ${fmtNum(d.readback)}`);
  if (d.error) details.push(d.error);
  details.push(`${ms} ms`);
  setResult(d.status || 'success', el('b', { text: d.status || 'done' }), details.join(' · '));
  const box = $('control-result');
  box.dataset.readback = d.readback === undefined || d.readback === null ? '' : String(d.readback);
  box.dataset.commandId = d.id || '';
}

// ---------------------------------------------------------------- alarms

// The alarm panel (docs/alarms.md): every rule that is not normal, most
// severe first, then newest; shelved ones in their own collapsed group. The
// list comes from GET /api/alarms?state=all at start and after every
// WebSocket (re)connect; the WebSocket's alarm frames keep it current.

const LEVEL_ORDER = { critical: 0, major: 1, minor: 2, warning: 3, info: 4 };
const ALARM_STATE_TEXT = {
  'active-unacked': 'active, unacked',
  'active-acked': 'active, acked',
  'cleared-unacked': 'cleared, unacked',
  normal: 'normal',
};
const SHELVE_FOR = [['15m', '15 min'], ['1h', '1 hour'], ['8h', '8 hours'], ['24h', '24 hours']];
const ALARM_EVENTS_KEPT = 20;

const alarms = {
  byId: new Map(), // id -> alarm object as GET /api/alarms gives it, every rule known (normal ones too)
  rows: new Map(), // id -> {li, ...}: rows on screen
  events: [], // recent events, newest first
  loads: 0, // generation of loadAlarms, so that a late answer does not undo a newer one
  readOnly: false, // an operator call answered 403: this token may only watch
};

function alarmVisible(a) {
  return a.state !== 'normal' || !!a.shelved;
}

function alarmUnacked(a) {
  return a.state === 'active-unacked' || a.state === 'cleared-unacked';
}

function compareAlarms(a, b) {
  return (LEVEL_ORDER[a.level] ?? 9) - (LEVEL_ORDER[b.level] ?? 9) || (b.since || 0) - (a.since || 0) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

// mergeAlarm takes an alarm object from the API unless what is known of it
// is newer (an event that arrived while the request was under way): then
// only what events do not carry (name, unit, ...) is filled in.
function mergeAlarm(a) {
  if (!a || typeof a.id !== 'string') return;
  const cur = alarms.byId.get(a.id);
  if (cur && (cur.updated || 0) > (a.updated || 0)) {
    for (const [k, v] of Object.entries(a)) if (cur[k] === undefined) cur[k] = v;
    return;
  }
  alarms.byId.set(a.id, a);
}

// applyAlarmEvent folds one event of a WebSocket alarm frame into the alarm
// it belongs to.
function applyAlarmEvent(ev) {
  const id = ev.alarm_id;
  if (typeof id !== 'string' || !id) return;
  const cur = alarms.byId.get(id) || { id, point: ev.point || '', state: 'normal', since: 0, updated: 0 };
  if (ev.ts && cur.updated && ev.ts < cur.updated) return; // older than what the list gave
  const a = {
    ...cur,
    state: ev.state ?? cur.state,
    level: ev.level ?? cur.level,
    band: ev.band ?? cur.band,
    value: ev.value ?? cur.value,
    threshold: ev.threshold ?? cur.threshold,
    message: ev.message ?? cur.message,
    point: ev.point || cur.point,
    shelved: ev.shelved ?? cur.shelved,
    shelved_until: ev.shelved_until ?? cur.shelved_until,
    updated: ev.ts || cur.updated,
  };
  if (ev.since) a.since = ev.since;
  else if (ev.type === 'raise') a.since = ev.ts;
  switch (ev.type) {
    case 'raise':
      a.acked_by = '';
      a.acked_at = 0;
      break;
    case 'ack':
      a.acked_by = ev.user || '';
      a.acked_at = ev.ts;
      break;
    case 'shelve':
      a.shelved_by = ev.user || '';
      a.shelve_reason = ev.reason || '';
      break;
    case 'unshelve':
      a.shelved_by = '';
      a.shelve_reason = '';
      a.shelved_until = 0;
      break;
  }
  if (!a.shelved) a.shelved_until = 0;
  if (a.state !== 'normal' && !a.since) a.since = ev.ts;
  alarms.byId.set(id, a);
}

function rememberAlarmEvents(list, newestFirst) {
  const seen = new Set(alarms.events.map((e) => e.event_id));
  const fresh = list.filter((e) => e && e.event_id && !seen.has(e.event_id));
  if (!fresh.length) return;
  alarms.events = (newestFirst ? fresh : fresh.slice().reverse()).concat(alarms.events)
    .sort((a, b) => (b.ts || 0) - (a.ts || 0)).slice(0, ALARM_EVENTS_KEPT);
  renderAlarmEvents();
}

// onAlarmFrame receives the WebSocket's {"type":"alarm","events":[...]}
// frames (events oldest first).
export function onAlarmFrame(frame) {
  const events = Array.isArray(frame.events) ? frame.events.filter((e) => e && typeof e === 'object') : [];
  if (!events.length) return;
  for (const ev of events) applyAlarmEvent(ev);
  rememberAlarmEvents(events, false);
  renderAlarms();
}

// loadAlarms replaces the list with the node's.
async function loadAlarms() {
  if (state.signedOut) return;
  const gen = ++alarms.loads;
  let r, ev;
  try {
    [r, ev] = await Promise.all([api('/api/alarms?state=all'), api('/api/alarms/events?limit=' + ALARM_EVENTS_KEPT)]);
  } catch (e) {
    if (gen === alarms.loads && !(e instanceof AuthError)) setAlarmsNote('Alarms could not be loaded: ' + e.message);
    return;
  }
  if (gen !== alarms.loads) return;
  if (!r.ok || !Array.isArray(r.data)) {
    setAlarmsNote('Alarms unavailable: ' + errorText(r.data, r.status));
    return;
  }
  const listed = new Set();
  for (const a of r.data) {
    listed.add(a.id);
    mergeAlarm(a);
  }
  for (const id of [...alarms.byId.keys()]) if (!listed.has(id)) alarms.byId.delete(id); // rule gone from the config
  setAlarmsNote('');
  if (ev.ok && Array.isArray(ev.data)) rememberAlarmEvents(ev.data, true);
  renderAlarms();
}

// setAlarmsNote shows why the list is unavailable ('' when it is fine).
function setAlarmsNote(text) {
  const empty = $('alarms-empty');
  empty.dataset.note = text ? 'error' : '';
  empty.classList.toggle('ok', !text);
  if (text) {
    empty.textContent = text;
    empty.hidden = false;
  } else {
    empty.textContent = 'No active alarms.';
  }
}

function renderAlarms() {
  const all = [...alarms.byId.values()].filter(alarmVisible).sort(compareAlarms);
  const active = all.filter((a) => !a.shelved);
  const shelved = all.filter((a) => a.shelved);
  for (const [id, row] of alarms.rows) {
    const a = alarms.byId.get(id);
    if (!a || !alarmVisible(a)) {
      row.li.remove();
      alarms.rows.delete(id);
    }
  }
  for (const a of all) renderAlarmRow(a);
  placeRows($('alarms'), active);
  placeRows($('alarms-shelved-list'), shelved);

  if ($('alarms-empty').dataset.note !== 'error') $('alarms-empty').hidden = active.length > 0;
  $('alarms-shelved').hidden = shelved.length === 0;
  $('alarms-shelved-count').textContent = String(shelved.length);

  const unacked = active.filter(alarmUnacked);
  const severe = unacked.some((a) => a.level === 'critical' || a.level === 'major');
  const badge = $('alarms-count');
  badge.textContent = String(unacked.length);
  badge.classList.toggle('active', severe);
  badge.classList.toggle('pending', unacked.length > 0 && !severe);
  badge.title = `${unacked.length} unacknowledged, ${active.filter((a) => a.state !== 'cleared-unacked').length} active` +
    (shelved.length ? `, ${shelved.length} shelved` : '');
}

// placeRows puts the rows of list into ul in that order, moving only what
// is out of place (a moved row would lose the focus of its shelve form).
function placeRows(ul, list) {
  list.forEach((a, i) => {
    const li = alarms.rows.get(a.id).li;
    if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null);
  });
}

function makeAlarmRow(id) {
  const row = {
    li: el('li', { class: 'alarm', 'data-alarm-id': id }),
    marker: el('span', { class: 'marker', 'aria-hidden': 'true' }),
    level: el('span', { class: 'level-badge' }),
    message: el('div', { class: 'alarm-msg' }),
    point: el('span', { class: 'alarm-point mono' }),
    since: el('span', { class: 'alarm-since' }),
    state: el('span', { class: 'alarm-state' }),
    shelf: el('div', { class: 'alarm-shelf' }),
    ack: el('button', { class: 'btn small-btn ack', type: 'button', text: 'Ack' }),
    shelve: el('button', { class: 'btn small-btn shelve', type: 'button', text: 'Shelve' }),
    unshelve: el('button', { class: 'btn small-btn unshelve', type: 'button', text: 'Unshelve' }),
    error: el('div', { class: 'alarm-error', role: 'alert' }),
  };
  row.form = makeShelveForm(id, row);
  row.ack.addEventListener('click', () => alarmAction(id, 'ack'));
  row.shelve.addEventListener('click', () => openShelveForm(row));
  row.unshelve.addEventListener('click', () => alarmAction(id, 'unshelve'));
  row.li.append(
    row.marker,
    row.level,
    el('div', { class: 'alarm-main' },
      row.message,
      el('div', { class: 'alarm-meta' }, row.state, row.since, row.point),
      row.shelf),
    el('div', { class: 'alarm-actions' }, row.ack, row.shelve, row.unshelve),
    row.form,
    row.error);
  row.error.hidden = true;
  alarms.rows.set(id, row);
  return row;
}

function makeShelveForm(id, row) {
  const duration = el('select', { name: 'for', 'aria-label': 'shelve for' },
    ...SHELVE_FOR.map(([v, text]) => el('option', { value: v, text })));
  const reason = el('input', { name: 'reason', type: 'text', required: true, maxLength: 200, placeholder: 'reason (required)', 'aria-label': 'reason', spellcheck: false });
  const submit = el('button', { class: 'btn primary small-btn', type: 'submit', text: 'Shelve' });
  const cancel = el('button', { class: 'btn ghost small-btn', type: 'button', text: 'Cancel' });
  const form = el('form', { class: 'shelve-form', autocomplete: 'off' }, duration, reason, submit, cancel);
  form.hidden = true;
  cancel.addEventListener('click', () => closeShelveForm(row));
  form.addEventListener('keydown', (e) => { if (e.key === 'Escape') closeShelveForm(row); });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const why = reason.value.trim();
    if (!why) {
      reason.setCustomValidity('a reason is required');
      reason.reportValidity();
      return;
    }
    if (await alarmAction(id, 'shelve', { for: duration.value, reason: why })) closeShelveForm(row);
  });
  reason.addEventListener('input', () => reason.setCustomValidity(''));
  return form;
}

function openShelveForm(row) {
  row.form.hidden = false;
  row.shelve.setAttribute('aria-expanded', 'true');
  row.form.elements.reason.focus();
}

function closeShelveForm(row) {
  row.form.hidden = true;
  row.form.reset();
  row.shelve.setAttribute('aria-expanded', 'false');
}

function renderAlarmRow(a) {
  const row = alarms.rows.get(a.id) || makeAlarmRow(a.id);
  const level = a.level || 'major';
  const li = row.li;
  const shown = `${a.state} ${!!a.shelved}`;
  if (row.shown !== shown && !row.busy) setAlarmError(row, ''); // the error was about another state
  row.shown = shown;
  li.dataset.state = a.state;
  li.dataset.level = level;
  li.dataset.shelved = String(!!a.shelved);
  li.dataset.since = String(a.since || 0);
  li.classList.toggle('unacked', alarmUnacked(a));
  row.level.className = 'level-badge level-' + level;
  row.level.textContent = level;
  row.message.textContent = a.message || a.id;
  row.message.title = a.id;
  const where = a.name ? `${a.point} ${a.name}` : a.point || '';
  row.point.textContent = where;
  row.point.title = a.value === undefined || a.value === null ? '' : `value ${fmtNum(a.value)}${a.unit ? ' ' + a.unit : ''}`;
  renderAlarmSince(row, a);
  row.state.textContent = ALARM_STATE_TEXT[a.state] || a.state;
  if (a.state === 'active-acked' && a.acked_by) row.state.title = `acknowledged by ${a.acked_by}` + (a.acked_at ? ' at ' + fmtTime(a.acked_at) : '');
  else row.state.title = '';
  if (a.shelved) {
    row.shelf.textContent = `shelved until ${fmtTime(a.shelved_until)}` + (a.shelved_by ? ` by ${a.shelved_by}` : '') + (a.shelve_reason ? ': ' + a.shelve_reason : '');
    row.shelf.hidden = false;
  } else {
    row.shelf.textContent = '';
    row.shelf.hidden = true;
  }
  row.ack.hidden = !alarmUnacked(a);
  row.shelve.hidden = !!a.shelved;
  row.unshelve.hidden = !a.shelved;
  if (a.shelved && !row.form.hidden) closeShelveForm(row);
  renderAlarmButtons(row);
}

function renderAlarmButtons(row) {
  for (const b of [row.ack, row.shelve, row.unshelve, row.form.querySelector('button[type="submit"]')]) {
    b.disabled = alarms.readOnly || row.busy === true;
    b.title = alarms.readOnly ? 'needs an operator token' : '';
  }
}

function renderAlarmSince(row, a) {
  if (a.since) {
    const ms = Math.max(0, Date.now() - a.since);
    row.since.textContent = (ms < 10000 ? Math.floor(ms / 1000) + ' s' : fmtAge(ms)) + ' ago';
    row.since.title = 'since ' + fmtTime(a.since);
  } else {
    row.since.textContent = '';
    row.since.title = '';
  }
}

function tickAlarmAges() {
  for (const [id, row] of alarms.rows) {
    const a = alarms.byId.get(id);
    if (a) renderAlarmSince(row, a);
  }
}

function fmtTime(ms) {
  if (!ms) return '—';
  const d = new Date(ms);
  const time = d.toLocaleTimeString('en-GB', { hour12: false });
  return d.toDateString() === new Date().toDateString() ? time : d.toLocaleDateString('en-GB') + ' ' + time;
}

function setAlarmError(row, text) {
  row.error.textContent = text;
  row.error.hidden = !text;
}

// alarmAction posts ack, shelve or unshelve for one alarm and shows the
// answer: the row follows the returned alarm, an error stays on the row.
async function alarmAction(id, action, body) {
  const row = alarms.rows.get(id);
  if (!row) return false;
  setAlarmError(row, '');
  row.busy = true;
  renderAlarmButtons(row);
  try {
    const r = await api(`/api/alarms/${encodeURIComponent(id)}/${action}`, { method: 'POST', body });
    if (r.status === 403) {
      alarms.readOnly = true;
      setAlarmError(row, 'Operator token needed: ' + errorText(r.data, 403));
      return false;
    }
    if (!r.ok) {
      setAlarmError(row, `${action} failed: ${errorText(r.data, r.status)}`);
      return false;
    }
    mergeAlarm(r.data);
    return true;
  } catch (e) {
    setAlarmError(row, e instanceof AuthError ? 'Unauthorized: sign in again.' : `${action} failed: ${e.message}`);
    return false;
  } finally {
    row.busy = false;
    renderAlarms();
  }
}

const EVENT_VERB = { raise: 'raised', change: 'changed', clear: 'cleared', ack: 'acknowledged', escalate: 'escalated', shelve: 'shelved', unshelve: 'unshelved' };

function renderAlarmEvents() {
  const list = $('alarm-events-list');
  list.replaceChildren(...alarms.events.map((e) => {
    const who = e.user ? ` by ${e.user}` : '';
    return el('li', { 'data-event-id': e.event_id, 'data-type': e.type || '' },
      el('span', { class: 'ev-time mono', text: fmtTime(e.ts) }),
      el('span', { class: 'level-dot level-' + (e.level || 'major'), title: e.level || '' }),
      el('span', { class: 'ev-text', title: e.message || '', text: `${e.alarm_id} ${EVENT_VERB[e.type] || e.type || ''}${who}` }));
  }));
  $('alarm-events').hidden = alarms.events.length === 0;
  $('alarm-events-count').textContent = String(alarms.events.length);
}

// ---------------------------------------------------------------- WebSocket

const ws = { sock: null, attempt: 0, timer: 0, lastFrame: 0, subscribed: [] };

function wsURL() {
  const u = new URL('/ws', location.href);
  u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  if (state.token) u.searchParams.set('token', state.token);
  return u.href;
}

function connectWS() {
  clearTimeout(ws.timer);
  dropSocket();
  if (state.signedOut) return;
  setConn('connecting', ws.attempt ? 'reconnecting…' : 'connecting…');
  const sock = new WebSocket(wsURL());
  ws.sock = sock;
  sock.onopen = () => {
    ws.attempt = 0;
    ws.lastFrame = Date.now();
    ws.subscribed = [];
    setConn('live', 'live');
    subscribe(state.patterns);
    loadAlarms(); // alarm frames come to every session; what changed while away comes from the list
  };
  sock.onmessage = (ev) => {
    ws.lastFrame = Date.now();
    if (typeof ev.data !== 'string') return; // we ask for json
    let f;
    try { f = JSON.parse(ev.data); } catch { return; }
    handleFrame(f);
  };
  sock.onclose = (ev) => {
    if (ws.sock !== sock) return;
    ws.sock = null;
    scheduleReconnect(ev.reason);
  };
}

function dropSocket() {
  const s = ws.sock;
  ws.sock = null;
  if (s) {
    s.onclose = null;
    s.onmessage = null;
    try { s.close(); } catch { /* already closed */ }
  }
}

function stopWS(text) {
  clearTimeout(ws.timer);
  dropSocket();
  setConn('offline', text);
}

// scheduleReconnect retries with exponential backoff (0.5 s doubling to
// 10 s, ±20 % jitter). A refused upgrade (bad token) looks like any other
// drop to a browser, so the REST API is asked whether the token still holds.
function scheduleReconnect(reason) {
  if (state.signedOut) return;
  ws.attempt++;
  const base = Math.min(WS_BACKOFF_MAX_MS, WS_BACKOFF_MIN_MS * 2 ** (ws.attempt - 1));
  const delay = Math.round(base * (0.8 + Math.random() * 0.4));
  const due = Date.now() + delay;
  const show = () => {
    const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
    setConn('offline', `offline · retry in ${left} s` + (reason ? ` (${reason})` : ''));
  };
  show();
  const countdown = setInterval(() => { if (ws.sock || state.signedOut) clearInterval(countdown); else show(); }, 1000);
  ws.timer = setTimeout(() => { clearInterval(countdown); connectWS(); }, delay);
  if (ws.attempt >= 2) api('/api/channels').catch(() => {});
}

function send(msg) {
  if (ws.sock && ws.sock.readyState === WebSocket.OPEN) {
    ws.sock.send(JSON.stringify(msg));
    return true;
  }
  return false;
}

function subscribe(patterns) {
  if (send({ op: 'subscribe', patterns, format: 'json' })) ws.subscribed = patterns.slice();
}

// resubscribe moves the session from the old patterns to the new ones.
function resubscribe(old, patterns) {
  if (!ws.sock || ws.sock.readyState !== WebSocket.OPEN) return; // onopen subscribes
  const gone = ws.subscribed.filter((p) => !patterns.includes(p));
  if (gone.length) send({ op: 'unsubscribe', patterns: gone });
  const added = patterns.filter((p) => !ws.subscribed.includes(p));
  if (added.length) send({ op: 'subscribe', patterns: added, format: 'json' });
  ws.subscribed = patterns.slice();
}

function handleFrame(f) {
  switch (f.type) {
    case 'snapshot':
    case 'update':
      applyPoints(f.points);
      break;
    case 'alarm':
      onAlarmFrame(f);
      break;
    case 'error':
      toast(`Live data: ${f.code || 'error'}: ${f.message || ''}`);
      break;
    case 'subscribed':
    case 'pong':
    default:
      break;
  }
}

function heartbeat() {
  if (!ws.sock || ws.sock.readyState !== WebSocket.OPEN) return;
  if (Date.now() - ws.lastFrame > WS_SILENT_LIMIT_MS) {
    dropSocket();
    scheduleReconnect('no answer');
    return;
  }
  send({ op: 'ping' });
}

// ---------------------------------------------------------------- start

let started = false;

// loadRole asks the node who this token is: a viewer gets the alarm
// buttons disabled from the start instead of after a refused click.
async function loadRole() {
  try {
    const r = await api('/api/whoami');
    if (r.ok && r.data && r.data.role === 'viewer') {
      alarms.readOnly = true;
      renderAlarms();
    }
  } catch (e) {
    // a 401 already shows the login; anything else: keep the buttons, the server still decides
  }
}

async function start() {
  loadHealth();
  await refreshChannels();
  if (state.signedOut) return;
  loadRole();
  loadAlarms();
  await Promise.all([loadWritable(), applyPatterns(state.patterns)]);
  if (state.signedOut) return;
  ws.attempt = 0;
  connectWS();
  if (!started) {
    started = true;
    setInterval(refreshChannels, CHANNELS_EVERY_MS);
    setInterval(() => { tickAges(); tickChannelAges(); tickAlarmAges(); tickClock(); }, 1000);
    setInterval(heartbeat, WS_PING_EVERY_MS);
  }
}

function wire() {
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    signIn($('login-token').value.trim());
  });
  $('logout').addEventListener('click', signOut);
  $('pattern-form').addEventListener('submit', (e) => {
    e.preventDefault();
    applyPatterns(parsePatterns($('pattern').value));
  });
  $('pattern').addEventListener('input', () => $('pattern').setCustomValidity(''));
  $('control-point').addEventListener('change', (e) => {
    const key = e.target.value;
    if (key) selectPoint(key); else setControlPoint('');
  });
  $('control-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const raw = $('control-value').value.trim();
    sendControl(raw === '' ? NaN : Number(raw));
  });
  $('control-on').addEventListener('click', () => sendControl(1));
  $('control-off').addEventListener('click', () => sendControl(0));
  new ResizeObserver(resizeChart).observe($('trend'));
}

state.token = takeToken();
// ?pattern= in the address (a link to a filtered view) wins over the last one used.
const savedPattern = new URL(location.href).searchParams.get('pattern') || sessionStorage.getItem(PATTERN_KEY);
if (savedPattern) {
  state.patterns = parsePatterns(savedPattern);
  $('pattern').value = state.patterns.join(' ');
}
wire();
tickClock();
start();

// For the console and tests.
window.voltage = { state, ws, alarms, onAlarmFrame };

// The rocm-llm status page: one stream (GET /events), rendered with DOM
// calls only (no innerHTML: every string from the daemon is text).
'use strict';

const KEY = 'rocm-llm-api-key'; // sessionStorage: this tab only
const $ = (id) => document.getElementById(id);
const openLogs = new Set();

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    // Through the CSSOM: the page's CSP refuses inline style attributes.
    else if (k === 'style') Object.assign(e.style, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: 'Bearer ' + key } : {};
}

function bytes(n) {
  if (n === null || n === undefined) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
}

function ago(epochSecs) {
  if (!epochSecs) return '-';
  let s = Math.max(0, Math.round(Date.now() / 1000 - epochSecs));
  if (s < 60) return s + 's ago';
  if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's ago';
  const h = Math.floor(s / 3600);
  return h + 'h ' + Math.floor((s % 3600) / 60) + 'm ago';
}

function duration(secs) {
  if (secs === null || secs === undefined) return '-';
  secs = Math.round(secs);
  return secs < 60 ? secs + 's' : Math.floor(secs / 60) + 'm' + (secs % 60 ? ' ' + (secs % 60) + 's' : '');
}

function showPrompt(message) {
  $('main').hidden = true;
  $('key-prompt').hidden = false;
  $('conn').textContent = 'locked';
  $('conn').className = 'conn';
  const err = $('key-error');
  err.hidden = !message;
  err.textContent = message || '';
  $('key').focus();
}

function showMain() {
  $('key-prompt').hidden = true;
  $('main').hidden = false;
}

async function act(model, action) {
  const err = $('action-error');
  err.hidden = true;
  const res = await fetch('/models/' + encodeURIComponent(model) + '/' + action, {
    method: 'POST',
    headers: Object.assign({ 'Content-Type': 'application/json' }, authHeaders()),
    body: '{}',
  });
  if (res.status === 401) return showPrompt('the key was refused');
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    err.textContent = model + ': ' + action + ' failed: ' + (body.error || res.status);
    err.hidden = false;
  }
}

function progressCell(p) {
  const pct = p.percent === null || p.percent === undefined ? null : p.percent;
  const bar = el('span', { class: 'progress' }, el('span', { style: { width: (pct || 0) + '%' } }));
  const gb = (b) => (b / 1e9).toFixed(1);
  const text = pct === null ? p.stage : p.stage + ' ' + gb(p.bytes_done) + '/' + gb(p.bytes_total) + ' GB (' + Math.round(pct) + '%)';
  return el('span', { class: 'load-progress' }, bar, text);
}

// Rows are kept per model and updated in place, so a button under the
// mouse is not replaced while it is being clicked; the buttons change only
// with the state.
function setText(node, text) {
  text = String(text);
  if (node.textContent !== text) node.textContent = text;
}

function buttonsFor(name, state) {
  const td = el('td', { class: 'actions' });
  const down = state === 'idle' || state === 'failed' || state === 'backoff';
  if (down) td.append(el('button', { 'data-action': 'start', onclick: () => act(name, 'start') }, 'start'));
  if (state !== 'idle') td.append(el('button', { 'data-action': 'stop', onclick: () => act(name, 'stop') }, 'stop'));
  td.append(' ', el('button', { 'data-action': 'restart', onclick: () => act(name, 'restart') }, 'restart'));
  return td;
}

// What a model's start waits for, as the CLI's state column says it:
// [kind, text], or null.
function memoryBadge(m) {
  const mem = m.memory || {};
  if (mem.waiting_for) {
    const held = mem.waiting_for.length ? ' (held by ' + mem.waiting_for.join(', ') + ')' : '';
    return ['waiting', 'waiting for memory' + held];
  }
  if (mem.refused) return ['refused', 'no room'];
  return null;
}

function setBadge(node, badge) {
  const cls = badge ? 'badge badge-' + badge[0] : 'badge';
  if (node.className !== cls) node.className = cls;
  setText(node, badge ? badge[1] : '');
  node.hidden = !badge;
}

function detailFor(m) {
  const notes = [];
  if (m.progress) notes.push(progressCell(m.progress));
  if (m.memory && m.memory.refused) notes.push(el('span', { class: 'error refused' }, 'no room: ' + m.memory.refused));
  if (m.last_error) notes.push(el('span', { class: 'error last-error' }, 'last error: ' + m.last_error));
  else if (m.last_restart) notes.push(el('span', {}, 'restarted ' + ago(m.last_restart.at) + ': ' + m.last_restart.reason));
  for (const w of m.warnings || []) notes.push(el('span', { class: 'error' }, 'warning: ' + w));
  const td = el('td', { class: 'detail', colspan: '12' });
  notes.forEach((n, i) => { if (i) td.append(' · '); td.append(n); });
  return notes.length ? td : null;
}

function renderModels(models) {
  const body = $('models').tBodies[0];
  const rows = new Map();
  for (const tr of Array.from(body.rows)) {
    const name = tr.dataset.model;
    if (name !== undefined && name in models) rows.set(name, tr);
    else if (name !== undefined || !(tr.dataset.detail in models)) tr.remove();
  }
  let previous = null;
  for (const [name, m] of Object.entries(models)) {
    let tr = rows.get(name);
    if (!tr) {
      tr = el('tr', { 'data-model': name }, el('td', { class: 'name' }, name));
      for (let i = 0; i < 10; i++) tr.append(el('td'));
      tr.append(el('td', { class: 'actions' }));
      tr.cells[1].append(el('span', { class: 'state' }), el('span', { class: 'badge', hidden: '' }));
      tr.cells[2].className = 'since';
    }
    // Keep the table's order without moving rows that are in place.
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (expected !== tr) body.insertBefore(tr, expected);
    const state = tr.cells[1].firstChild;
    setText(state, m.state);
    if (state.className !== 'state state-' + m.state) state.className = 'state state-' + m.state;
    setBadge(tr.cells[1].lastChild, memoryBadge(m));
    tr.dataset.since = m.state_since || '';
    setText(tr.cells[2], ago(m.state_since));
    tr.cells[2].title = m.state_since ? new Date(m.state_since * 1000).toISOString() : '';
    setText(tr.cells[3], m.pid ?? '-');
    setText(tr.cells[4], m.port ?? '-');
    setText(tr.cells[5], m.ready_ms === null || m.ready_ms === undefined ? '-' : Math.round(m.ready_ms) + ' ms');
    setText(tr.cells[6], m.in_flight);
    setText(tr.cells[7], m.waiting);
    setText(tr.cells[8], m.restarts);
    let onDemand = m.on_demand ? 'yes' : 'no';
    if (m.on_demand && m.idle_timeout_s) {
      onDemand += m.idle_for_s !== null && m.idle_for_s !== undefined
        ? ', idle ' + duration(m.idle_for_s) + ' of ' + duration(m.idle_timeout_s)
        : ', stops after ' + duration(m.idle_timeout_s) + ' idle';
    }
    setText(tr.cells[9], onDemand);
    setText(tr.cells[10], (m.aliases || []).join(', ') || '-');
    if (tr.dataset.buttons !== m.state) {
      tr.dataset.buttons = m.state;
      tr.replaceChild(buttonsFor(name, m.state), tr.cells[11]);
    }
    // The detail row (progress, errors, warnings) right after its model.
    let detail = tr.nextSibling && tr.nextSibling.dataset && tr.nextSibling.dataset.detail === name ? tr.nextSibling : null;
    const td = detailFor(m);
    if (!td) {
      if (detail) detail.remove();
      previous = tr;
      continue;
    }
    if (!detail) {
      detail = el('tr', { 'data-detail': name });
      body.insertBefore(detail, tr.nextSibling);
    }
    if (!detail.firstChild || detail.firstChild.textContent !== td.textContent || m.progress) {
      detail.replaceChildren(td);
    }
    previous = detail;
  }
}

// "since" moves without events.
function tickSince() {
  for (const tr of $('models').tBodies[0].rows) {
    if (tr.dataset.model !== undefined) setText(tr.cells[2], ago(Number(tr.dataset.since) || null));
  }
}

const PARTS = ['weights', 'kv', 'compute', 'output', 'overhead'];

function memRow(label, segments, scale, figures) {
  const bar = el('div', { class: 'bar' });
  for (const [cls, n, title] of segments) {
    if (n > 0) bar.append(el('span', { class: 'seg-' + cls, title: title + ' ' + bytes(n), style: { width: (100 * n / scale) + '%' } }));
  }
  return el('div', { class: 'memrow' }, el('span', { class: 'label' }, label), bar, el('span', { class: 'figures' }, figures));
}

// Models' own colours in the budget bars (the scheduler's reservations).
const MODEL_COLOURS = 6;

function counterText(c) {
  return 'scheduler: evictions ' + c.evictions + ' · yields ' + c.yields + ' · refused ' + c.refused +
    ' · waits ' + c.waits + ' · swaps ' + c.swaps + ' · blue_green fallbacks ' + c.fallbacks +
    ' · free-wait timeouts ' + c.free_timeouts;
}

function renderMemory(status) {
  const box = $('memory');
  box.replaceChildren();
  const sched = status.scheduler || {};
  const holdings = sched.models || {};
  const byDevice = new Map(); // device name -> [label, parts, gpu bytes, source]
  const add = (dev, row) => {
    if (!byDevice.has(dev)) byDevice.set(dev, []);
    byDevice.get(dev).push(row);
  };
  for (const [name, m] of Object.entries(status.models)) {
    const mem = m.memory || {};
    for (const [dev, parts] of Object.entries(mem.log_devices || {})) {
      add(dev, [name, parts, mem.gpu_bytes, 'llama-server']);
    }
    // The estimate (rocm-llm plan's), when the status has one.
    const est = mem.estimate && mem.estimate.devices;
    for (const [dev, parts] of Object.entries(est || {})) {
      add(dev, [name + ' (estimate)', parts, null, 'estimate']);
    }
  }
  for (const d of status.devices || []) {
    const free = d.total - d.used;
    box.append(el('h3', {}, d.name));
    box.append(memRow('driver', [['used', d.used, 'used']], d.total, bytes(d.used) + ' used of ' + bytes(d.total) + ', ' + bytes(free) + ' free'));
    // Whatever else the driver reports per device: shown as figures.
    const extra = Object.entries(d).filter(([k, v]) => typeof v === 'number' && !['total', 'used', 'card', 'index'].includes(k));
    if (extra.length) box.append(el('p', { class: 'figures' }, extra.map(([k, v]) => k + ' ' + bytes(v)).join(' · ')));
    for (const [name, parts, , source] of byDevice.get(d.name) || []) {
      const sum = PARTS.reduce((a, p) => a + (parts[p] || 0), 0);
      box.append(memRow(name, PARTS.map((p) => [p, parts[p] || 0, p]), d.total, bytes(sum) + ' (' + source + ')'));
    }
    byDevice.delete(d.name);
  }
  // The llama.cpp devices (the host's CPU, ROCm0, ...): the scheduler's
  // budget, its reservations per model and what was measured, then the
  // buffers llama-server reported there.
  const colour = new Map(Object.keys(holdings).map((name, i) => [name, 'model-' + (i % MODEL_COLOURS)]));
  const budgets = new Map((sched.devices || []).map((b) => [b.device, b]));
  for (const dev of new Set([...budgets.keys(), ...byDevice.keys()])) {
    const rows = byDevice.get(dev) || [];
    const sums = rows.map(([, parts]) => PARTS.reduce((a, p) => a + (parts[p] || 0), 0));
    const b = budgets.get(dev);
    const held = Object.entries(holdings).filter(([, h]) => (h.reserved || {})[dev] > 0);
    const scale = Math.max(b ? b.budget_bytes : 0, b ? b.reserved_bytes : 0, b ? b.measured_bytes : 0, ...sums, 1);
    const section = el('div', { class: 'device', 'data-device': dev }, el('h3', {}, dev === 'CPU' ? 'CPU (host memory)' : dev));
    if (b) {
      // A device only a reservation names has no budget (0).
      const of = b.budget_bytes ? ' of ' + bytes(b.budget_bytes) + ', ' + bytes(b.free_bytes) + ' free' : ', no budget';
      section.append(memRow('budget', held.map(([name, h]) => [colour.get(name), h.reserved[dev], name + ' reserved']), scale,
        bytes(b.reserved_bytes) + ' reserved' + of));
      section.append(memRow('measured', [['measured', b.measured_bytes, 'measured']], scale, bytes(b.measured_bytes) + ' measured'));
      for (const [name, h] of held) {
        const measured = (h.measured || {})[dev];
        const fig = bytes(h.reserved[dev]) + (h.phases && h.phases.length ? ' (' + h.phases.join(', ') + ')' : '') +
          (measured ? ', ' + bytes(measured) + ' measured' : '');
        const row = memRow(name + ' (reserved)', [[colour.get(name), h.reserved[dev], 'reserved']], scale, fig);
        row.classList.add('reservation');
        row.dataset.model = name;
        section.append(row);
      }
    }
    rows.forEach(([name, parts, gpu, source], i) => {
      const fig = bytes(sums[i]) + ' (' + source + ')' + (gpu ? ', GPU ' + bytes(gpu) + ' (driver)' : '');
      section.append(memRow(name, PARTS.map((p) => [p, parts[p] || 0, p]), scale, fig));
    });
    box.append(section);
  }
  // Starts that wait for memory, and the last refusals.
  for (const [name, m] of Object.entries(status.models)) {
    const badge = memoryBadge(m);
    if (!badge) continue;
    const span = el('span', {});
    setBadge(span, badge);
    const waited = (holdings[name] || {}).waiting_s;
    const note = badge[0] === 'waiting' ? (waited ? 'for ' + duration(waited) : '') : m.memory.refused;
    box.append(el('p', { class: 'memwait', 'data-model': name }, el('span', { class: 'label' }, name), span, ' ', el('span', { class: 'figures' }, note)));
  }
  const c = sched.counters;
  const counted = c && Object.values(c).some((n) => n > 0);
  if (!box.childElementCount) {
    box.append(el('p', { class: 'figures' }, 'no measurements yet: they appear once a model has loaded'));
  } else {
    const legend = el('p', { class: 'legend figures' });
    for (const p of PARTS) legend.append(el('span', { class: 'seg-' + p }), p);
    if (budgets.size) legend.append(el('span', { class: 'seg-measured' }), 'measured (the reservations have each model\'s colour)');
    box.append(legend);
  }
  if (c && (budgets.size || counted)) box.append(el('p', { class: 'figures counters' }, counterText(c)));
}

function renderSpec(status) {
  const r = status.last_reload;
  const summary = 'generation ' + status.generation + ' of ' + status.spec + ' · ' +
    status.reloads + ' reloads applied, ' + status.reload_errors + ' rejected';
  $('spec-summary').textContent = summary;
  const errors = $('spec-errors');
  errors.replaceChildren();
  const last = (status.reload_history || [])[0];
  if (r && !r.ok) {
    errors.append(el('p', { class: 'error' }, 'The last edit was rejected; nothing changed:'));
    const rendered = last && !last.ok ? last.rendered : r.errors;
    for (const e of rendered) errors.append(el('pre', { class: 'spec-error' }, e));
  }
  const list = $('history');
  list.replaceChildren();
  for (const h of status.reload_history || []) {
    const what = h.ok ? 'applied generation ' + h.generation + (h.actions.length ? ': ' + h.actions.join(', ') : ': nothing to restart')
      : 'rejected: ' + h.errors.length + ' error' + (h.errors.length === 1 ? '' : 's');
    list.append(el('li', { class: h.ok ? '' : 'error' }, new Date(h.at * 1000).toLocaleTimeString() + ' ' + what));
  }
}

function renderLogs(models) {
  const box = $('logs');
  for (const d of box.querySelectorAll('details')) {
    if (d.open) openLogs.add(d.dataset.model); else openLogs.delete(d.dataset.model);
  }
  box.replaceChildren();
  for (const [name, m] of Object.entries(models)) {
    const pre = el('pre', { class: 'log' }, (m.log || []).join('\n') || '(no output yet)');
    const d = el('details', { 'data-model': name }, el('summary', {}, name + ' (last ' + (m.log || []).length + ' lines)'), pre);
    if (openLogs.has(name)) d.open = true;
    box.append(d);
  }
}

function render(status) {
  renderModels(status.models);
  renderMemory(status);
  renderSpec(status);
  renderLogs(status.models);
}

function handleBlock(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue; // a comment (keepalive)
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
  }
  if (event === 'status' && data.length) render(JSON.parse(data.join('\n')));
}

// EventSource cannot send the API key, so the stream is read with fetch.
async function connect() {
  let res;
  try {
    res = await fetch('/events', { headers: authHeaders(), cache: 'no-store' });
  } catch (e) {
    return retry('disconnected');
  }
  if (res.status === 401) {
    const had = sessionStorage.getItem(KEY);
    sessionStorage.removeItem(KEY);
    return showPrompt(had ? 'the key was refused' : '');
  }
  if (!res.ok) return retry('error ' + res.status);
  showMain();
  $('conn').textContent = 'live';
  $('conn').className = 'conn live';
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        handleBlock(buf.slice(0, i));
        buf = buf.slice(i + 2);
      }
    }
  } catch (e) { /* the daemon went away */ }
  retry('disconnected');
}

function retry(why) {
  $('conn').textContent = why + '; retrying';
  $('conn').className = 'conn';
  setTimeout(connect, 1000);
}

document.addEventListener('DOMContentLoaded', () => {
  $('key-prompt').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $('key').value);
    $('key').value = '';
    connect();
  });
  setInterval(tickSince, 1000);
  connect();
});

// Shared by every view: the admin API client (bearer token from sessionStorage,
// never thrown errors), DOM building, formatting, and the live stats poller.

const TOKEN_KEY = 'cemesh.token';
const listeners = { unauthorized: [] };

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || '',
  set: (t) => sessionStorage.setItem(TOKEN_KEY, t),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export function onUnauthorized(fn) { listeners.unauthorized.push(fn); }

/** Calls the admin API. Always resolves to {ok, status, data, error}. */
export async function api(path, { method = 'GET', body, signal } = {}) {
  const headers = { Accept: 'application/json' };
  const t = token.get();
  if (t) headers.Authorization = `Bearer ${t}`;
  const init = { method, headers, signal, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    const aborted = e && e.name === 'AbortError';
    return { ok: false, status: 0, data: null, aborted, error: aborted ? 'aborted' : `cannot reach the server (${e.message})` };
  }
  let data = null;
  try {
    const text = await res.text();
    data = text ? JSON.parse(text) : null;
  } catch { data = null; }
  const error = res.ok ? null : (data && data.error) || `HTTP ${res.status} ${res.statusText}`;
  if (res.status === 401) listeners.unauthorized.forEach((fn) => fn(error));
  return { ok: res.ok, status: res.status, data, error };
}

/** Opens a streaming GET (for server-sent events) with the token as a header. */
export async function openStream(path, signal) {
  const headers = { Accept: 'text/event-stream' };
  const t = token.get();
  if (t) headers.Authorization = `Bearer ${t}`;
  try {
    const res = await fetch(path, { headers, signal, cache: 'no-store' });
    if (!res.ok) {
      let error = `HTTP ${res.status}`;
      try { error = (await res.json()).error || error; } catch { /* not JSON */ }
      if (res.status === 401) listeners.unauthorized.forEach((fn) => fn(error));
      return { ok: false, status: res.status, error };
    }
    return { ok: true, status: res.status, reader: res.body.getReader() };
  } catch (e) {
    return { ok: false, status: 0, aborted: e && e.name === 'AbortError', error: e.message };
  }
}

export const enc = encodeURIComponent;

/** Builds an element: h('a', {href, class, dataset-less data-test}, children...). */
export function h(tag, attrs = {}, ...children) {
  const svg = SVG_TAGS.has(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', v);
    else if (k in el && !svg && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}
const SVG_TAGS = new Set(['svg', 'g', 'rect', 'text', 'path', 'polyline', 'line', 'title', 'defs', 'marker', 'circle', 'tspan']);

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) { el.replaceChildren(); append(el, children); return el; }

/** A stable test id from parts: 'node', 'trigger', 'default', 'orders' → node-trigger-default-orders. */
export const tid = (...parts) => parts.map((p) => String(p).replace(/[^A-Za-z0-9_.-]+/g, '_')).join('-');

export function readiness(obj) {
  const c = (obj?.status?.conditions || []).find((x) => x.type === 'Ready');
  return { status: c?.status || 'Unknown', reason: c?.reason || '', message: c?.message || '' };
}

export function readyBadge(obj, test) {
  const r = typeof obj === 'string' ? { status: obj, reason: obj } : readiness(obj);
  const label = { True: 'Ready', False: 'Not ready' }[r.status] || 'Unknown';
  return h('span', { class: `badge ready-${r.status.toLowerCase()}`, 'data-test': test, 'data-ready': r.status, title: r.message || r.reason }, label);
}

/** Who owns a resource: a file of the config dir, the API, or discovered. */
export function owner(obj) {
  const a = obj?.metadata?.annotations?.['cemesh.dev/owner'] || '';
  if (a.startsWith('file:')) return { kind: 'file', text: `file ${a.slice(5)}`, file: a.slice(5) };
  if (a === 'api') return { kind: 'api', text: 'admin API' };
  if (a === 'discovered') return { kind: 'discovered', text: 'discovered' };
  return { kind: 'unknown', text: a || 'unknown' };
}

export function fmtRate(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (v === 0) return '0';
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

export function fmtNum(v, unit = '') {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const s = Math.abs(v) >= 1000 ? v.toLocaleString('en', { maximumFractionDigits: 0 })
    : Number.isInteger(v) ? String(v) : v.toFixed(v >= 10 ? 1 : 2);
  return unit ? `${s} ${unit}` : s;
}

export function fmtTime(t) {
  if (!t) return '–';
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  const today = new Date().toDateString() === d.toDateString();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  return today ? time : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

/** A YAML-looking rendering of JSON, for reading manifests. */
export function toYaml(v, indent = '') {
  const scalar = (x) => {
    if (x === null || x === undefined) return 'null';
    if (typeof x !== 'string') return String(x);
    const plain = /^[A-Za-z0-9_./:@ -]+$/.test(x) && !/^(true|false|null|yes|no|~|[-+]?[0-9.]+)$/i.test(x)
      && !/^[ -]|[ :]$|: | #/.test(x);
    return plain ? x : JSON.stringify(x);
  };
  const isObj = (x) => x && typeof x === 'object';
  if (Array.isArray(v)) {
    if (!v.length) return '[]';
    return v.map((item) => {
      if (!isObj(item) || (Array.isArray(item) ? !item.length : !Object.keys(item).length)) return `${indent}- ${isObj(item) ? (Array.isArray(item) ? '[]' : '{}') : scalar(item)}`;
      const inner = toYaml(item, `${indent}  `);
      return `${indent}- ${inner.slice(indent.length + 2)}`;
    }).join('\n');
  }
  if (isObj(v)) {
    const keys = Object.keys(v);
    if (!keys.length) return '{}';
    return keys.map((k) => {
      const x = v[k];
      const key = `${indent}${scalar(k)}:`;
      if (isObj(x) && (Array.isArray(x) ? x.length : Object.keys(x).length)) {
        return `${key}\n${toYaml(x, Array.isArray(x) ? indent : `${indent}  `)}`;
      }
      return `${key} ${isObj(x) ? (Array.isArray(x) ? '[]' : '{}') : scalar(x)}`;
    }).join('\n');
  }
  return `${indent}${scalar(v)}`;
}

/** The plurals the REST API lists, as control-plane/src/manifest/kinds.rs names them. */
export const KINDS = [
  { plural: 'brokers', kind: 'Broker' },
  { plural: 'triggers', kind: 'Trigger' },
  { plural: 'channels', kind: 'Channel' },
  { plural: 'inmemorychannels', kind: 'InMemoryChannel' },
  { plural: 'kafkachannels', kind: 'KafkaChannel' },
  { plural: 'subscriptions', kind: 'Subscription' },
  { plural: 'sequences', kind: 'Sequence' },
  { plural: 'parallels', kind: 'Parallel' },
  { plural: 'pingsources', kind: 'PingSource' },
  { plural: 'containersources', kind: 'ContainerSource' },
  { plural: 'kafkasources', kind: 'KafkaSource' },
  { plural: 'sinkbindings', kind: 'SinkBinding' },
  { plural: 'eventpolicies', kind: 'EventPolicy' },
  { plural: 'eventtypes', kind: 'EventType' },
];
export const pluralOf = (kind) => KINDS.find((k) => k.kind === kind)?.plural;
export const kindOf = (plural) => KINDS.find((k) => k.plural === plural)?.kind;

/** Every item of the given plurals, all namespaces: {plural: [items]}, plus the first error. */
export async function listAll(plurals, signal) {
  const answers = await Promise.all(plurals.map((p) => api(`/v1/${p}`, { signal })));
  const out = { error: null, status: 200 };
  plurals.forEach((p, i) => {
    const a = answers[i];
    out[p] = a.ok ? a.data?.items || [] : [];
    if (!a.ok && !out.error && !a.aborted) { out.error = a.error; out.status = a.status; }
  });
  return out;
}

/** The trigger that runs a resource's delivery (a Subscription's is subscription.NAME). */
export function deliveryTrigger(plural, name) {
  switch (plural) {
    case 'triggers': return name;
    case 'subscriptions': return `subscription.${name}`;
    case 'pingsources': return `pingsource.${name}`;
    case 'kafkasources': return `kafkasource.${name}.0`;
    default: return null;
  }
}

/** The address (broker key) a resource's events enter. */
export function addressOf(plural, name) {
  if (plural === 'brokers') return name;
  if (['channels', 'inmemorychannels', 'kafkachannels'].includes(plural)) return `${name}-kn-channel`;
  if (plural === 'pingsources') return `${name}-kn-pingsource`;
  return null;
}

/**
 * The live series of GET /v1/stats, polled while some view listens. Servers without
 * the endpoint (404) are asked again only once a minute.
 */
export const stats = {
  latest: null,
  unavailable: null,
  lastTry: 0,
  async fetch() {
    if (this.unavailable && Date.now() - this.lastTry < 60000) return this.latest;
    this.lastTry = Date.now();
    const r = await api('/v1/stats');
    if (r.ok && r.data) {
      this.unavailable = null;
      this.latest = r.data;
    } else if (r.status === 404 || r.status === 405) {
      this.unavailable = 'this server has no live stats endpoint (GET /v1/stats)';
    }
    return this.latest;
  },
  broker(ns, name) {
    return this.latest?.brokers?.find((b) => b.namespace === ns && b.name === name) || null;
  },
  trigger(ns, name) {
    return this.latest?.triggers?.find((t) => t.namespace === ns && t.name === name) || null;
  },
};

export const last = (arr) => (arr && arr.length ? arr[arr.length - 1] : null);

/** Asks in the page's <dialog id="confirm">; resolves true only on its confirm button. */
export function confirmDialog(text, okLabel = 'Confirm') {
  const dlg = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  dlg.querySelector('[data-test="confirm-ok"]').textContent = okLabel;
  dlg.returnValue = '';
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
    dlg.showModal();
    dlg.querySelector('[data-test="confirm-cancel"]').focus();
  });
}

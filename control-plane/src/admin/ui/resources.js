// Resources: a table per kind with readiness, and a resource's detail: conditions,
// problems, owner (file or API), live counters and charts, and its manifest.

import {
  h, clear, tid, api, enc, listAll, readiness, readyBadge, owner, toYaml, KINDS, kindOf,
  stats, deliveryTrigger, addressOf, fmtTime,
} from './lib.js';
import { brokerCharts, triggerCharts } from './charts.js';

const CHANNELS = ['channels', 'inmemorychannels', 'kafkachannels'];

/** A destination ({ref} or {uri}) in a few words. */
export function destText(d) {
  if (!d) return '';
  if (d.ref) return `${d.ref.kind || 'ref'}/${d.ref.name}${d.uri ? ` ${d.uri}` : ''}`;
  return d.uri || '';
}

function summary(plural, r) {
  const s = r.spec || {};
  const st = r.status || {};
  switch (plural) {
    case 'brokers': return st.address?.url || '';
    case 'triggers': return `${s.broker} → ${destText(s.subscriber)}`;
    case 'subscriptions': return `${s.channel?.name} → ${destText(s.subscriber)}`;
    case 'channels': case 'inmemorychannels': case 'kafkachannels':
      return `${(st.subscribers || []).length} subscribers`;
    case 'pingsources': return `${s.schedule} → ${destText(s.sink)}`;
    case 'containersources': case 'kafkasources': return `→ ${destText(s.sink)}`;
    case 'sinkbindings': return `${s.subject?.kind || '?'} → ${destText(s.sink)}`;
    case 'sequences': return `${(s.steps || []).length} steps`;
    case 'parallels': return `${(s.branches || []).length} branches`;
    case 'eventpolicies': return (st.from || []).join(', ');
    case 'eventtypes': return `${s.type} from ${s.source || '*'}`;
    default: return '';
  }
}

const detailHref = (plural, r) => `#/resources/${plural}/${enc(r.metadata?.namespace || 'default')}/${enc(r.metadata?.name)}`;

function table(plural, items) {
  const rows = items.map((r) => {
    const ns = r.metadata?.namespace || 'default';
    const rd = readiness(r);
    return h('tr', { 'data-test': tid('res-row', plural, ns, r.metadata?.name) },
      h('td', {}, h('a', { href: detailHref(plural, r), 'data-test': tid('res-link', plural, ns, r.metadata?.name) }, r.metadata?.name)),
      h('td', {}, ns),
      h('td', {}, readyBadge(r)),
      h('td', { class: 'wrap' }, rd.status === 'True' ? '' : `${rd.reason}${rd.message ? `: ${rd.message}` : ''}`),
      h('td', {}, owner(r).kind === 'file' ? h('span', { title: owner(r).file }, 'file') : owner(r).text),
      h('td', { class: 'wrap' }, summary(plural, r)));
  });
  return h('div', { class: 'table-scroll' }, h('table', { 'data-test': `res-table-${plural}` },
    h('thead', {}, h('tr', {}, ['Name', 'Namespace', 'Ready', 'Why not', 'Owner', 'Details'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows)));
}

async function renderList(root, route, ctx) {
  const only = route.parts[0] && kindOf(route.parts[0]) ? [route.parts[0]] : KINDS.map((k) => k.plural);
  const filter = h('input', { id: 'res-filter', type: 'search', placeholder: 'name contains…', 'data-test': 'res-filter' });
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const problems = h('div', { 'data-test': 'resources-problems' });
  root.append(h('div', { class: 'view-head' }, h('h1', {}, only.length === 1 ? `${kindOf(only[0])}s` : 'Resources'),
    h('div', { class: 'field inline' }, h('label', { for: 'res-filter' }, 'Filter'), filter)), problems, body);
  let lists = null;
  const paint = () => {
    const q = filter.value.trim().toLowerCase();
    const empty = [];
    const sections = [];
    for (const plural of only) {
      const items = (lists[plural] || []).filter((r) => !q || (r.metadata?.name || '').toLowerCase().includes(q));
      if (!items.length) { empty.push(kindOf(plural)); continue; }
      sections.push(h('section', { class: 'kind', 'data-test': `res-kind-${plural}` },
        h('h2', {}, `${kindOf(plural)}s `, h('span', { class: 'count' }, String(items.length))), table(plural, items)));
    }
    clear(body, sections, empty.length ? h('p', { class: 'muted small' }, `None: ${empty.join(', ')}.`) : null);
  };
  filter.addEventListener('input', () => lists && paint());
  const refresh = async () => {
    lists = await listAll(only, ctx.signal);
    if (!ctx.alive) return;
    if (lists.error && lists.status !== 401) ctx.error(`Cannot list resources: ${lists.error}`);
    paint();
  };
  const ready = await api('/readyz', { signal: ctx.signal });
  if (ready.data && ctx.alive) {
    const p = [...(ready.data.problems || []), ...(ready.data.rejected_reload || []).map((x) => `rejected reload: ${x}`)];
    if (p.length) {
      clear(problems, h('details', { class: 'card problems' },
        h('summary', {}, `${p.length} problem${p.length > 1 ? 's' : ''} (from /readyz)`), h('ul', {}, p.map((x) => h('li', {}, x)))));
    }
  }
  await refresh();
  ctx.every(5000, refresh);
}

/** The resource: GET it, or for a channel find it among the three channel kinds. */
async function fetchResource(plural, ns, name, signal) {
  if (CHANNELS.includes(plural)) {
    const answers = await Promise.all(CHANNELS.map((p) => api(`/v1/namespaces/${enc(ns)}/${p}`, { signal })));
    for (let i = 0; i < CHANNELS.length; i += 1) {
      const r = answers[i].data?.items?.find((x) => x.metadata?.name === name);
      if (r) return { ok: true, data: r, plural: CHANNELS[i] };
    }
    const bad = answers.find((a) => !a.ok);
    return bad || { ok: false, status: 404, error: `channel ${ns}/${name} not found` };
  }
  const a = await api(`/v1/namespaces/${enc(ns)}/${plural}/${enc(name)}`, { signal });
  return { ...a, plural };
}

function conditionsTable(r) {
  const cs = r.status?.conditions || [];
  return h('div', { class: 'table-scroll' }, h('table', { 'data-test': 'detail-conditions' },
    h('thead', {}, h('tr', {}, ['Type', 'Status', 'Reason', 'Message'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, cs.map((c) => h('tr', { 'data-test': 'detail-condition', 'data-type': c.type, 'data-status': c.status },
      h('td', {}, c.type), h('td', {}, c.type === 'Ready' ? readyBadge(c.status) : `${c.status}${c.severity ? ` (${c.severity})` : ''}`),
      h('td', {}, c.reason || ''), h('td', { class: 'wrap' }, c.message || ''))))));
}

function problemsOf(r, kind, ready) {
  const ns = r.metadata?.namespace || 'default';
  const label = `${kind} ${ns}/${r.metadata?.name}`;
  const out = (r.status?.conditions || []).filter((c) => c.status === 'False' && c.message && c.severity !== 'Info')
    .map((c) => `${c.type}: ${c.message}`);
  for (const p of [...(ready?.problems || []), ...(ready?.rejected_reload || [])]) {
    if (p.includes(`(${label})`) && !out.some((o) => o.includes(p))) out.push(p);
  }
  return out;
}

function statsGrid(s) {
  if (!s) return null;
  const flat = { ...s, breaker: s.breaker?.state, paused: s.paused ? JSON.stringify(s.paused) : 'no' };
  return h('div', { class: 'counters', 'data-test': 'detail-stats' },
    Object.entries(flat).map(([k, v]) => h('div', { class: 'stat' }, h('span', { class: 'label' }, k),
      h('span', { class: 'value', 'data-test': `detail-stat-${k}` }, v === null || v === undefined ? '–' : String(v)))));
}

async function renderDetail(root, route, ctx) {
  let [plural, ns, name] = route.parts;
  const head = h('div', { class: 'view-head' }, h('h1', {}, `${kindOf(plural) || plural} ${ns}/${name}`));
  const meta = h('div', { class: 'detail-meta' });
  const problems = h('section', { 'data-test': 'detail-problems' });
  const conditions = h('section', {});
  const live = h('section', {});
  const charts = h('div', { class: 'charts', 'data-test': 'detail-charts' });
  const manifest = h('pre', { class: 'code', 'data-test': 'detail-manifest' });
  const status = h('pre', { class: 'code', 'data-test': 'detail-status' });
  let format = 'yaml';
  const formatBtn = h('button', { type: 'button', 'data-test': 'detail-format' }, 'Show JSON');
  root.append(h('p', {}, h('a', { href: '#/resources', 'data-test': 'detail-back' }, '← All resources')), head, meta, problems,
    charts, live, h('h2', {}, 'Conditions'), conditions,
    h('div', { class: 'section-head' }, h('h2', {}, 'Manifest'), formatBtn), manifest,
    h('details', {}, h('summary', {}, 'Full status'), status));
  let res = null;
  const paintManifest = () => {
    if (!res) return;
    const { status: _s, ...rest } = res;
    manifest.textContent = format === 'yaml' ? toYaml(rest) : JSON.stringify(rest, null, 2);
    status.textContent = format === 'yaml' ? toYaml(res.status || {}) : JSON.stringify(res.status || {}, null, 2);
    formatBtn.textContent = format === 'yaml' ? 'Show JSON' : 'Show YAML';
  };
  formatBtn.addEventListener('click', () => { format = format === 'yaml' ? 'json' : 'yaml'; paintManifest(); });
  const ready = (await api('/readyz', { signal: ctx.signal })).data;
  let lastJson = '';
  const refresh = async () => {
    const a = await fetchResource(plural, ns, name, ctx.signal);
    if (!ctx.alive) return;
    if (!a.ok) {
      if (a.status !== 401 && !a.aborted) clear(meta, h('p', { class: 'error', 'data-test': 'detail-error' }, a.error));
      return;
    }
    plural = a.plural;
    res = a.data;
    const o = owner(res);
    const links = [];
    const trigger = deliveryTrigger(plural, name);
    if (trigger) links.push(h('a', { href: `#/deadletters/${enc(ns)}/${enc(trigger)}`, 'data-test': 'detail-deadletters' }, 'Dead letters'));
    const address = addressOf(plural, name);
    if (address && plural !== 'pingsources') {
      links.push(h('a', { href: `#/tail/${enc(ns)}/${enc(address)}`, 'data-test': 'detail-tail' }, 'Live tail'));
      links.push(h('a', { href: '#/types' }, 'Event types'));
    }
    clear(meta, h('p', {}, readyBadge(res, 'detail-ready'), ' ',
      h('span', { 'data-test': 'detail-owner', 'data-owner': o.kind },
        o.kind === 'file' ? ['Defined in the file ', h('code', {}, o.file), ' (edit it there; the API refuses changes)']
          : o.kind === 'api' ? 'Applied through the admin API (stored in the data dir)' : `Owner: ${o.text}`),
      res.metadata?.creationTimestamp ? ` · created ${fmtTime(res.metadata.creationTimestamp)}` : '',
      res.metadata?.generation ? ` · generation ${res.metadata.generation}` : ''),
    links.length ? h('p', { class: 'links' }, links) : null);
    const p = problemsOf(res, kindOf(plural), ready);
    clear(problems, p.length
      ? [h('h2', {}, 'Problems'), h('ul', { class: 'problems' }, p.map((x) => h('li', { 'data-test': 'detail-problem' }, x)))]
      : null);
    clear(conditions, conditionsTable(res));
    clear(live, res.status?.stats ? [h('h2', {}, 'Counters'), statsGrid(res.status.stats)] : null);
    const json = JSON.stringify(res.spec) + JSON.stringify(res.status);
    if (json !== lastJson) { lastJson = json; paintManifest(); }
    await stats.fetch();
    if (!ctx.alive) return;
    const ts = trigger && stats.trigger(ns, trigger);
    const bs = address && stats.broker(ns, address);
    const parts = [];
    if (bs) parts.push(...brokerCharts(bs));
    if (ts) parts.push(...triggerCharts(ts));
    clear(charts, parts.length ? [h('h2', {}, 'Live'), h('div', { class: 'chart-grid' }, parts)]
      : (trigger || address) && stats.unavailable ? h('p', { class: 'muted small' }, `Live charts unavailable: ${stats.unavailable}.`) : null);
  };
  await refresh();
  ctx.every(2000, refresh);
}

export function render(root, route, ctx) {
  return route.parts.length >= 3 ? renderDetail(root, route, ctx) : renderList(root, route, ctx);
}

// Topology: every resource as a graph, events flowing left to right: sources →
// brokers and channels → triggers and subscriptions → flows → subscribers. Nodes
// are coloured by readiness and carry live rates from GET /v1/stats.

import {
  h, clear, tid, listAll, readiness, stats, last, fmtRate, fmtNum,
  pluralOf, deliveryTrigger, addressOf,
} from './lib.js';
import { sparkPoints } from './charts.js';

const PLURALS = ['pingsources', 'containersources', 'kafkasources', 'sinkbindings',
  'brokers', 'channels', 'inmemorychannels', 'kafkachannels',
  'triggers', 'subscriptions', 'sequences', 'parallels'];
const COLUMN = {
  pingsources: 0, containersources: 0, kafkasources: 0, sinkbindings: 0,
  brokers: 1, channels: 1, inmemorychannels: 1, kafkachannels: 1,
  triggers: 2, subscriptions: 2, sequences: 3, parallels: 3,
};
const COLUMN_TITLES = ['Sources', 'Brokers & channels', 'Triggers & subscriptions', 'Flows', 'Subscribers'];
const KIND_LABEL = {
  pingsources: 'PingSource', containersources: 'ContainerSource', kafkasources: 'KafkaSource',
  sinkbindings: 'SinkBinding', brokers: 'Broker', channels: 'Channel', inmemorychannels: 'InMemoryChannel',
  kafkachannels: 'KafkaChannel', triggers: 'Trigger', subscriptions: 'Subscription',
  sequences: 'Sequence', parallels: 'Parallel',
};
const NODE_W = 210;
const NODE_H = 62;
const GAP_X = 70;
const GAP_Y = 14;
const TOP = 34;

/** Nodes and edges of the resources: {nodes: Map(id → node), edges: [{from, to, cls, label}]}. */
export function buildGraph(lists) {
  const nodes = new Map();
  const edges = [];
  const byUrl = new Map();
  for (const plural of PLURALS) {
    for (const r of lists[plural] || []) {
      const ns = r.metadata?.namespace || 'default';
      const name = r.metadata?.name;
      const id = `${plural}:${ns}/${name}`;
      nodes.set(id, { id, plural, ns, name, col: COLUMN[plural], res: r, ready: readiness(r).status });
      if (r.status?.address?.url) byUrl.set(r.status.address.url, id);
    }
  }
  const leaf = (label, title) => {
    const id = `leaf:${label}`;
    if (!nodes.has(id)) nodes.set(id, { id, leaf: true, col: 4, name: label, title });
    return id;
  };
  // Where a destination ({ref} or {uri}) points: a node of the graph, else a leaf.
  const resolve = (dest, ns) => {
    if (!dest || typeof dest !== 'object') return null;
    const ref = dest.ref;
    if (ref && ref.name) {
      const plural = pluralOf(ref.kind);
      const id = `${plural}:${ref.namespace || ns}/${ref.name}`;
      if (plural && nodes.has(id)) return id;
      return leaf(`${ref.kind || 'ref'}/${ref.name}${dest.uri ? ` ${dest.uri}` : ''}`, `${ref.apiVersion || ''} ${ref.kind} ${ref.namespace || ns}/${ref.name}`);
    }
    if (dest.uri) return byUrl.get(dest.uri) || leaf(dest.uri, dest.uri);
    return null;
  };
  const edge = (from, to, cls = '', label = '') => { if (from && to) edges.push({ from, to, cls, label }); };
  for (const n of [...nodes.values()]) {
    const { spec = {} } = n.res;
    switch (n.plural) {
      case 'triggers': {
        const b = `brokers:${n.ns}/${spec.broker}`;
        if (!nodes.has(b)) nodes.set(b, { id: b, missing: true, plural: 'brokers', ns: n.ns, name: spec.broker || '?', col: 1, ready: 'False' });
        edge(b, n.id);
        edge(n.id, resolve(spec.subscriber, n.ns));
        edge(n.id, resolve(spec.delivery?.deadLetterSink, n.ns), 'dls', 'dead letters');
        break;
      }
      case 'subscriptions': {
        const ch = spec.channel || {};
        const c = `${pluralOf(ch.kind) || 'channels'}:${n.ns}/${ch.name}`;
        if (!nodes.has(c)) nodes.set(c, { id: c, missing: true, plural: pluralOf(ch.kind) || 'channels', ns: n.ns, name: ch.name || '?', col: 1, ready: 'False' });
        edge(c, n.id);
        edge(n.id, resolve(spec.subscriber, n.ns));
        edge(n.id, resolve(spec.reply, n.ns), 'reply', 'reply');
        edge(n.id, resolve(spec.delivery?.deadLetterSink, n.ns), 'dls', 'dead letters');
        break;
      }
      case 'sequences':
        (spec.steps || []).forEach((s, i) => edge(n.id, resolve(s, n.ns), '', `step ${i + 1}`));
        edge(n.id, resolve(spec.reply, n.ns), 'reply', 'reply');
        break;
      case 'parallels':
        (spec.branches || []).forEach((b, i) => {
          edge(n.id, resolve(b.filter, n.ns), '', `filter ${i + 1}`);
          edge(n.id, resolve(b.subscriber, n.ns), '', `branch ${i + 1}`);
          edge(n.id, resolve(b.reply, n.ns), 'reply', 'reply');
        });
        edge(n.id, resolve(spec.reply, n.ns), 'reply', 'reply');
        break;
      case undefined: break;
      default:
        if (COLUMN[n.plural] === 0) edge(n.id, resolve(spec.sink, n.ns));
    }
  }
  return { nodes, edges };
}

/** Columns (empty ones dropped) with rows ordered to keep edges short. */
function layout(graph) {
  const cols = [0, 1, 2, 3, 4].map((c) => [...graph.nodes.values()].filter((n) => n.col === c)
    .sort((a, b) => `${a.ns}/${a.name}`.localeCompare(`${b.ns}/${b.name}`)));
  const pos = new Map();
  const rank = () => cols.forEach((col) => col.forEach((n, i) => pos.set(n.id, i)));
  rank();
  const mean = (ids) => (ids.length ? ids.reduce((s, id) => s + pos.get(id), 0) / ids.length : 1e9);
  for (let c = 1; c < 5; c += 1) {
    const preds = (n) => graph.edges.filter((e) => e.to === n.id && graph.nodes.get(e.from).col < c).map((e) => e.from);
    cols[c].sort((a, b) => mean(preds(a)) - mean(preds(b)));
    rank();
  }
  cols[0].sort((a, b) => mean(graph.edges.filter((e) => e.from === a.id).map((e) => e.to))
    - mean(graph.edges.filter((e) => e.from === b.id).map((e) => e.to)));
  const used = cols.map((col, c) => ({ col, c })).filter((x) => x.col.length);
  const rows = Math.max(1, ...used.map((x) => x.col.length));
  used.forEach(({ col }, i) => {
    const offset = ((rows - col.length) * (NODE_H + GAP_Y)) / 2;
    col.forEach((n, r) => { n.x = 16 + i * (NODE_W + GAP_X); n.y = TOP + offset + r * (NODE_H + GAP_Y); });
  });
  return {
    titles: used.map(({ c }, i) => ({ text: COLUMN_TITLES[c], x: 16 + i * (NODE_W + GAP_X) })),
    width: 32 + used.length * NODE_W + (used.length - 1) * GAP_X,
    height: TOP + rows * (NODE_H + GAP_Y) + 40,
  };
}

/** A forward edge is a curve; one back to an earlier column (a reply into a broker)
 * runs along its own lane under every node. */
function edgePath(a, b, lane) {
  const [x1, y1, x2, y2] = [a.x + NODE_W, a.y + NODE_H / 2, b.x, b.y + NODE_H / 2];
  if (x2 > x1) {
    const dx = (x2 - x1) / 2;
    return `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`;
  }
  const [r, o] = [10, 28];
  return `M${x1},${y1} L${x1 + o - r},${y1} Q${x1 + o},${y1} ${x1 + o},${y1 + r} L${x1 + o},${lane - r} `
    + `Q${x1 + o},${lane} ${x1 + o - r},${lane} L${x2 - o + r},${lane} Q${x2 - o},${lane} ${x2 - o},${lane - r} `
    + `L${x2 - o},${y2 + r} Q${x2 - o},${y2} ${x2 - o + r},${y2} L${x2},${y2}`;
}

const short = (s, n = 28) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

function nodeElement(n) {
  const kind = n.leaf ? 'subscriber' : KIND_LABEL[n.plural].toLowerCase();
  const test = n.leaf ? tid('node', 'subscriber', n.name) : tid('node', kind, n.ns, n.name);
  const ready = n.leaf ? 'leaf' : `ready-${(n.ready || 'Unknown').toLowerCase()}`;
  const rate = h('text', { x: 14, y: 52, class: 'rate', 'data-test': test.replace(/^node/, 'rate') });
  const spark = h('polyline', { class: 'spark', transform: `translate(${NODE_W - 66},6)` });
  const label = n.leaf ? n.name : `${KIND_LABEL[n.plural]} ${n.ns}/${n.name}${n.missing ? ' (not defined)' : ''}`;
  const g = h('g', {
    class: `node ${ready}${n.missing ? ' missing' : ''}`, transform: `translate(${n.x},${n.y})`,
    'data-test': test, 'data-kind': kind, 'data-ns': n.ns, 'data-name': n.name, 'data-ready': n.ready || '',
  },
  h('title', {}, n.leaf ? (n.title || n.name) : `${label}: ${n.missing ? 'not defined' : readiness(n.res).message || readiness(n.res).reason || n.ready}`),
  h('rect', { class: 'box', width: NODE_W, height: NODE_H, rx: 8 }),
  h('rect', { class: 'stripe', width: 5, height: NODE_H, rx: 2 }),
  h('text', { x: 14, y: 17, class: 'kind' }, n.leaf ? 'subscriber' : `${KIND_LABEL[n.plural]}${n.ns !== 'default' ? ` · ${n.ns}` : ''}`),
  h('text', { x: 14, y: 35, class: 'name' }, short(n.leaf ? n.name.replace(/^https?:\/\//, '') : n.name, 24)),
  rate, spark);
  if (!n.leaf && !n.missing) {
    const open = () => { location.hash = `#/resources/${n.plural}/${encodeURIComponent(n.ns)}/${encodeURIComponent(n.name)}`; };
    g.setAttribute('tabindex', '0');
    g.setAttribute('role', 'link');
    g.setAttribute('aria-label', `${label}, ${n.ready === 'True' ? 'ready' : n.ready === 'False' ? 'not ready' : 'readiness unknown'}`);
    g.addEventListener('click', open);
    g.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); open(); } });
  }
  n.el = { g, rate, spark };
  return g;
}

/** The live numbers on a node: events in for addresses, deliveries for triggers. */
function updateNode(n) {
  if (n.missing && n.el) n.el.rate.textContent = 'not defined';
  if (n.leaf || n.missing || !n.el) return;
  const { g, rate, spark } = n.el;
  const address = addressOf(n.plural, n.name);
  const trigger = deliveryTrigger(n.plural, n.name);
  let text = '';
  let series = null;
  if (trigger && (stats.trigger(n.ns, trigger) || n.res.status?.stats)) {
    const s = stats.trigger(n.ns, trigger);
    const delivered = s ? s.delivered : n.res.status.stats.delivered;
    const dead = s ? s.deadLettered : n.res.status.stats.deadLettered;
    text = `${s ? `${fmtRate(last(s.deliveredRate))}/s · ` : ''}${fmtNum(delivered)} delivered${dead ? ` · ${fmtNum(dead)} dead` : ''}`;
    g.dataset.total = delivered ?? '';
    g.dataset.rate = s ? last(s.deliveredRate) ?? '' : '';
    series = s?.deliveredRate;
  } else if (address && n.plural !== 'pingsources' && stats.broker(n.ns, address)) {
    const b = stats.broker(n.ns, address);
    text = `in ${fmtRate(last(b.inRate))}/s · ${fmtNum(b.accepted)} accepted`;
    g.dataset.total = b.accepted;
    g.dataset.rate = last(b.inRate) ?? '';
    series = b.inRate;
  } else {
    const r = readiness(n.res);
    text = r.status === 'True' ? '' : r.reason;
    if (n.plural === 'sequences') text = `${(n.res.spec?.steps || []).length} steps`;
    if (n.plural === 'parallels') text = `${(n.res.spec?.branches || []).length} branches`;
    if (n.plural === 'sinkbindings') text = `binds ${n.res.spec?.subject?.kind || '?'}`;
    if (r.status === 'False') text = r.reason;
  }
  rate.textContent = short(text, 34);
  spark.setAttribute('points', series ? sparkPoints(series, 56, 18) : '');
}

function draw(graph) {
  const box = layout(graph);
  const back = graph.edges.filter((e) => graph.nodes.get(e.to).x <= graph.nodes.get(e.from).x);
  const bottom = Math.max(...[...graph.nodes.values()].map((n) => n.y + NODE_H));
  box.height = Math.max(box.height, bottom + 24 + back.length * 8);
  const svg = h('svg', {
    class: 'graph', width: box.width, height: box.height, viewBox: `0 0 ${box.width} ${box.height}`,
    role: 'group', 'aria-label': 'Topology graph', 'data-test': 'topology-graph',
  });
  svg.append(h('defs', {}, h('marker', {
    id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse',
  }, h('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }))));
  for (const t of box.titles) svg.append(h('text', { x: t.x, y: 18, class: 'col-title' }, t.text));
  for (const e of graph.edges) {
    const a = graph.nodes.get(e.from);
    const b = graph.nodes.get(e.to);
    svg.append(h('path', { d: edgePath(a, b, bottom + 16 + back.indexOf(e) * 8), class: `edge ${e.cls}`, 'marker-end': 'url(#arrow)' },
      h('title', {}, `${a.name} → ${b.name}${e.label ? ` (${e.label})` : ''}`)));
  }
  for (const n of graph.nodes.values()) svg.append(nodeElement(n));
  return svg;
}

/** A string that changes only when the drawing must (not on counters). */
function shape(lists) {
  return JSON.stringify(PLURALS.map((p) => (lists[p] || []).map((r) => [r.metadata?.namespace, r.metadata?.name, r.spec, readiness(r).status])));
}

export async function render(root, route, ctx) {
  const wrap = h('div', { class: 'graph-wrap', 'data-test': 'topology' }, h('p', { class: 'muted' }, 'Loading…'));
  const note = h('p', { class: 'muted small', 'data-test': 'topology-note' });
  root.append(
    h('div', { class: 'view-head' }, h('h1', {}, 'Topology'),
      h('div', { class: 'legend' }, h('span', { class: 'badge ready-true' }, 'Ready'),
        h('span', { class: 'badge ready-false' }, 'Not ready'), h('span', { class: 'badge ready-unknown' }, 'Unknown'))),
    wrap, note,
  );
  let graph = null;
  let drawn = '';
  let tick = 0;
  const refresh = async () => {
    if (tick % 3 === 0 || !graph) {
      const lists = await listAll(PLURALS, ctx.signal);
      if (!ctx.alive) return;
      if (lists.error) {
        if (lists.status !== 401) ctx.error(`Cannot list resources: ${lists.error}`);
        return;
      }
      ctx.clearBanner();
      const s = shape(lists);
      const fresh = buildGraph(lists);
      if (s !== drawn || !graph) {
        drawn = s;
        graph = fresh;
        clear(wrap, graph.nodes.size ? draw(graph) : h('p', { class: 'muted', 'data-test': 'topology-empty' },
          'No resources yet: add manifests to the config dir or apply them through the API.'));
      } else {
        // Same shape: keep the drawing, give its nodes their fresh resources.
        fresh.nodes.forEach((n) => { const d = graph.nodes.get(n.id); if (d) d.res = n.res; });
      }
    }
    tick += 1;
    await stats.fetch();
    if (!ctx.alive || !graph) return;
    graph.nodes.forEach(updateNode);
    note.textContent = stats.unavailable ? `Live rates unavailable: ${stats.unavailable}.` : 'Rates: last 2 s; counters since start. Click a node for its details.';
  };
  await refresh();
  ctx.every(2000, refresh);
}

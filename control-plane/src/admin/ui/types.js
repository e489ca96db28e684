// Event types: what each broker and channel has seen (discovered by the ingress) and
// the EventType resources declared in manifests, from GET /v1/eventtypes.

import { h, clear, tid, api, enc, fmtTime, fmtNum, owner, addressOf, pluralOf } from './lib.js';

function groupKey(t) {
  const ref = t.spec?.reference || {};
  return `${t.metadata?.namespace || 'default'}\u0000${ref.kind || '?'}\u0000${ref.name || '?'}`;
}

function tailLink(ns, ref, type) {
  const address = addressOf(pluralOf(ref.kind) || '', ref.name || '');
  if (!address || type.includes("'")) return '';
  return h('a', { href: `#/tail/${enc(ns)}/${enc(address)}?filter=${enc(`type = '${type}'`)}`, 'data-test': 'type-tail' }, 'tail');
}

export async function render(root, route, ctx) {
  const body = h('div', { 'data-test': 'types' }, h('p', { class: 'muted' }, 'Loading…'));
  root.append(h('div', { class: 'view-head' }, h('h1', {}, 'Event types')),
    h('p', { class: 'muted small' }, 'Every (type, source) pair a broker or channel accepted, with counts, and the EventTypes declared in manifests.'),
    body);
  const refresh = async () => {
    const a = await api('/v1/eventtypes', { signal: ctx.signal });
    if (!ctx.alive) return;
    if (!a.ok) {
      if (a.status !== 401 && !a.aborted) clear(body, h('p', { class: 'error' }, a.error));
      return;
    }
    const groups = new Map();
    for (const t of a.data.items || []) {
      const k = groupKey(t);
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k).push(t);
    }
    if (!groups.size) {
      clear(body, h('p', { class: 'muted', 'data-test': 'types-empty' }, 'No event seen yet.'));
      return;
    }
    clear(body, [...groups.entries()].sort(([x], [y]) => x.localeCompare(y)).map(([k, items]) => {
      const [ns, kind, name] = k.split('\u0000');
      const ref = { kind, name };
      items.sort((x, y) => (x.spec?.type || '').localeCompare(y.spec?.type || ''));
      return h('section', { class: 'kind', 'data-test': tid('types-group', ns, name) },
        h('h2', {}, `${kind} ${ns}/${name} `, h('span', { class: 'count' }, String(items.length))),
        h('div', { class: 'table-scroll' }, h('table', {},
          h('thead', {}, h('tr', {}, ['Type', 'Source', 'Count', 'First seen', 'Last seen', 'Schema', 'Origin', ''].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, items.map((t) => h('tr', { 'data-test': 'type-row', 'data-type': t.spec?.type || '' },
            h('td', {}, t.spec?.type || ''), h('td', { class: 'wrap' }, t.spec?.source || '*'),
            h('td', {}, fmtNum(t.status?.count)), h('td', {}, fmtTime(t.status?.firstSeen)),
            h('td', {}, fmtTime(t.status?.lastSeen)), h('td', { class: 'wrap' }, t.spec?.schema || ''),
            h('td', {}, owner(t).kind === 'discovered' ? 'discovered' : 'declared'),
            h('td', {}, tailLink(ns, ref, t.spec?.type || ''))))))));
    }));
  };
  await refresh();
  ctx.every(5000, refresh);
}

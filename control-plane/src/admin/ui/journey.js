// Event journey: where an event went, from GET .../brokers/{name}/journey/{id}: when
// and how it was accepted, each trigger (matched or filtered out), every attempt,
// the replies (followed by clicking) and how it ended. Refreshed while waiting.

import { h, clear, api, enc, listAll, fmtTime, addressOf } from './lib.js';

const OUTCOME = { delivered: 'delivered', 'dead-lettered': 'dead-lettered', waiting: 'waiting' };

function journeyHref(ns, broker, id, source) {
  return `#/journey/${enc(ns)}/${enc(broker)}/${enc(id)}${source ? `?source=${enc(source)}` : ''}`;
}

function attemptRows(attempts) {
  return h('div', { class: 'table-scroll' }, h('table', { class: 'compact', 'data-test': 'journey-attempts' },
    h('thead', {}, h('tr', {}, ['At', 'Destination', 'Status', 'Latency', 'Error'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, attempts.map((a) => h('tr', {
      'data-test': 'journey-attempt', 'data-status': a.status ?? '',
      class: a.status && a.status < 300 ? 'good' : 'bad',
    },
    h('td', {}, fmtTime(a.at)), h('td', { class: 'wrap' }, a.destination || ''),
    h('td', {}, a.status ?? 'no answer'), h('td', {}, a.latencyMs !== undefined && a.latencyMs !== null ? `${a.latencyMs} ms` : '–'),
    h('td', { class: 'wrap' }, a.error || ''))))));
}

function triggerItem(t, ns) {
  const [tns, tname] = (t.trigger || '').includes('/') ? t.trigger.split('/') : [ns, t.trigger];
  const attrs = { 'data-test': 'journey-trigger', 'data-trigger': t.trigger, 'data-matched': String(!!t.matched) };
  if (!t.matched) {
    return h('li', { ...attrs, class: 'step skipped' }, h('div', { class: 'step-head' },
      h('span', {}, `Trigger ${t.trigger}`), h('span', { class: 'badge ready-unknown' }, 'filtered out')));
  }
  const outcome = OUTCOME[t.outcome] || t.outcome || 'waiting';
  const cls = outcome === 'delivered' ? 'ready-true' : outcome === 'dead-lettered' ? 'ready-false' : 'waiting';
  return h('li', { ...attrs, 'data-outcome': outcome, class: `step ${cls}` },
    h('div', { class: 'step-head' },
      h('a', { href: `#/deadletters/${enc(tns)}/${enc(tname)}`, class: 'plain', title: 'its dead letters' }, `Trigger ${t.trigger}`),
      h('span', { class: `badge ${cls}`, 'data-test': 'journey-outcome' }, outcome)),
    t.reason ? h('p', { class: 'reason' }, t.reason) : null,
    t.deadLetter !== undefined && t.deadLetter !== null
      ? h('p', {}, 'Stored as ', h('a', { href: `#/deadletters/${enc(tns)}/${enc(tname)}`, 'data-test': 'journey-deadletter' }, `dead letter ${t.deadLetter}`), ' (redrive it from there).')
      : null,
    (t.attempts || []).length ? attemptRows(t.attempts) : h('p', { class: 'muted small' }, 'No attempt yet.'),
    (t.replies || []).length ? h('ul', { class: 'replies' }, t.replies.map((r) => {
      const [rns, rname] = (r.broker || '').includes('/') ? r.broker.split('/') : [ns, r.broker];
      return h('li', {}, 'Reply ', h('a', { href: journeyHref(rns, rname, r.id, r.source), 'data-test': 'journey-reply', 'data-id': r.id }, r.id),
        ` (${r.type || '?'}) into ${r.broker}`);
    })) : null);
}

function renderJourney(j, ns) {
  return [
    h('dl', { class: 'kv card', 'data-test': 'journey-summary' },
      h('dt', {}, 'Event'), h('dd', { 'data-test': 'journey-event-id' }, j.id),
      h('dt', {}, 'Type'), h('dd', {}, j.type || '–'),
      h('dt', {}, 'Source'), h('dd', {}, j.source || '–'),
      h('dt', {}, 'Broker'), h('dd', {}, j.broker)),
    h('ol', { class: 'timeline', 'data-test': 'journey-timeline' },
      h('li', { class: 'step accepted', 'data-test': 'journey-accepted' }, h('div', { class: 'step-head' },
        h('span', {}, j.accepted ? `Accepted ${fmtTime(j.accepted.at)}` : 'Acceptance not in the journal'),
        j.accepted ? h('span', { class: 'badge ready-true' }, `via ${j.accepted.via}`) : null)),
      (j.triggers || []).map((t) => triggerItem(t, ns))),
    j.event ? h('details', { 'data-test': 'journey-event' }, h('summary', {}, 'The event as accepted'),
      h('pre', { class: 'code' }, JSON.stringify(j.event, null, 2))) : null,
  ];
}

export async function render(root, route, ctx) {
  const [ns = 'default', broker = '', id = ''] = route.parts;
  const source = route.query.get('source') || '';
  const field = (key, label, value, extra = {}) => h('div', { class: 'field' },
    h('label', { for: `journey-${key}` }, label),
    h('input', { id: `journey-${key}`, name: key, 'data-test': `journey-${key}`, value, spellcheck: 'false', ...extra }));
  const brokers = h('datalist', { id: 'journey-brokers' });
  const form = h('form', { class: 'toolbar wrap-row', 'data-test': 'journey-form' },
    field('ns', 'Namespace', ns, { required: true }),
    field('broker', 'Broker', broker, { required: true, list: 'journey-brokers' }),
    field('id', 'Event id', id, { required: true }),
    field('source', 'Source (optional)', source),
    h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary', 'data-test': 'journey-submit' }, 'Show journey')),
    brokers);
  const result = h('div', { 'data-test': 'journey-result' });
  root.append(h('div', { class: 'view-head' }, h('h1', {}, 'Event journey')), form, result);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = (k) => form.elements[k].value.trim();
    const want = journeyHref(v('ns'), v('broker'), v('id'), v('source'));
    if (location.hash === want) load(); else location.hash = want;
  });
  listAll(['brokers', 'channels'], ctx.signal).then((lists) => {
    if (!ctx.alive) return;
    lists.brokers.forEach((b) => brokers.append(h('option', { value: b.metadata.name })));
    lists.channels.forEach((c) => brokers.append(h('option', { value: addressOf('channels', c.metadata.name) })));
  });
  if (!broker || !id) {
    result.append(h('p', { class: 'muted' }, 'Name a broker and an event id (from the live tail, a dead letter or your logs) to see where the event went.'));
    return;
  }
  let waiting = false;
  async function load() {
    const q = source ? `?source=${enc(source)}` : '';
    const a = await api(`/v1/namespaces/${enc(ns)}/brokers/${enc(broker)}/journey/${enc(id)}${q}`, { signal: ctx.signal });
    if (!ctx.alive || a.aborted) return;
    if (!a.ok) {
      if (a.status !== 401) {
        clear(result, h('p', { class: 'error', 'data-test': 'journey-error' },
          a.status === 404 && !a.data ? 'This server has no journey endpoint.' : a.error),
        h('button', { type: 'button', 'data-test': 'journey-retry', onclick: load }, 'Try again'));
      }
      return;
    }
    clear(result, renderJourney(a.data, ns));
    waiting = (a.data.triggers || []).some((t) => t.matched && (t.outcome || 'waiting') === 'waiting');
    result.dataset.waiting = String(waiting);
  }
  await load();
  ctx.every(2000, async () => { if (waiting) await load(); });
}

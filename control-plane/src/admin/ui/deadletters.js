// Dead letters: pick a trigger, page through the events it could not deliver (each
// with its reason and attempts), redrive or purge one or all, each after a
// confirmation in the page's <dialog>.

import {
  h, clear, api, enc, listAll, fmtTime, confirmDialog, deliveryTrigger, addressOf,
} from './lib.js';

const OWNERS = ['triggers', 'subscriptions', 'pingsources', 'kafkasources'];

/** Every trigger that can hold dead letters: {key: 'ns/name', count, broker}. */
async function triggerChoices(signal) {
  const lists = await listAll(OWNERS, signal);
  const out = [];
  for (const plural of OWNERS) {
    for (const r of lists[plural]) {
      const ns = r.metadata?.namespace || 'default';
      const name = deliveryTrigger(plural, r.metadata?.name);
      const broker = plural === 'triggers' ? r.spec?.broker
        : plural === 'subscriptions' ? addressOf('channels', r.spec?.channel?.name || '')
          : plural === 'pingsources' ? addressOf('pingsources', r.metadata?.name) : null;
      out.push({ key: `${ns}/${name}`, ns, name, broker, count: r.status?.stats?.deadLettersStored });
    }
  }
  return { error: lists.error, status: lists.status, items: out.sort((a, b) => a.key.localeCompare(b.key)) };
}

function attemptsTable(l) {
  return h('div', { class: 'attempts' },
    h('div', { class: 'table-scroll' }, h('table', { 'data-test': 'dl-attempts' },
      h('thead', {}, h('tr', {}, ['At', 'To', 'URL', 'Status', 'Latency', 'Error'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, (l.attempts || []).map((a) => h('tr', { 'data-test': 'dl-attempt' },
        h('td', {}, fmtTime(a.at)), h('td', {}, a.to || ''), h('td', { class: 'wrap' }, a.url || ''),
        h('td', {}, a.status ?? '–'), h('td', {}, a.latencyMs !== undefined ? `${a.latencyMs} ms` : '–'),
        h('td', { class: 'wrap' }, a.error || '')))))),
    h('details', {}, h('summary', {}, 'Event'), h('pre', { class: 'code' }, JSON.stringify(l.event, null, 2))));
}

export async function render(root, route, ctx) {
  const [ns, name] = route.parts;
  const select = h('select', { id: 'dl-trigger', 'data-test': 'dl-trigger' }, h('option', { value: '' }, 'Choose a trigger…'));
  const body = h('div', { 'data-test': 'dl-body' });
  const result = h('p', { class: 'result', 'data-test': 'dl-result', role: 'status', 'aria-live': 'polite' });
  root.append(h('div', { class: 'view-head' }, h('h1', {}, 'Dead letters'),
    h('div', { class: 'field inline' }, h('label', { for: 'dl-trigger' }, 'Trigger'), select)), result, body);
  select.addEventListener('change', () => {
    if (select.value) location.hash = `#/deadletters/${select.value.split('/').map(enc).join('/')}`;
  });
  const choices = await triggerChoices(ctx.signal);
  if (!ctx.alive) return;
  if (choices.error && choices.status !== 401) ctx.error(`Cannot list triggers: ${choices.error}`);
  for (const c of choices.items) {
    select.append(h('option', { value: c.key, selected: c.key === `${ns}/${name}` },
      `${c.key}${c.count !== undefined ? ` (${c.count})` : ''}`));
  }
  if (!ns || !name) {
    body.append(h('p', { class: 'muted' }, choices.items.length ? 'Choose a trigger to see what it could not deliver.' : 'No trigger is defined.'));
    return;
  }
  const broker = choices.items.find((c) => c.key === `${ns}/${name}`)?.broker;
  const base = `/v1/namespaces/${enc(ns)}/triggers/${enc(name)}/deadletters`;
  const total = h('span', { 'data-test': 'dl-total' });
  const tbody = h('tbody', {});
  const more = h('button', { type: 'button', 'data-test': 'dl-more', hidden: true }, 'Load more');
  const busy = (on) => root.querySelectorAll('button').forEach((b) => { b.disabled = on; });
  let next = null;

  const say = (text, kind = 'ok', extra = {}) => {
    result.className = `result ${kind}`;
    result.textContent = text;
    Object.entries(extra).forEach(([k, v]) => { result.dataset[k] = v; });
  };

  const row = (l) => {
    const expanded = h('tr', { class: 'expanded', hidden: true }, h('td', { colspan: 8 }, attemptsTable(l)));
    const toggle = h('button', { type: 'button', class: 'link', 'data-test': 'dl-expand', 'aria-expanded': 'false' },
      `${(l.attempts || []).length} attempts`);
    toggle.addEventListener('click', () => {
      expanded.hidden = !expanded.hidden;
      toggle.setAttribute('aria-expanded', String(!expanded.hidden));
    });
    const ev = l.event || {};
    const journey = broker
      ? h('a', { href: `#/journey/${enc(ns)}/${enc(broker)}/${enc(ev.id)}?source=${enc(ev.source || '')}`, 'data-test': 'dl-journey' }, ev.id)
      : ev.id;
    return [h('tr', { 'data-test': 'dl-row', 'data-id': l.id, 'data-event-id': ev.id || '' },
      h('td', {}, String(l.id)), h('td', {}, journey), h('td', {}, ev.type || ''), h('td', { class: 'wrap' }, ev.source || ''),
      h('td', { class: 'wrap' }, l.reason || ''), h('td', {}, fmtTime(l.deadAt)), h('td', {}, toggle),
      h('td', {}, h('div', { class: 'actions' },
        h('button', { type: 'button', 'data-test': 'dl-redrive', onclick: () => redrive([l]) }, 'Redrive'),
        h('button', { type: 'button', class: 'danger', 'data-test': 'dl-purge', onclick: () => purge(l) }, 'Purge')))),
    expanded];
  };

  const load = async (append = false) => {
    const a = await api(`${base}?limit=50${append && next !== null ? `&after=${next}` : ''}`, { signal: ctx.signal });
    if (!ctx.alive) return;
    if (!a.ok) {
      if (a.status !== 401 && !a.aborted) clear(body, h('p', { class: 'error', 'data-test': 'dl-error' }, a.error));
      return;
    }
    next = a.data.next ?? null;
    total.textContent = `${a.data.total} dead letter${a.data.total === 1 ? '' : 's'}`;
    total.dataset.total = a.data.total;
    if (!append) clear(tbody);
    a.data.items.forEach((l) => tbody.append(...row(l)));
    more.hidden = next === null;
    if (!a.data.total) clear(tbody, h('tr', {}, h('td', { colspan: 8, class: 'muted', 'data-test': 'dl-empty' }, 'No dead letters.')));
  };

  async function redrive(letters) {
    const all = !letters;
    const text = all ? `Redrive every dead letter of ${ns}/${name}? Each goes through the trigger's delivery again.`
      : `Redrive dead letter ${letters[0].id} (event ${letters[0].event?.id}) of ${ns}/${name} to its subscriber?`;
    if (!(await confirmDialog(text, 'Redrive'))) return;
    busy(true);
    say(all ? 'Redriving…' : `Redriving dead letter ${letters[0].id}…`, 'pending');
    const a = await api(`${base}:redrive${all ? '' : '?wait=true'}`, { method: 'POST', body: all ? { all: true } : { ids: letters.map((l) => l.id) } });
    busy(false);
    if (!ctx.alive) return;
    if (!a.ok) say(`Redrive failed: ${a.error}`, 'bad', { outcome: 'error' });
    else if (all) say(`Redriving ${a.data.redriving} dead letters in the background.`, 'ok', { outcome: 'started' });
    else {
      const r = a.data.results?.[0] || {};
      const how = { delivered: `delivered to ${r.to}`, deadLetterSink: `failed again, sent to the dead-letter sink ${r.to}`,
        deadLetters: `failed again, stored as dead letter ${r.deadLetter}`, interrupted: 'interrupted by shutdown; the letter stays' }[r.outcome] || r.outcome;
      say(`Dead letter ${r.id} (event ${r.eventId}): ${how}.`, r.outcome === 'delivered' ? 'ok' : 'bad', { outcome: r.outcome, eventId: r.eventId });
    }
    await load();
  }

  async function purge(letter) {
    const text = letter ? `Delete dead letter ${letter.id} (event ${letter.event?.id}) of ${ns}/${name}? It cannot be redriven afterwards.`
      : `Delete every dead letter of ${ns}/${name}? They cannot be redriven afterwards.`;
    if (!(await confirmDialog(text, 'Delete'))) return;
    busy(true);
    const a = await api(letter ? `${base}/${letter.id}` : base, { method: 'DELETE' });
    busy(false);
    if (!ctx.alive) return;
    if (!a.ok) say(`Purge failed: ${a.error}`, 'bad', { outcome: 'error' });
    else say(`Deleted ${a.data.deleted} dead letter${a.data.deleted === 1 ? '' : 's'}.`, 'ok', { outcome: 'deleted' });
    await load();
  }

  more.addEventListener('click', () => load(true));
  body.append(
    h('div', { class: 'toolbar' }, total,
      h('button', { type: 'button', 'data-test': 'dl-refresh', onclick: () => load() }, 'Refresh'),
      h('button', { type: 'button', 'data-test': 'dl-redrive-all', onclick: () => redrive(null) }, 'Redrive all'),
      h('button', { type: 'button', class: 'danger', 'data-test': 'dl-purge-all', onclick: () => purge(null) }, 'Purge all')),
    h('div', { class: 'table-scroll' }, h('table', { 'data-test': 'dl-table' },
      h('thead', {}, h('tr', {}, ['Id', 'Event id', 'Type', 'Source', 'Reason', 'Dead since', 'Attempts', ''].map((c) => h('th', { scope: 'col' }, c)))),
      tbody)),
    more);
  await load();
}

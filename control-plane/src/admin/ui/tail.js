// Live tail: the events entering a broker, read from its server-sent-events stream
// with fetch (so the token goes in a header, never the URL), with an optional CESQL
// filter; pausable. Clicking an event opens its journey.

import { h, clear, enc, listAll, openStream, fmtTime, addressOf } from './lib.js';

const MAX_ROWS = 500;

/** Feeds text chunks, calls onEvent({event, data, id}) per complete SSE message. */
export function sseParser(onEvent) {
  let buf = '';
  let msg = { event: '', data: [], id: '' };
  const line = (l) => {
    if (l === '') {
      if (msg.data.length) onEvent({ event: msg.event || 'message', data: msg.data.join('\n'), id: msg.id });
      msg = { event: '', data: [], id: '' };
      return;
    }
    if (l.startsWith(':')) return;
    const i = l.indexOf(':');
    const field = i < 0 ? l : l.slice(0, i);
    let value = i < 0 ? '' : l.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') msg.data.push(value);
    else if (field === 'event') msg.event = value;
    else if (field === 'id') msg.id = value;
  };
  return (chunk) => {
    buf += chunk;
    const lines = buf.split(/\r\n|\r|\n/);
    buf = lines.pop();
    lines.forEach(line);
  };
}

export async function render(root, route, ctx) {
  const [ns, name] = route.parts;
  const select = h('select', { id: 'tail-broker', 'data-test': 'tail-broker' }, h('option', { value: '' }, 'Choose a broker…'));
  const filter = h('input', {
    id: 'tail-filter', type: 'text', 'data-test': 'tail-filter', spellcheck: 'false',
    placeholder: "type LIKE 'com.example.%'", value: route.query.get('filter') || '',
  });
  const start = h('button', { type: 'submit', class: 'primary', 'data-test': 'tail-start' }, 'Start');
  const pause = h('button', { type: 'button', 'data-test': 'tail-pause', disabled: true }, 'Pause');
  const clearBtn = h('button', { type: 'button', 'data-test': 'tail-clear' }, 'Clear');
  const status = h('p', { class: 'muted', 'data-test': 'tail-status', role: 'status', 'aria-live': 'polite' }, 'Not started.');
  const tbody = h('tbody', {});
  const form = h('form', { class: 'toolbar wrap-row' },
    h('div', { class: 'field' }, h('label', { for: 'tail-broker' }, 'Broker or channel'), select),
    h('div', { class: 'field grow' }, h('label', { for: 'tail-filter' }, 'CESQL filter (optional)'), filter),
    h('div', { class: 'buttons' }, start, pause, clearBtn));
  root.append(h('div', { class: 'view-head' }, h('h1', {}, 'Live tail')), form, status,
    h('div', { class: 'table-scroll' }, h('table', { 'data-test': 'tail-table' },
      h('thead', {}, h('tr', {}, ['Time', 'Id', 'Type', 'Source', 'Subject'].map((c) => h('th', { scope: 'col' }, c)))), tbody)));

  const lists = await listAll(['brokers', 'channels', 'inmemorychannels', 'kafkachannels'], ctx.signal);
  if (!ctx.alive) return;
  for (const [plural, label] of [['brokers', 'broker'], ['channels', 'channel'], ['inmemorychannels', 'channel'], ['kafkachannels', 'channel']]) {
    for (const r of lists[plural]) {
      const key = `${r.metadata.namespace}/${addressOf(plural, r.metadata.name)}`;
      select.append(h('option', { value: key, selected: key === `${ns}/${name}` }, `${r.metadata.namespace}/${r.metadata.name} (${label})`));
    }
  }
  if (ns && name && !select.value) select.append(h('option', { value: `${ns}/${name}`, selected: true }, `${ns}/${name}`));

  let running = null; // AbortController of the stream
  let paused = false;
  let held = [];
  let seen = 0;

  const addRow = (ev) => {
    const href = `#/journey/${enc(ns)}/${enc(name)}/${enc(ev.id)}?source=${enc(ev.source || '')}`;
    const tr = h('tr', { class: 'clickable', 'data-test': 'tail-row', 'data-id': ev.id, title: 'Open its journey' },
      h('td', {}, fmtTime(ev.time || ev.knativearrivaltime)),
      h('td', {}, h('a', { href, 'data-test': 'tail-journey' }, ev.id)),
      h('td', {}, ev.type), h('td', { class: 'wrap' }, ev.source), h('td', {}, ev.subject || ''));
    tr.addEventListener('click', (e) => { if (e.target.tagName !== 'A') location.hash = href; });
    tbody.prepend(tr);
    while (tbody.children.length > MAX_ROWS) tbody.lastChild.remove();
  };
  const setStatus = (text, kind = '') => { status.className = kind || 'muted'; status.textContent = text; };
  const counts = () => `${seen} event${seen === 1 ? '' : 's'}`;

  const stop = (why) => {
    if (running) running.abort();
    running = null;
    start.textContent = 'Start';
    pause.disabled = true;
    if (why) setStatus(why);
  };

  const run = async () => {
    const controller = new AbortController();
    ctx.signal.addEventListener('abort', () => controller.abort(), { once: true });
    running = controller;
    start.textContent = 'Stop';
    pause.disabled = false;
    setStatus(`Connecting to ${ns}/${name}…`);
    const f = filter.value.trim();
    const s = await openStream(`/v1/namespaces/${enc(ns)}/brokers/${enc(name)}/events${f ? `?filter=${enc(f)}` : ''}`, controller.signal);
    if (running !== controller) return;
    if (!s.ok) { stop(); if (!s.aborted && s.status !== 401) setStatus(`Cannot tail: ${s.error}`, 'error'); return; }
    setStatus(`Live: ${ns}/${name}${f ? ` where ${f}` : ''}. ${counts()}.`, 'live');
    status.dataset.state = 'live';
    const decoder = new TextDecoder();
    const feed = sseParser((m) => {
      if (m.event === 'dropped') { setStatus(`Fell behind: the server dropped ${m.data} events.`, 'warn'); return; }
      let ev;
      try { ev = JSON.parse(m.data); } catch { return; }
      seen += 1;
      if (paused) { held.push(ev); if (held.length > MAX_ROWS) held.shift(); setStatus(`Paused: ${held.length} new events held.`, 'warn'); } else { addRow(ev); setStatus(`Live: ${ns}/${name}${f ? ` where ${f}` : ''}. ${counts()}.`, 'live'); }
    });
    try {
      for (;;) {
        const { value, done } = await s.reader.read();
        if (done) break;
        feed(decoder.decode(value, { stream: true }));
      }
      if (running === controller) stop('The server ended the stream.');
    } catch (e) {
      if (running === controller && ctx.alive) stop(`The stream broke: ${e.message}`);
    }
    delete status.dataset.state;
  };

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (running) { stop(`Stopped. ${counts()}.`); return; }
    if (!select.value) { setStatus('Choose a broker first.', 'error'); return; }
    const f = filter.value.trim();
    const want = `#/tail/${select.value.split('/').map(enc).join('/')}${f ? `?filter=${enc(f)}` : ''}`;
    if (location.hash !== want) location.hash = want; // re-renders and starts
    else run();
  });
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.setAttribute('aria-pressed', String(paused));
    if (!paused) { held.forEach(addRow); held = []; setStatus(`Live: ${ns}/${name}. ${counts()}.`, 'live'); }
  });
  clearBtn.addEventListener('click', () => { clear(tbody); seen = 0; });
  if (ns && name) run();
}

// Metrics: every running broker and trigger with its live numbers and a sparkline,
// from GET /v1/stats (refreshed every 2 s); each links to its resource's charts.

import { h, clear, tid, stats, last, fmtRate, fmtNum, enc } from './lib.js';
import { sparkline, errorRatio } from './charts.js';

/** The resource a stats series belongs to: [plural, name], or null for internal ones. */
export function resourceOfBroker(name) {
  if (name.endsWith('-kn-channel')) return ['channels', name.slice(0, -'-kn-channel'.length)];
  if (name.endsWith('-kn-pingsource')) return ['pingsources', name.slice(0, -'-kn-pingsource'.length)];
  if (name.includes('-kn-')) return null;
  return ['brokers', name];
}
export function resourceOfTrigger(name) {
  if (name.startsWith('subscription.')) return ['subscriptions', name.slice('subscription.'.length)];
  if (name.startsWith('pingsource.')) return ['pingsources', name.slice('pingsource.'.length)];
  const kafka = /^kafkasource\.(.+)\.\d+$/.exec(name);
  if (kafka) return ['kafkasources', kafka[1]];
  return ['triggers', name];
}

const link = (ns, res, text) => (res
  ? h('a', { href: `#/resources/${res[0]}/${enc(ns)}/${enc(res[1])}` }, text)
  : h('span', {}, text));

const stat = (label, value, test) => h('div', { class: 'stat' }, h('span', { class: 'label' }, label),
  h('span', { class: 'value', 'data-test': test }, value));

function brokerCard(b) {
  const test = tid('metric', 'broker', b.namespace, b.name);
  return h('article', { class: 'card metric', 'data-test': test, 'data-total': b.accepted },
    h('h3', {}, link(b.namespace, resourceOfBroker(b.name), `${b.namespace}/${b.name}`)),
    sparkline(b.inRate),
    h('div', { class: 'stats' },
      stat('in', `${fmtRate(last(b.inRate))}/s`, `${test}-rate`),
      stat('accepted', fmtNum(b.accepted), `${test}-total`)));
}

function triggerCard(t) {
  const test = tid('metric', 'trigger', t.namespace, t.name);
  const errors = errorRatio(t);
  return h('article', { class: `card metric${errors > 0 ? ' has-errors' : ''}`, 'data-test': test, 'data-total': t.delivered },
    h('h3', {}, link(t.namespace, resourceOfTrigger(t.name), `${t.namespace}/${t.name}`),
      h('span', { class: 'muted small' }, ` on ${t.broker}`)),
    sparkline(t.deliveredRate),
    h('div', { class: 'stats' },
      stat('delivered', `${fmtRate(last(t.deliveredRate))}/s`, `${test}-rate`),
      stat('errors', `${fmtRate(last(t.errorRate))}/s${errors ? ` (${Math.round(errors * 100)} %)` : ''}`, `${test}-errors`),
      stat('p50 / p99', `${fmtNum(last(t.p50Ms))} / ${fmtNum(last(t.p99Ms))} ms`, `${test}-latency`),
      stat('lag', fmtNum(last(t.lag)), `${test}-lag`),
      stat('oldest waiting', `${fmtNum(last(t.oldestAgeSeconds))} s`, `${test}-age`),
      stat('total', `${fmtNum(t.delivered)} delivered · ${fmtNum(t.deadLettered)} dead`, `${test}-total`)));
}

export async function render(root, route, ctx) {
  const brokers = h('div', { class: 'cards', 'data-test': 'metrics-brokers' });
  const triggers = h('div', { class: 'cards', 'data-test': 'metrics-triggers' });
  const note = h('p', { class: 'muted small' });
  root.append(h('div', { class: 'view-head' }, h('h1', {}, 'Metrics')), note,
    h('h2', {}, 'Brokers and channels'), brokers, h('h2', {}, 'Triggers and subscriptions'), triggers);
  const refresh = async () => {
    const s = await stats.fetch();
    if (!ctx.alive) return;
    if (!s) {
      note.textContent = stats.unavailable ? `Live stats unavailable: ${stats.unavailable}.` : 'Waiting for the first sample…';
      return;
    }
    note.textContent = `Sampled every ${s.intervalSeconds} s; the lines show the last ${Math.round(((last(s.brokers?.[0]?.t) || 0) - (s.brokers?.[0]?.t?.[0] || 0)) / 60000) || '<1'} min.`;
    clear(brokers, (s.brokers || []).map(brokerCard));
    clear(triggers, (s.triggers || []).length ? s.triggers.map(triggerCard) : h('p', { class: 'muted' }, 'No trigger runs.'));
  };
  await refresh();
  ctx.every(2000, refresh);
}

// Charts drawn as inline SVG: a line chart with axes and legend, a sparkline, and
// the chart sets of a broker and a trigger series from GET /v1/stats.

import { h, fmtNum, last } from './lib.js';

const W = 420;
const H = 150;
const PAD = { l: 40, r: 10, t: 10, b: 22 };

/** A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
}

/** Polylines of a series, split where values are null (no sample). */
function segments(t, values, x, y) {
  const out = [];
  let cur = [];
  values.forEach((v, i) => {
    if (v === null || v === undefined || Number.isNaN(v)) {
      if (cur.length) out.push(cur);
      cur = [];
    } else cur.push(`${x(t[i]).toFixed(1)},${y(v).toFixed(1)}`);
  });
  if (cur.length) out.push(cur);
  return out;
}

function span(ms) {
  const s = Math.round(ms / 1000);
  return s >= 60 ? `${Math.floor(s / 60)}m${s % 60 ? ` ${s % 60}s` : ''}` : `${s}s`;
}

/**
 * A line chart: series [{name, values, cls}] over times t (unix ms), as a <figure>
 * with data-test `testId` and each series' last value in the legend.
 */
export function lineChart({ title, t = [], series, unit = '', testId }) {
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  const max = niceMax(Math.max(0, ...all));
  const t0 = t.length ? t[0] : 0;
  const t1 = t.length ? t[t.length - 1] : 1;
  const x = (v) => PAD.l + ((v - t0) / Math.max(1, t1 - t0)) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - (v / max) * (H - PAD.t - PAD.b);
  const svg = h('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': title });
  for (const f of [0, 0.5, 1]) {
    const v = max * f;
    svg.append(
      h('line', { x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v), class: 'grid' }),
      h('text', { x: PAD.l - 6, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, fmtNum(v)),
    );
  }
  svg.append(
    h('text', { x: PAD.l, y: H - 6, class: 'axis' }, t.length > 1 ? `-${span(t1 - t0)}` : ''),
    h('text', { x: W - PAD.r, y: H - 6, class: 'axis', 'text-anchor': 'end' }, 'now'),
  );
  if (t.length < 2) {
    svg.append(h('text', { x: W / 2, y: H / 2, class: 'axis', 'text-anchor': 'middle' }, 'waiting for samples…'));
  }
  series.forEach((s, i) => {
    for (const seg of segments(t, s.values, x, y)) {
      if (seg.length === 1) {
        const [cx, cy] = seg[0].split(',');
        svg.append(h('circle', { cx, cy, r: 2, class: `dot s${i} ${s.cls || ''}` }));
      } else svg.append(h('polyline', { points: seg.join(' '), class: `line s${i} ${s.cls || ''}` }));
    }
  });
  const legend = h('figcaption', {},
    h('strong', {}, title),
    series.map((s, i) => h('span', { class: `key s${i} ${s.cls || ''}`, 'data-test': testId && `${testId}-${s.name.replace(/\W+/g, '_')}` },
      `${s.name} ${fmtNum(last(s.values))}${unit ? ` ${unit}` : ''}`)));
  return h('figure', { class: 'chart-box', 'data-test': testId }, legend, svg);
}

/** A small line of the last values, scaled to its own max, to put anywhere in an SVG. */
export function sparkPoints(values, w, hgt) {
  const v = (values || []).slice(-60);
  if (v.length < 2) return '';
  const max = Math.max(...v.map((x) => x || 0), 0.0001);
  return v.map((x, i) => `${((i / (v.length - 1)) * w).toFixed(1)},${(hgt - ((x || 0) / max) * hgt).toFixed(1)}`).join(' ');
}

/** An inline <svg> sparkline for HTML contexts. */
export function sparkline(values, testId) {
  return h('svg', { viewBox: '0 0 120 28', preserveAspectRatio: 'none', class: 'spark', 'aria-hidden': 'true', 'data-test': testId },
    h('polyline', { points: sparkPoints(values, 120, 26) }));
}

/** The charts of a broker's series. */
export function brokerCharts(b, prefix = 'chart') {
  return [lineChart({ title: 'Events in', t: b.t, unit: '/s', testId: `${prefix}-in`, series: [{ name: 'in', values: b.inRate }] })];
}

/** The charts of a trigger's series. */
export function triggerCharts(s, prefix = 'chart') {
  return [
    lineChart({
      title: 'Delivered and failed attempts', t: s.t, unit: '/s', testId: `${prefix}-delivery`,
      series: [{ name: 'delivered', values: s.deliveredRate }, { name: 'errors', values: s.errorRate, cls: 'bad' }],
    }),
    lineChart({
      title: 'Delivery latency', t: s.t, unit: 'ms', testId: `${prefix}-latency`,
      series: [{ name: 'p50', values: s.p50Ms }, { name: 'p99', values: s.p99Ms, cls: 'warn' }],
    }),
    lineChart({ title: 'Lag', t: s.t, unit: 'events', testId: `${prefix}-lag`, series: [{ name: 'lag', values: s.lag }] }),
    lineChart({
      title: 'Oldest waiting event', t: s.t, unit: 's', testId: `${prefix}-age`,
      series: [{ name: 'age', values: s.oldestAgeSeconds, cls: 'warn' }],
    }),
  ];
}

/** Error ratio of the last sample: failed attempts / (failed + delivered). */
export function errorRatio(s) {
  const d = last(s?.deliveredRate) || 0;
  const e = last(s?.errorRate) || 0;
  return d + e > 0 ? e / (d + e) : 0;
}

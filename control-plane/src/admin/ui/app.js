// The dashboard's shell: hash routing, the nav, the theme, sign-in, and the
// lifecycle of the current view (its timers and requests stop when it is left).

import { h, clear, token, onUnauthorized } from './lib.js';
import * as topology from './topology.js';
import * as metrics from './metrics.js';
import * as resources from './resources.js';
import * as deadletters from './deadletters.js';
import * as tail from './tail.js';
import * as types from './types.js';
import * as journey from './journey.js';

const VIEWS = { topology, metrics, resources, deadletters, tail, types, journey };
const THEME_KEY = 'cemesh.theme';
const $ = (id) => document.getElementById(id);

let current = null; // { ctx } of the view on screen
let signingIn = false;

/** The route of the location hash: #/view/seg/seg?k=v → {view, parts, query}. */
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, q = ''] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map((p) => {
    try { return decodeURIComponent(p); } catch { return p; }
  });
  const view = VIEWS[parts[0]] ? parts.shift() : 'topology';
  return { view, parts, query: new URLSearchParams(q) };
}

/** What a view gets: where it is, its timers, its abort signal, and the banner. */
function makeContext() {
  const abort = new AbortController();
  const timers = new Set();
  const ctx = {
    alive: true,
    signal: abort.signal,
    /** Runs fn every ms after the previous run finished, while the view is shown. */
    every(ms, fn) {
      const tick = async () => {
        timers.delete(id);
        if (!ctx.alive) return;
        try { await fn(); } catch (e) { ctx.error(String(e)); }
        if (ctx.alive) { id = setTimeout(tick, ms); timers.add(id); }
      };
      let id = setTimeout(tick, ms);
      timers.add(id);
    },
    error: (msg) => banner(msg, 'error'),
    info: (msg) => banner(msg, 'info'),
    clearBanner: () => banner(null),
    stop() {
      ctx.alive = false;
      timers.forEach(clearTimeout);
      timers.clear();
      abort.abort();
    },
  };
  return ctx;
}

function banner(msg, kind = 'error') {
  const b = $('banner');
  if (!msg) { b.hidden = true; clear(b); return; }
  b.className = `banner ${kind}`;
  clear(b, h('span', {}, msg), h('button', { type: 'button', class: 'link', 'data-test': 'banner-close', onclick: () => banner(null) }, 'Dismiss'));
  b.hidden = false;
}

function render() {
  if (current) current.ctx.stop();
  current = null;
  const route = parseHash();
  document.querySelectorAll('#nav a').forEach((a) => {
    if (a.dataset.route === route.view) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  });
  setNavOpen(false);
  if ($('confirm').open) $('confirm').close('cancel');
  $('signout').hidden = !token.get();
  if (signingIn) return;
  banner(null);
  const ctx = makeContext();
  const root = h('div', { class: `view view-${route.view}`, 'data-test': `view-${route.view}` });
  clear($('view'), root);
  current = { ctx };
  Promise.resolve()
    .then(() => VIEWS[route.view].render(root, route, ctx))
    .catch((e) => { if (ctx.alive) ctx.error(`This view failed: ${e && e.message ? e.message : e}`); });
}

// Sign-in: any 401 stops the view and asks for a token.
onUnauthorized((error) => {
  if (signingIn) return;
  const refused = !!token.get();
  token.clear();
  signingIn = true;
  if (current) current.ctx.stop();
  clear($('view'));
  banner(null);
  const err = $('signin-error');
  err.hidden = !refused;
  err.textContent = refused ? `The token was refused: ${error}` : '';
  $('signin').hidden = false;
  $('signout').hidden = true;
  $('signin-token').value = '';
  $('signin-token').focus();
});

$('signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('signin-token').value.trim();
  if (!t) return;
  token.set(t);
  $('signin-token').value = '';
  $('signin').hidden = true;
  signingIn = false;
  render();
});

$('signout').addEventListener('click', () => {
  token.clear();
  render();
});

// Theme: the user's choice (localStorage), else the system's.
function systemDark() { return window.matchMedia('(prefers-color-scheme: dark)').matches; }
function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  const btn = $('theme-toggle');
  btn.textContent = theme === 'dark' ? 'Light theme' : 'Dark theme';
  btn.setAttribute('aria-pressed', String(theme === 'dark'));
}
applyTheme(localStorage.getItem(THEME_KEY) || (systemDark() ? 'dark' : 'light'));
window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
  if (!localStorage.getItem(THEME_KEY)) applyTheme(systemDark() ? 'dark' : 'light');
});
$('theme-toggle').addEventListener('click', () => {
  const next = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
  localStorage.setItem(THEME_KEY, next);
  applyTheme(next);
});

// The nav folds behind a button on narrow screens.
function setNavOpen(open) {
  $('nav-toggle').setAttribute('aria-expanded', String(open));
  $('nav').classList.toggle('open', open);
}
$('nav-toggle').addEventListener('click', () => setNavOpen($('nav-toggle').getAttribute('aria-expanded') !== 'true'));

window.addEventListener('hashchange', render);
window.addEventListener('unhandledrejection', (e) => {
  banner(`Unexpected error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`);
});
if (!location.hash) history.replaceState(null, '', '#/topology');
render();

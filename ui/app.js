// canaryd dashboard: plain DOM and fetch, charts by uPlot (ui/vendor, MIT).
//
// Every call goes to this admin listener's /api/v1 with `fetch`, carrying the token (kept in
// sessionStorage: this tab only) in an Authorization header — never a cookie, so nothing a
// third-party page can make the browser send. The live stream is /api/v1/events read with
// fetch (EventSource cannot send a header). Text from the API only ever lands in
// `textContent`, never in HTML.
'use strict';

(function () {
  const POLL_MS = 5000;
  const COLORS = ['#2563eb', '#ea580c', '#16a34a', '#9333ea', '#dc2626', '#0891b2', '#ca8a04'];
  const TOKEN_KEY = 'canaryd.token';

  const S = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    route: null,
    routes: [],
    rollouts: {},
    series: null,
    charts: {},
    stream: null,
    pauseUntil: null,
    refreshing: null,
    again: false,
    weightsFor: null,
  };

  const $ = (id) => document.getElementById(id);

  // Build an element: h('td', {class: 'x'}, 'text', child...). Strings become text nodes.
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function fill(el, ...children) {
    el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  }

  const pct = (v, digits = 1) => (v === null || v === undefined ? '–' : `${Number(v).toFixed(digits)} %`);
  const time = (ms) => new Date(ms).toLocaleTimeString();

  class ApiError extends Error {
    constructor(status, message, errors) {
      super(message);
      this.status = status;
      this.errors = errors || [];
    }
  }

  function headers(json) {
    const hs = {};
    if (S.token) hs.Authorization = `Bearer ${S.token}`;
    if (json) hs['Content-Type'] = 'application/json';
    return hs;
  }

  async function api(method, path, body) {
    const r = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      data = null;
    }
    if (r.status === 401) askToken();
    if (!r.ok) {
      const msg = (data && data.error) || `${r.status} ${r.statusText}`;
      throw new ApiError(r.status, msg, data && data.errors);
    }
    return data;
  }

  // ---- banner, confirmation, token ----

  function banner(text, kind) {
    const b = $('banner');
    if (!text) {
      b.hidden = true;
      return;
    }
    b.className = `banner ${kind || 'error'}`;
    b.textContent = text;
    b.hidden = false;
  }

  function errorText(e) {
    const fields = (e.errors || []).map((f) => `${f.field}: ${f.message}`);
    return [e.message, ...fields].join('\n');
  }

  function confirmAction(text) {
    const d = $('confirm');
    $('confirm-text').textContent = text;
    return new Promise((resolve) => {
      const done = (ok) => {
        $('confirm-ok').onclick = null;
        $('confirm-cancel').onclick = null;
        d.onclose = null;
        if (d.open) d.close();
        resolve(ok);
      };
      $('confirm-ok').onclick = () => done(true);
      $('confirm-cancel').onclick = () => done(false);
      d.onclose = () => done(false);
      d.showModal();
      $('confirm-cancel').focus();
    });
  }

  function askToken() {
    $('token-form').hidden = false;
    $('token-input').focus();
  }

  function setToken(t) {
    S.token = t;
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
    $('token-form').hidden = !!t;
    banner(null);
    if (!begun) {
      begin();
      return;
    }
    restartStream();
    refresh();
  }

  // ---- the live stream ----

  function setLive(state, text) {
    const l = $('live');
    l.className = `live ${state}`;
    l.textContent = text;
  }

  function restartStream() {
    if (S.stream) S.stream.abort();
    S.stream = new AbortController();
    stream(S.stream.signal);
  }

  async function stream(signal) {
    while (!signal.aborted) {
      try {
        const r = await fetch('/api/v1/events', {
          headers: headers(false),
          cache: 'no-store',
          credentials: 'omit',
          signal,
        });
        if (r.status === 401) {
          setLive('off', 'needs token');
          askToken();
          return; // a new token restarts it
        }
        if (!r.ok) throw new Error(`${r.status}`);
        setLive('on', 'live');
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            onFrame(buf.slice(0, i));
            buf = buf.slice(i + 2);
          }
        }
      } catch (e) {
        if (signal.aborted) return;
      }
      setLive('off', 'reconnecting…');
      await new Promise((r) => setTimeout(r, 2000));
    }
  }

  function onFrame(frame) {
    let data = null;
    for (const line of frame.split('\n')) {
      if (line.startsWith('data:')) {
        try {
          data = JSON.parse(line.slice(5));
        } catch (_) {
          data = null;
        }
      }
    }
    if (data && data.route) refresh();
  }

  // ---- data ----

  async function refresh() {
    // One refresh at a time; a request for another during one runs once it ends.
    if (S.refreshing) {
      S.again = true;
      return S.refreshing;
    }
    S.refreshing = (async () => {
      do {
        S.again = false;
        await load();
      } while (S.again);
    })();
    try {
      await S.refreshing;
    } finally {
      S.refreshing = null;
    }
  }

  async function load() {
    let routes;
    let rollouts;
    try {
      [routes, rollouts] = await Promise.all([api('GET', '/api/v1/routes'), api('GET', '/api/v1/rollouts')]);
    } catch (e) {
      if (e.status !== 401) banner(`cannot read the admin API: ${errorText(e)}`);
      loadConfig();
      return;
    }
    S.routes = routes.routes;
    S.rollouts = {};
    for (const r of rollouts.rollouts) S.rollouts[r.route] = r;
    const wanted = decodeURIComponent(location.hash.replace(/^#/, ''));
    const names = S.routes.map((r) => r.name);
    S.route = names.includes(wanted) ? wanted : names.includes(S.route) ? S.route : names[0] || null;
    renderTabs();
    const route = S.routes.find((r) => r.name === S.route);
    $('empty').hidden = !!route;
    if (!route) {
      $('empty').textContent = 'No route is configured.';
      for (const id of ['route-panel', 'charts-panel', 'rollout-panel']) $(id).hidden = true;
    } else {
      let series = null;
      try {
        series = await api('GET', `/api/v1/routes/${encodeURIComponent(route.name)}/series`);
      } catch (e) {
        banner(`cannot read the series: ${errorText(e)}`);
      }
      renderRoute(route, series, S.rollouts[route.name]);
      renderCharts(route, series);
      renderRollout(S.rollouts[route.name]);
    }
    await loadConfig();
  }

  async function loadConfig() {
    try {
      renderConfig(await api('GET', '/api/v1/reload'));
    } catch (_) {
      // shown by the banner or the token form already
    }
  }

  // ---- rendering ----

  function renderTabs() {
    fill(
      $('routes'),
      S.routes.map((r) =>
        h('a', {
          href: `#${encodeURIComponent(r.name)}`,
          class: r.name === S.route ? 'tab current' : 'tab',
          'aria-current': r.name === S.route ? 'page' : null,
          text: r.name,
        }),
      ),
    );
  }

  function versionColor(route, name) {
    const i = route.versions.findIndex((v) => v.name === name);
    return COLORS[(i < 0 ? route.versions.length : i) % COLORS.length];
  }

  function renderRoute(route, series, rollout) {
    $('route-panel').hidden = false;
    $('route-name').textContent = route.name;
    const m = route.match || {};
    $('route-match').textContent = [m.host ? `host ${m.host}` : null, m.path_prefix ? `path ${m.path_prefix}` : null]
      .filter(Boolean)
      .join(', ');
    const share = (series && series.share_last_minute) || {};
    fill(
      $('versions'),
      route.versions.map((v) => {
        const actual = share[v.name];
        const color = versionColor(route, v.name);
        const bar = h('div', { class: 'bar' });
        const set = h('div', { class: 'set' });
        const act = h('div', { class: 'actual' });
        set.style.width = `${Math.min(100, v.weight)}%`;
        set.style.borderColor = color;
        act.style.width = `${Math.min(100, actual || 0)}%`;
        act.style.background = color;
        bar.append(act, set);
        const swatch = h('span', { class: 'swatch' });
        swatch.style.background = color;
        return h(
          'tr',
          { 'data-version': v.name },
          h('td', {}, swatch, h('strong', { text: v.name }), v.primary ? h('span', { class: 'badge', text: 'primary' }) : null),
          h('td', {}, h('span', { class: 'weight', text: pct(v.weight, 2) }), ' ', h('span', { class: 'muted', text: v.weight_source })),
          h('td', {}, h('span', { class: 'share', text: pct(actual, 2) }), bar),
          h('td', { class: 'endpoints', text: (v.endpoints || []).join(', ') }),
        );
      }),
    );
    renderWeightControl(route, rollout);
    const rules = route.rules || [];
    fill(
      $('rules'),
      rules.length
        ? rules.map((r) =>
            h(
              'li',
              {},
              h('span', { class: `badge ${r.source}`, text: r.source }),
              ' ',
              r.name ? h('strong', { text: r.name }) : null,
              ` → ${r.to} when ${JSON.stringify(r.when)}`,
            ),
          )
        : h('li', { class: 'muted', text: 'none' }),
    );
    $('sticky').textContent = route.sticky ? JSON.stringify(route.sticky) : 'off';
  }

  // Inputs for the non-primary versions' weights (the primary takes the rest), for routes no
  // rollout drives. Rebuilt only when the route changes, so typing is never overwritten.
  function renderWeightControl(route, rollout) {
    const driven = rollout && !['succeeded', 'aborted', 'superseded'].includes(rollout.phase);
    const box = $('weight-control');
    box.hidden = !!driven || route.versions.length < 2;
    if (box.hidden) return;
    const key = `${route.name}|${route.versions.map((v) => v.name).join(',')}`;
    if (S.weightsFor === key) {
      for (const v of route.versions.slice(1)) {
        const input = box.querySelector(`input[data-version="${CSS.escape(v.name)}"]`);
        if (input && document.activeElement !== input && !input.dataset.edited) input.value = v.weight;
      }
      return;
    }
    S.weightsFor = key;
    fill(
      $('weight-inputs'),
      route.versions.slice(1).map((v) => {
        const input = h('input', {
          type: 'number',
          min: 0,
          max: 100,
          step: 'any',
          value: v.weight,
          'data-version': v.name,
          'aria-label': `${v.name} weight (percent)`,
        });
        input.addEventListener('input', () => {
          input.dataset.edited = '1';
        });
        return h('label', {}, `${v.name} %`, input);
      }),
    );
  }

  async function setWeights() {
    const route = S.route;
    const body = {};
    for (const input of $('weight-inputs').querySelectorAll('input')) {
      body[input.dataset.version] = Number(input.value);
    }
    const text = Object.entries(body)
      .map(([k, v]) => `${k} ${v} %`)
      .join(', ');
    if (!(await confirmAction(`Set the weights of route ${route}: ${text}? The primary takes the rest.`))) return;
    try {
      await api('PUT', `/api/v1/routes/${encodeURIComponent(route)}/weights`, body);
      for (const input of $('weight-inputs').querySelectorAll('input')) delete input.dataset.edited;
      banner(`weights of ${route} set: ${text}`, 'ok');
    } catch (e) {
      banner(errorText(e));
    }
    refresh();
  }

  async function clearOverrides() {
    const route = S.route;
    if (!(await confirmAction(`Drop every runtime override of route ${route} (weights and rules) and go back to the file?`))) return;
    try {
      await api('DELETE', `/api/v1/routes/${encodeURIComponent(route)}/overrides`);
      S.weightsFor = null;
      banner(`overrides of ${route} dropped`, 'ok');
    } catch (e) {
      banner(errorText(e));
    }
    refresh();
  }

  // ---- charts ----

  // The x axis always spans the kept 15 minutes up to now, so a new route's first points sit
  // at the right edge instead of being stretched across the chart.
  function chartOf(kind, el, series, width, keep) {
    const y =
      kind === 'success' || kind === 'diff'
        ? (u, min, max) =>
            kind === 'diff' ? [0, Math.max(5, Math.ceil((max || 0) * 1.2))] : [Math.max(0, Math.min(90, Math.floor((min === null ? 100 : min) - 2))), 100.5]
        : (u, min, max) => [0, max > 0 ? max * 1.15 : 1];
    const opts = {
      width,
      height: 180,
      legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: {
          time: true,
          range: () => {
            const now = Date.now() / 1000;
            return [now - keep, now];
          },
        },
        y: { range: y },
      },
      axes: [{}, { size: 50 }],
      series: [{}, ...series],
    };
    const data = [[], ...series.map(() => [])];
    return new uPlot(opts, data, el);
  }

  function renderCharts(route, series) {
    const panel = $('charts-panel');
    panel.hidden = false;
    if (!series || typeof uPlot === 'undefined') return;
    const names = series.versions.map((v) => v.name);
    const mirror = series.mirror;
    const ms = (xs) => xs.map((v) => (v === null ? null : v * 1000));
    const datasets = {
      rate: series.versions.map((v) => v.rate),
      success: series.versions.map((v) => v.success_rate),
      p50: series.versions.map((v) => ms(v.p50_seconds)),
      p99: series.versions.map((v) => ms(v.p99_seconds)),
      diff: mirror ? [mirror.diff_rate] : [],
    };
    const labels = {
      rate: names,
      success: names,
      p50: names,
      p99: names,
      diff: ['differing'],
    };
    $('series-note').textContent = `(a point every ${series.interval_seconds} s)`;
    for (const fig of panel.querySelectorAll('.chart')) {
      const kind = fig.dataset.chart;
      if (kind === 'diff') fig.hidden = !mirror;
      if (fig.hidden) continue;
      const plot = fig.querySelector('.plot');
      const key = `${route.name}|${labels[kind].join(',')}`;
      let c = S.charts[kind];
      if (!c || c.key !== key) {
        if (c) c.plot.destroy();
        const defs = labels[kind].map((n) => ({
          label: n,
          stroke: kind === 'diff' ? '#9333ea' : versionColor(route, n),
          width: 2,
          spanGaps: false,
          points: { show: true, size: 4 },
        }));
        c = { key, plot: chartOf(kind, plot, defs, plotWidth(plot), series.keep_seconds) };
        S.charts[kind] = c;
      }
      const data = [series.at, ...datasets[kind]];
      c.plot.setData(data);
      const points = datasets[kind].reduce((n, col) => n + col.filter((v) => v !== null).length, 0);
      fig.dataset.points = String(points);
    }
  }

  function plotWidth(el) {
    return Math.max(220, Math.floor(el.getBoundingClientRect().width) || 300);
  }

  function resizeCharts() {
    for (const fig of document.querySelectorAll('.chart')) {
      const c = S.charts[fig.dataset.chart];
      if (c && !fig.hidden) c.plot.setSize({ width: plotWidth(fig.querySelector('.plot')), height: 180 });
    }
  }

  // ---- rollout ----

  function stepText(s) {
    switch (s.kind) {
      case 'set_weight':
        return `set weight ${s.weight} %`;
      case 'pause':
        return s.seconds === null ? 'pause until promoted' : `pause ${s.seconds} s`;
      case 'analysis':
        return `analysis ${s.gate}`;
      case 'set_header_route':
        return `header route ${s.name || ''}`;
      case 'set_mirror_route':
        return `mirror ${s.name || ''} (${s.weight} %)`;
      default:
        return s.kind;
    }
  }

  function renderRollout(ro) {
    const panel = $('rollout-panel');
    panel.hidden = !ro;
    S.pauseUntil = null;
    if (!ro) return;
    $('rollout-id').textContent = ro.id;
    const phase = $('rollout-phase');
    phase.textContent = ro.phase + (ro.reason ? ` (${ro.reason})` : '');
    phase.className = `phase ${ro.phase}`;
    panel.dataset.phase = ro.phase;
    $('rollout-step').textContent = `${ro.step}/${ro.steps_total}`;
    $('rollout-weight').textContent = `${pct(ro.set_weight, 2)} / ${pct(ro.actual_weight, 2)}`;
    $('rollout-message').textContent = ro.message || '';
    S.pauseUntil = ro.pause_until ? Date.parse(ro.pause_until) : null;
    const pausedOnStep = ro.phase === 'paused' && ro.steps[ro.step] && ro.steps[ro.step].kind === 'pause';
    $('rollout-pause').dataset.indefinite = pausedOnStep && !S.pauseUntil ? '1' : '';
    tick();
    const verbs = new Set(ro.verbs);
    for (const b of panel.querySelectorAll('button[data-verb]')) {
      const verb = b.dataset.verb === 'promote-full' ? 'promote' : b.dataset.verb;
      b.disabled = !verbs.has(verb);
    }
    fill(
      $('rollout-steps'),
      ro.steps.map((s) =>
        h(
          'li',
          { class: `step ${s.status}`, 'aria-current': s.status === 'current' ? 'step' : null },
          h('span', { class: 'mark', text: s.status === 'done' ? '✓' : s.status === 'current' ? '▶' : '·' }),
          ` ${stepText(s)}`,
        ),
      ),
    );
    const gates = [ro.inline_gate, ro.background_gate].filter(Boolean);
    $('rollout-gates').textContent = gates
      .map((g) => `${g.gate}: ${g.passed} passed, ${g.failures} failed, ${g.inconclusive} inconclusive`)
      .join(' · ');
    fill(
      $('rollout-measurements'),
      ro.measurements
        .slice(-6)
        .reverse()
        .map((m) =>
          h(
            'li',
            { class: `measurement ${m.result}` },
            h('div', {}, h('span', { class: `badge ${m.result}`, text: m.result }), ` ${m.gate} at ${time(m.at)}${m.background ? ' (background)' : ''}`),
            h(
              'ul',
              {},
              (m.checks || []).map((c) =>
                h('li', {}, h('strong', { text: c.check }), ` ${c.result}`, c.value !== null && c.value !== undefined ? ` = ${formatValue(c)}` : '', h('div', { class: 'muted', text: c.message })),
              ),
            ),
          ),
        ),
    );
    fill(
      $('rollout-history'),
      ro.history
        .slice()
        .reverse()
        .map((t) =>
          h('tr', {}, h('td', { text: time(t.at) }), h('td', { text: `${t.from} → ${t.to}` }), h('td', { text: t.step }), h('td', { text: t.by }), h('td', { text: [t.reason, t.message].filter(Boolean).join(': ') })),
        ),
    );
    renderFleet(ro.fleet);
  }

  function formatValue(c) {
    if (c.check.startsWith('latency')) return `${(c.value * 1000).toFixed(1)} ms`;
    if (c.check.endsWith('rate')) return `${Number(c.value).toFixed(2)} %`;
    return String(c.value);
  }

  function renderFleet(fleet) {
    const box = $('rollout-fleet');
    box.hidden = !fleet;
    if (!fleet) return;
    const verified = fleet.replicas.filter((r) => r.state === 'verified').length;
    fill(
      box,
      h('div', {}, `fleet: ${verified}/${fleet.replicas.length} replicas verified revision ${fleet.revision}`),
      fleet.blocked_by.length
        ? h('ul', { class: 'error' }, fleet.blocked_by.map((b) => h('li', { text: typeof b === 'string' ? b : JSON.stringify(b) })))
        : null,
    );
  }

  // The pause countdown, every second between refreshes.
  function tick() {
    const el = $('rollout-pause');
    if (S.pauseUntil) {
      const left = Math.max(0, Math.round((S.pauseUntil - Date.now()) / 1000));
      el.textContent = `${left} s left`;
    } else {
      el.textContent = el.dataset.indefinite ? 'until promoted' : '–';
    }
  }

  async function verb(name) {
    const ro = S.rollouts[S.route];
    if (!ro) return;
    const what = {
      promote: 'Promote to the next step',
      'promote-full': 'Promote fully: skip every remaining step and analysis, canary to 100 %',
      abort: 'Abort: the canary goes to 0 % at once',
      retry: 'Retry from the first step',
      pause: 'Pause',
      resume: 'Resume',
    }[name];
    if (!(await confirmAction(`${what} — rollout ${ro.id} of route ${ro.route}?`))) return;
    const path = `/api/v1/routes/${encodeURIComponent(ro.route)}/rollout/${name === 'promote-full' ? 'promote' : name}`;
    try {
      await api('POST', path, name === 'promote-full' ? { full: true } : undefined);
      banner(`${name}: done`, 'ok');
    } catch (e) {
      banner(errorText(e));
    }
    refresh();
  }

  // ---- configuration ----

  function renderConfig(c) {
    $('config-generation').textContent = c.generation;
    $('config-file').textContent = c.config_file || '(built in)';
    $('reload').hidden = !c.config_file;
    $('config-reloads').textContent = `${c.reloads_success} applied, ${c.reloads_failure} refused`;
    const ok = c.last_success;
    const bad = c.last_error;
    const last = [ok ? { ...ok, good: true } : null, bad ? { ...bad, good: false } : null]
      .filter(Boolean)
      .sort((a, b) => (a.at < b.at ? 1 : -1))[0];
    $('config-last').textContent = last
      ? `${last.good ? 'applied' : 'refused'} at ${last.at} (${last.trigger})`
      : 'none since start';
    const err = $('config-error');
    err.hidden = !(last && !last.good);
    if (!err.hidden) {
      fill(
        err,
        h('div', { text: 'The last reload was refused; the proxy keeps serving the last good config:' }),
        h('ul', {}, bad.errors.map((e) => h('li', {}, h('code', { text: e.field }), ` ${e.message}`))),
      );
    }
    const restart = $('config-restart');
    restart.hidden = !c.needs_restart;
    restart.textContent = c.needs_restart ? `Needs a restart: ${c.needs_restart}` : '';
  }

  async function reload() {
    if (!(await confirmAction('Reload the configuration file now?'))) return;
    try {
      await api('POST', '/api/v1/reload');
      banner('configuration reloaded', 'ok');
    } catch (e) {
      banner(errorText(e));
    }
    refresh();
  }

  // ---- start ----

  function start() {
    $('token-button').addEventListener('click', askToken);
    $('token-use').addEventListener('click', () => setToken($('token-input').value.trim()));
    $('token-input').addEventListener('keydown', (e) => {
      if (e.key === 'Enter') setToken($('token-input').value.trim());
    });
    $('token-clear').addEventListener('click', () => {
      $('token-input').value = '';
      setToken('');
      askToken();
    });
    for (const b of document.querySelectorAll('button[data-verb]')) {
      b.addEventListener('click', () => verb(b.dataset.verb));
    }
    $('weights-set').addEventListener('click', setWeights);
    $('overrides-clear').addEventListener('click', clearOverrides);
    $('reload').addEventListener('click', reload);
    window.addEventListener('hashchange', () => {
      S.weightsFor = null;
      refresh();
    });
    window.addEventListener('resize', resizeCharts);
    setInterval(tick, 1000);
    // Ask for the token first when the API needs one, rather than fail a call with 401.
    fetch('/ui/access', { cache: 'no-store', credentials: 'omit' })
      .then((r) => r.json())
      .catch(() => ({ token_required: false }))
      .then((access) => {
        if (access.token_required && !S.token) {
          askToken();
          setLive('off', 'needs token');
          return;
        }
        begin();
      });
  }

  let begun = false;
  function begin() {
    if (begun) return;
    begun = true;
    setInterval(refresh, POLL_MS);
    restartStream();
    refresh();
  }

  start();
})();

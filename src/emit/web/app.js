// synclag web view: reads the JSON API every two seconds and redraws. No dependencies,
// relative URLs only, text inserted as text (never as HTML).
'use strict';
(() => {
  const REFRESH_MS = 2000;
  const PENDING_ROWS = 15;
  const AGE_LABELS = { lt_1m: '<1m', '1m_5m': '1–5m', '5m_15m': '5–15m', '15m_1h': '15m–1h', ge_1h: '≥1h' };
  const view = {
    incidentsApi: true, // until /api/v1/incidents answers 404
    workflows: [],
    pending: [],
    now: Date.now(),
  };

  const $ = (s) => document.querySelector(s);

  // el('td', {class: 'num', title: 'x'}, 'text', childNode, ...)
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function seconds(s) {
    if (s === null || s === undefined) return '–';
    if (s < 10) return s.toFixed(1) + 's';
    if (s < 90) return Math.round(s) + 's';
    if (s < 5400) return Math.floor(s / 60) + 'm ' + String(Math.round(s % 60)).padStart(2, '0') + 's';
    if (s < 172800) return Math.floor(s / 3600) + 'h ' + String(Math.round((s % 3600) / 60)).padStart(2, '0') + 'm';
    return Math.round(s / 86400) + 'd';
  }
  const ms = (v) => (v === null || v === undefined ? '–' : seconds(v / 1000));
  const clock = (t) => new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  const ago = (t) => seconds(Math.max(0, view.now - t) / 1000) + ' ago';
  const dims = (d) => Object.entries(d || {}).map(([k, v]) => k + '=' + v).join(' ');

  // With API authentication on, the page asks once for a viewer token and keeps it for
  // the tab (sessionStorage), sending it as a bearer token.
  function authHeaders() {
    const t = sessionStorage.getItem('synclag.token');
    return t ? { Authorization: 'Bearer ' + t } : {};
  }

  async function get(path) {
    let r = await fetch(path, { cache: 'no-store', headers: authHeaders() });
    if (r.status === 401 && !get.asked) {
      get.asked = true;
      const t = window.prompt('synclag API token (viewer):');
      if (t) {
        sessionStorage.setItem('synclag.token', t.trim());
        r = await fetch(path, { cache: 'no-store', headers: authHeaders() });
      }
    }
    if (!r.ok) {
      const e = new Error(path + ': HTTP ' + r.status);
      e.status = r.status;
      throw e;
    }
    return r.json();
  }

  // Readiness answers 503 with the same body when not ready.
  async function readiness() {
    const r = await fetch('readyz', { cache: 'no-store' });
    return r.json();
  }

  // Open incidents (and the recent breaches, for their timelines); without the incidents
  // endpoint (an older synclag), the recent breaches grouped by workflow × dimension.
  async function incidents() {
    const breaches = get('api/v1/breaches?limit=20');
    if (view.incidentsApi) {
      try {
        return { incidents: await get('api/v1/incidents'), breaches: await breaches };
      } catch (e) {
        if (e.status !== 404) throw e;
        view.incidentsApi = false;
      }
    }
    return { breaches: await breaches };
  }

  const RANK = { ok: 0, warn: 1, critical: 2 };
  const worst = (a, b) => (RANK[a] >= RANK[b] ? a : b);

  function sla(wf, ageSeconds) {
    if (!wf || ageSeconds === null || ageSeconds === undefined) return 'ok';
    if (ageSeconds >= wf.sla_critical_seconds) return 'critical';
    if (ageSeconds >= wf.sla_warn_seconds) return 'warn';
    return 'ok';
  }

  // ---- health

  function renderHealth(status, ready) {
    const chips = [];
    if (status) {
      const behind = Math.max(0, (status.observed_at_ms - status.engine_clock_ms) / 1000);
      chips.push(el('span', { class: 'chip ' + (status.caught_up ? 'ok' : 'warn'), title: 'engine clock ' + clock(status.engine_clock_ms) },
        status.caught_up ? 'clock live' : 'catching up', ' · ', seconds(behind), ' behind'));
      chips.push(el('span', { class: 'chip ' + (status.input_lag_records > 0 ? 'info' : 'ok') }, status.input_lag_records, ' input records to read'));
      const stalled = status.stalled_inputs || [];
      chips.push(el('span', { class: 'chip ' + (stalled.length ? 'critical' : 'ok'), title: stalled.join('\n') || 'none' },
        stalled.length, ' stalled partition', stalled.length === 1 ? '' : 's'));
    }
    if (ready) {
      const why = [];
      if (!ready.kafka_reachable) why.push('Kafka unreachable');
      if (!ready.partitions_assigned) why.push('no partitions assigned');
      if (!ready.registry_ok) why.push('registry unreachable');
      if (ready.fatal_error) why.push(ready.fatal_error);
      chips.push(el('span', { class: 'chip ' + (ready.ready ? 'ok' : 'critical') }, ready.ready ? 'ready' : 'not ready: ' + why.join(', ')));
      if ((ready.missing_topics || []).length) {
        chips.push(el('span', { class: 'chip warn', title: ready.missing_topics.join('\n') }, ready.missing_topics.length, ' missing topic(s)'));
      }
    }
    $('#health').replaceChildren(...chips);
  }

  // ---- workflows

  function sparkline(wf) {
    // From the first active bucket (at least the last two minutes), so a young process
    // does not draw its line in a corner.
    const all = wf.lag_trend || [];
    const active = all.findIndex((p) => p.started || p.completed);
    const pts = all.slice(active < 0 ? 0 : Math.max(0, Math.min(active, all.length - 12)));
    const W = 150, H = 30, n = Math.max(pts.length - 1, 1);
    const top = Math.max(wf.sla_critical_seconds * 1000 * 1.15, ...pts.map((p) => p.p99_ms || 0));
    const y = (v) => (H - 2 - (v / top) * (H - 4)).toFixed(1);
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    const add = (tag, attrs) => {
      const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      svg.append(e);
    };
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.setAttribute('class', 'spark');
    add('line', { x1: 0, x2: W, y1: y(wf.sla_warn_seconds * 1000), y2: y(wf.sla_warn_seconds * 1000), class: 'sla-warn' });
    add('line', { x1: 0, x2: W, y1: y(wf.sla_critical_seconds * 1000), y2: y(wf.sla_critical_seconds * 1000), class: 'sla-critical' });
    let run = [];
    const flush = () => {
      if (run.length === 1) add('circle', { cx: run[0].split(',')[0], cy: run[0].split(',')[1], r: 1.5, class: 'lag-dot' });
      if (run.length > 1) add('polyline', { points: run.join(' '), class: 'lag' });
      run = [];
    };
    pts.forEach((p, i) => {
      if (p.p99_ms === null || p.p99_ms === undefined) return flush();
      run.push(((i / n) * W).toFixed(1) + ',' + y(p.p99_ms));
    });
    flush();
    const title = document.createElementNS('http://www.w3.org/2000/svg', 'title');
    title.textContent = 'p99 end-to-end lag per ' + seconds(view.bucket / 1000) + ' since ' +
      (pts.length ? clock(pts[0].start_ms) : '–') + '; dashed: warn and critical SLA';
    svg.append(title);
    return svg;
  }

  function ages(byAge) {
    return Object.keys(AGE_LABELS)
      .filter((k) => (byAge || {})[k] > 0)
      .map((k) => el('span', { class: 'age age-' + k }, AGE_LABELS[k], ' ', byAge[k]));
  }

  function renderWorkflows(status, groups) {
    const openBy = {};
    for (const g of groups) {
      if (g.open > 0) openBy[g.workflow] = (g.critical + g.never_arrived > 0) ? 'critical' : (openBy[g.workflow] || 'warn');
    }
    const rows = status.workflows.map((wf) => {
      const state = worst(sla(wf, wf.oldest_pending_seconds), openBy[wf.name] || 'ok');
      const q = wf.end_to_end || {};
      return el('tr', { 'data-workflow': wf.name, class: 'state-' + state },
        el('td', {}, el('span', { class: 'dot ' + state, title: state }), ' ', el('b', {}, wf.name),
          wf.description ? el('div', { class: 'muted small' }, wf.description) : null),
        el('td', { class: 'num' }, seconds(wf.sla_warn_seconds), ' / ', seconds(wf.sla_critical_seconds),
          wf.business_hours_overrides ? el('span', { class: 'muted', title: 'business-hours overrides apply' }, ' *') : null),
        el('td', { class: 'num' }, wf.rate_per_second.toFixed(1), '/s'),
        el('td', { class: 'num' }, ms(q.p50_ms)),
        el('td', { class: 'num' }, ms(q.p99_ms)),
        el('td', {}, sparkline(wf)),
        el('td', { 'data-field': 'pending' }, el('b', {}, wf.pending), ' ', ages(wf.pending_by_age)),
        el('td', { class: 'num ' + sla(wf, wf.oldest_pending_seconds) }, seconds(wf.oldest_pending_seconds)),
        el('td', { class: 'num' }, wf.breaches_warn, ' / ', el('span', { class: wf.breaches_critical ? 'critical' : '' }, wf.breaches_critical), ' / ', wf.never_arrived),
        el('td', { class: 'num', 'data-field': 'completed' }, wf.completed));
    });
    $('#workflows tbody').replaceChildren(...rows);
  }

  // ---- breaches by workflow × dimension (or incidents)

  function timeline(g, bucketMs) {
    const max = Math.max(1, ...g.timeline.map((b) => b.warn + b.critical + b.never_arrived));
    return el('div', { class: 'timeline', title: 'breaches per ' + seconds(bucketMs / 1000) + ', oldest left, now right' },
      g.timeline.map((b) => {
        const n = b.warn + b.critical + b.never_arrived;
        const bar = el('span', { class: b.critical + b.never_arrived ? 'critical' : n ? 'warn' : 'empty', title: clock(b.start_ms) + ': ' + n });
        bar.style.height = (n ? 3 + (n / max) * 17 : 1) + 'px';
        return bar;
      }));
  }

  const top = (list) => (list || []).map((c) => c.name + (list.length > 1 ? ' ' + c.count : '')).join(', ');
  const owner = (g) => (g.routes || []).map((r) => r.team || r.route || 'no route').join(', ');
  const routes = (g) => (g.routes || []).map((r) => 'route ' + (r.route || '–') + ': team ' + (r.team || '–') + ' (' + r.count + ')').join('\n');
  const where = (g) => (g.dimension ? g.dimension + '=' + g.value : 'all');

  function groupCard(g, bucketMs) {
    const state = g.open === 0 ? 'closed' : (g.critical + g.never_arrived ? 'critical' : 'warn');
    const evidence = [
      g.signals.length ? 'signals: ' + top(g.signals) : null,
      g.dominant_segments.length ? 'lag in: ' + top(g.dominant_segments) : null,
      g.stalled_inputs.length ? 'stalled inputs: ' + g.stalled_inputs.join(', ') : null,
      g.backlogged_groups.length ? 'backlogged: ' + g.backlogged_groups.join(', ') : null,
    ].filter(Boolean);
    return el('article', { class: 'group ' + state, 'data-group': g.workflow + '/' + where(g) },
      el('div', { class: 'group-head' },
        el('b', {}, g.workflow), ' · ', el('b', {}, where(g)),
        el('span', { class: 'counts' }, g.open, ' open of ', g.correlations, ' · warn ', g.warn, ' · critical ', g.critical, ' · never ', g.never_arrived)),
      el('div', {}, g.open ? 'late since ' : 'resolved; was late from ', el('b', {}, clock(g.since_ms)), ' (', ago(g.since_ms), '), last breach ', ago(g.last_observed_ms),
        ' · waiting for ', top(g.waiting_for) || '–'),
      el('div', {}, 'cause ', el('b', { class: 'cause' }, top(g.causes)), ' → ', el('b', { class: 'owner', title: routes(g) }, owner(g)),
        el('span', { class: 'muted' }, ' (route ', (g.routes || []).map((r) => r.route || '–').join(', '), ')')),
      evidence.length ? el('div', { class: 'muted small' }, evidence.join(' · ')) : null,
      timeline(g, bucketMs));
  }

  // Incidents: one card each with where, cause, evidence, route, team and timeline.
  const sliceText = (i) => Object.entries(i.slice || {}).map(([d, v]) => d + '=' + v).join(', ') || 'all';

  // The breach group (recent breaches) an incident's timeline is drawn from.
  function groupOf(i, groups) {
    const [dim, value] = Object.entries(i.slice || {})[0] || [];
    const same = (groups || []).filter((g) => g.workflow === i.workflow);
    return same.find((g) => g.dimension === dim && g.value === value) || same[0];
  }

  function incidentCard(i, groups, bucketMs) {
    const resolved = i.kind === 'resolved';
    const g = groupOf(i, groups);
    return el('article', { class: 'group ' + (resolved ? 'closed' : i.severity), 'data-group': i.workflow + '/' + sliceText(i), 'data-incident': i.incident_id },
      el('div', { class: 'group-head' },
        el('b', {}, i.workflow), ' · ', el('b', {}, sliceText(i)),
        el('span', { class: 'counts' }, i.severity, ' · ', i.breached, ' breached · ', i.pending, ' pending · ', i.never_arrived, ' never · ', i.completed, ' completed')),
      el('div', {}, resolved ? 'resolved ' + clock(i.resolved_at_ms) + '; was late from ' : 'late since ', el('b', {}, clock(i.first_breach_ms)),
        ' (', ago(i.first_breach_ms), '), last breach ', ago(i.last_breach_ms), ' · worst lag ', seconds(i.worst_lag_ms / 1000)),
      el('div', {}, 'cause ', el('b', { class: 'cause' }, i.probable_cause), ' → ', el('b', { class: 'owner' }, i.team || 'no team'),
        el('span', { class: 'muted' }, ' (route ', i.route || '–', ')')),
      i.evidence.length ? el('div', { class: 'muted small' }, 'evidence: ' + i.evidence.join(' · ')) : null,
      i.slice_breach_rate != null ? el('div', { class: 'muted small' }, sliceText(i), ' breaches ', Math.round(100 * i.slice_breach_rate), '% of its correlations, its peers ', Math.round(100 * (i.peer_breach_rate || 0)), '%') : null,
      i.sample.length ? el('div', { class: 'muted small' }, 'e.g. ' + i.sample.slice(0, 3).join(', ')) : null,
      g ? timeline(g, bucketMs) : null);
  }

  function renderIncidents(data) {
    const b = data.breaches;
    if (data.incidents) {
      const list = data.incidents.open.concat(data.incidents.resolved.slice(0, 3));
      $('#incidents-title').textContent = 'Incidents';
      $('#incidents').replaceChildren(...(list.length
        ? list.map((i) => incidentCard(i, b.groups, b.timeline_bucket_ms))
        : [el('p', { class: 'muted' }, 'No incident.')]));
      // The same shape as a breach group, for the 'late now' strip and the workflow states.
      return data.incidents.open.map((i) => {
        const [dimension, value] = Object.entries(i.slice)[0] || [];
        return {
          workflow: i.workflow, dimension, value, open: i.pending || i.breached,
          critical: i.severity === 'critical' ? 1 : 0, never_arrived: i.never_arrived,
          since_ms: i.first_breach_ms, causes: [{ name: i.probable_cause }],
          routes: [{ route: i.route, team: i.team }],
        };
      });
    }
    $('#incidents').replaceChildren(...(b.groups.length
      ? b.groups.map((g) => groupCard(g, b.timeline_bucket_ms))
      : [el('p', { class: 'muted' }, 'No breach in the last ', b.capacity, ' events.')]));
    return b.groups;
  }

  function renderLate(groups, status) {
    const open = groups.filter((g) => g.open > 0).slice(0, 4);
    const cards = open.map((g) => el('div', { class: 'late ' + (g.critical + g.never_arrived ? 'critical' : 'warn') },
      el('div', { class: 'what' }, g.workflow, ' · ', where(g)),
      el('div', {}, el('b', {}, g.open), ' late, since ', clock(g.since_ms), ' (', ago(g.since_ms), ')'),
      el('div', { title: routes(g) }, top(g.causes), ' → ', el('b', {}, owner(g)))));
    if (!cards.length) {
      cards.push(el('div', { class: 'late ok' }, el('div', { class: 'what' }, 'Nothing is late'),
        el('div', {}, status ? status.workflows.length + ' workflows within their SLA' : '')));
    }
    $('#late').replaceChildren(...cards);
  }

  // ---- pending

  function renderFilters() {
    const wsel = $('#filter-workflow');
    const dsel = $('#filter-dimension');
    const keep = (sel, values) => {
      const cur = sel.value;
      sel.replaceChildren(el('option', { value: '' }, 'all'), ...values.map((v) => el('option', { value: v }, v)));
      sel.value = values.includes(cur) ? cur : '';
    };
    keep(wsel, view.workflows.map((w) => w.name));
    const seen = new Set();
    for (const p of view.pending) for (const [k, v] of Object.entries(p.dimensions)) seen.add(k + '=' + v);
    keep(dsel, [...seen].sort());
  }

  function renderPending() {
    const w = $('#filter-workflow').value;
    const d = $('#filter-dimension').value;
    const byName = Object.fromEntries(view.workflows.map((x) => [x.name, x]));
    const shown = view.pending.filter((p) => (!w || p.workflow === w) &&
      (!d || Object.entries(p.dimensions).some(([k, v]) => k + '=' + v === d)));
    const rows = shown.slice(0, PENDING_ROWS).map((p) => {
      const wf = byName[p.workflow];
      const stages = wf ? wf.stages : p.stages_seen;
      const chain = stages.map((s) => (p.stages_seen.includes(s) ? '✓ ' : s === p.waiting_for ? '→ ' : '· ') + s).join('\n');
      const bar = el('span', { class: 'bar' }, stages.map((s) =>
        el('span', { class: p.stages_seen.includes(s) ? 'seen' : s === p.waiting_for ? 'waiting' : 'todo' })));
      return el('tr', { 'data-correlation': p.correlation_id },
        el('td', { class: 'num ' + sla(wf, p.age_seconds) }, seconds(p.age_seconds)),
        el('td', {}, el('div', {}, p.workflow), el('div', { class: 'mono' }, p.correlation_id)),
        el('td', { class: 'small seen', title: chain }, bar, ' ', p.stages_seen.join(' › ') || '–'),
        el('td', { class: 'waiting' }, p.waiting_for || '–'),
        el('td', { class: 'small' }, dims(p.dimensions)));
    });
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 5, class: 'muted' }, 'Nothing pending.')));
    $('#pending tbody').replaceChildren(...rows);
    $('#pending-count').textContent = 'showing ' + Math.min(PENDING_ROWS, shown.length) + ' of ' + shown.length +
      ' (the oldest per workflow)';
  }

  // ---- backlog

  function renderBacklog(groups, error) {
    let rows;
    if (error && error.status === 404) {
      rows = [el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No consumer group is watched (backlog.groups in the topology).'))];
    } else if (!groups) {
      rows = [el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No backlog report yet.'))];
    } else {
      rows = groups.groups.map((g) => el('tr', { 'data-group': g.group },
        el('td', {}, el('b', {}, g.group)),
        el('td', {}, el('span', { class: 'badge status-' + g.status }, g.status)),
        el('td', {}, g.state),
        el('td', { class: 'num' }, g.members),
        el('td', { class: 'num' }, g.offset_lag.toLocaleString()),
        el('td', { class: 'num' }, seconds(g.max_time_lag_seconds)),
        el('td', { class: 'num' }, g.uncommitted_partitions),
        el('td', { class: 'small' }, g.error || '')));
      for (const m of groups.missing_groups || []) {
        rows.push(el('tr', {}, el('td', {}, m), el('td', {}, el('span', { class: 'badge status-ERR' }, 'missing')), el('td', { colspan: 6, class: 'muted' }, 'the cluster does not know this group')));
      }
      if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'Waiting for the first backlog cycle.')));
    }
    $('#backlog tbody').replaceChildren(...rows);
  }

  // ---- the loop

  async function refresh() {
    const [status, pending, inc, groups, ready] = await Promise.allSettled([
      get('api/v1/workflows'), get('api/v1/pending?limit=1000'), incidents(), get('api/v1/groups'), readiness(),
    ]);
    const failed = [status, pending, inc].filter((r) => r.status === 'rejected').map((r) => r.reason.message);
    if (status.status === 'fulfilled') {
      view.now = status.value.observed_at_ms || Date.now();
      view.bucket = status.value.trend_bucket_ms;
      view.workflows = status.value.workflows;
    }
    if (pending.status === 'fulfilled') view.pending = pending.value.pending;
    const breachGroups = inc.status === 'fulfilled' ? renderIncidents(inc.value) : [];
    if (status.status === 'fulfilled') {
      renderWorkflows(status.value, breachGroups);
      renderLate(breachGroups, status.value);
    }
    renderHealth(status.value, ready.value);
    renderFilters();
    renderPending();
    renderBacklog(groups.value, groups.reason);
    const box = $('#error');
    box.hidden = failed.length === 0;
    box.textContent = failed.length ? 'Cannot read synclag: ' + failed.join('; ') + ' (showing the last data)' : '';
    document.body.dataset.state = failed.length ? 'error' : 'ok';
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
    $('#updated').textContent = 'updated ' + clock(Date.now());
  }

  async function loop() {
    try {
      await refresh();
    } catch (e) {
      $('#error').hidden = false;
      $('#error').textContent = 'Cannot draw the view: ' + e.message;
    }
    setTimeout(loop, REFRESH_MS);
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('#filter-workflow').addEventListener('change', renderPending);
    $('#filter-dimension').addEventListener('change', renderPending);
    loop();
  });
})();

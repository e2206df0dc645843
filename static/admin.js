// The operator page: reads /admin/api/cluster with the admin token and shows every server the
// cluster knows (live, draining, stopped or dead, with when each was last seen), Redis and Kafka
// health, and users online counted once. Rates come from the totals of two successive reports.
// A failed answer (an HTTP error, a body that is not the API's) is shown as that error; "does not
// answer" is kept for a request that got no answer at all. All text goes through textContent.
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const reports = new Map();  // server -> {last, prev}: the two latest distinct reports
  let token = sessionStorage.getItem('chat.admin.token') || '';
  let timer = null;

  function cell(row, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }

  function rate(now, before, key) {
    if (!before || now.ts <= before.ts) return '–';
    return ((Number(now[key]) - Number(before[key])) / (now.ts - before.ts)).toFixed(1);
  }

  function duration(seconds) {
    if (!(seconds >= 0)) return '–';
    if (seconds < 120) return `${seconds.toFixed(0)} s`;
    if (seconds < 7200) return `${(seconds / 60).toFixed(0)} min`;
    if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }

  // What a server is: live ones say their state; a server out of the live set either said
  // goodbye (draining, stopped) or went silent (dead).
  function state(s) {
    if (s.live === 'yes') return [s.state || 'no report yet', s.state === 'ready' ? 'ok' : 'warn'];
    if (s.state === 'stopped' || s.state === 'draining') return [s.state, 'warn'];
    return ['dead: no heartbeat', 'bad'];
  }

  function health(name, value) {
    return value === 'ok' ? `${name} ok` : `${name}: ${value}`;
  }

  function render(body) {
    const servers = body.servers || {};
    const cluster = body.cluster || {};
    const nowS = Date.now() / 1000;
    const rows = $('rows');
    rows.replaceChildren();
    const sum = { connections: 0, errors: 0, lag: 0, shed: 0, live: 0 };
    const names = Object.keys(servers).sort();
    for (const name of names) {
      const s = servers[name];
      const now = { ts: Number(s.ts || 0), routed: Number(s.routed || 0), delivered: Number(s.delivered || 0) };
      const seen = reports.get(name) || { last: null, prev: null };
      if (!seen.last || seen.last.ts !== now.ts) reports.set(name, { last: now, prev: seen.last });
      const before = reports.get(name).prev;
      const live = s.live === 'yes';
      const [text, cls] = state(s);
      const row = document.createElement('tr');
      if (!live) row.className = 'gone';
      cell(row, name);
      cell(row, text, cls);
      cell(row, s.version ? `${s.version}${s.commit && s.commit !== 'unknown' ? ` (${s.commit.slice(0, 8)})` : ''}` : '–');
      cell(row, live && s.started ? duration(nowS - Number(s.started)) : '–');
      cell(row, s.connections || '0');
      cell(row, s.users || '0');
      cell(row, live ? rate(now, before, 'routed') : '–');
      cell(row, live ? rate(now, before, 'delivered') : '–');
      cell(row, s.backlog ? `${Number(s.backlog).toFixed(1)} s` : '–', Number(s.backlog) >= 1 ? 'warn' : '');
      cell(row, s.shed || '0', Number(s.shed) > 0 ? 'warn' : '');
      cell(row, s.errors || '0');
      cell(row, s.lag || '0', Number(s.lag) > 1000 ? 'warn' : '');
      cell(row, s.ts ? `${duration(Math.max(0, nowS - now.ts))} ago` : '–');
      rows.appendChild(row);
      if (live) {
        sum.live += 1;
        sum.connections += Number(s.connections || 0);
        sum.errors += Number(s.errors || 0);
        sum.lag += Number(s.lag || 0);
        sum.shed += Number(s.shed || 0);
      }
    }
    const users = Number(cluster.users || 0);
    const totals = $('totals');
    totals.replaceChildren();
    for (const text of [`${sum.live} live of ${names.length}`, '', '', '', String(sum.connections),
      `${users} online`, '', '', '', String(sum.shed), String(sum.errors), String(sum.lag), '']) {
      cell(totals, text);
    }
    const redis = cluster.redis || 'unknown';
    const kafka = cluster.kafka || 'unknown';
    $('health').textContent = `${health('Redis', redis)} · ${health('Kafka', kafka)} (as ${cluster.answered_by || 'this server'} sees them)`;
    $('health').className = redis === 'ok' && kafka === 'ok' ? 'ok' : 'bad';
    showStatus(`${sum.live} live server(s) of ${names.length} known, ${sum.connections} connection(s), ${users} user(s) online`);
  }

  function showStatus(text, isError) {
    $('summary').textContent = text;
    $('summary').className = isError ? 'bad' : '';
  }

  // The error a failed answer carries: the API's own {"error": {message}} when it sent one,
  // else the HTTP status (an error page from nginx, say).
  async function failure(res) {
    let message = '';
    try {
      const body = await res.json();
      message = body && body.error ? body.error.message : '';
    } catch (err) { /* not the API's JSON */ }
    return `Error ${res.status}${res.statusText ? ` ${res.statusText}` : ''} from /admin/api/cluster${message ? `: ${message}` : ''}`;
  }

  async function refresh() {
    let res;
    try {
      res = await fetch('/admin/api/cluster', { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
    } catch (err) {
      showStatus('The server does not answer (no response); retrying.', true);
      return;
    }
    if (res.status === 401) { showAuth('That token is not accepted.'); return; }
    if (!res.ok) {
      showStatus(`${await failure(res)}; retrying.`, true);
      return;
    }
    let body;
    try {
      body = await res.json();
    } catch (err) {
      showStatus('Error: /admin/api/cluster answered something that is not its JSON; retrying.', true);
      return;
    }
    $('auth').hidden = true;
    $('servers').hidden = false;
    render(body);
  }

  function showAuth(message) {
    clearInterval(timer);
    timer = null;
    sessionStorage.removeItem('chat.admin.token');
    $('auth').hidden = false;
    $('servers').hidden = true;
    $('auth-error').textContent = message || '';
  }

  function start() {
    sessionStorage.setItem('chat.admin.token', token);
    refresh();
    clearInterval(timer);
    timer = setInterval(refresh, 2000);
  }

  $('auth').addEventListener('submit', (e) => {
    e.preventDefault();
    token = $('token').value.trim();
    if (token) start();
  });
  if (token) start();
})();

// The operator page: reads /admin/api/cluster with the admin token and shows every live server.
// Rates are derived from the totals of two successive reports. All text goes through textContent.
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

  function render(servers) {
    const rows = $('rows');
    rows.replaceChildren();
    const sum = { connections: 0, users: 0, routed: 0, delivered: 0, errors: 0, lag: 0 };
    const names = Object.keys(servers).sort();
    for (const name of names) {
      const s = servers[name];
      const now = { ts: Number(s.ts || 0), routed: Number(s.routed || 0), delivered: Number(s.delivered || 0) };
      const seen = reports.get(name) || { last: null, prev: null };
      if (!seen.last || seen.last.ts !== now.ts) reports.set(name, { last: now, prev: seen.last });
      const before = reports.get(name).prev;
      const row = document.createElement('tr');
      cell(row, name);
      cell(row, s.state || 'no report yet', s.state === 'ready' ? 'ok' : 'warn');
      cell(row, s.connections || '0');
      cell(row, s.users || '0');
      const r1 = rate(now, before, 'routed');
      const r2 = rate(now, before, 'delivered');
      cell(row, r1);
      cell(row, r2);
      cell(row, s.errors || '0');
      cell(row, s.lag || '0', Number(s.lag) > 1000 ? 'warn' : '');
      cell(row, s.ts ? `${Math.max(0, Date.now() / 1000 - now.ts).toFixed(0)} s ago` : '–');
      rows.appendChild(row);
      sum.connections += Number(s.connections || 0);
      sum.users += Number(s.users || 0);
      sum.errors += Number(s.errors || 0);
      sum.lag += Number(s.lag || 0);
    }
    const totals = $('totals');
    totals.replaceChildren();
    cell(totals, `${names.length} server(s)`);
    cell(totals, '');
    cell(totals, String(sum.connections));
    cell(totals, String(sum.users));
    cell(totals, '');
    cell(totals, '');
    cell(totals, String(sum.errors));
    cell(totals, String(sum.lag));
    cell(totals, '');
    $('summary').textContent = `${names.length} live server(s), ${sum.connections} connection(s)`;
  }

  async function refresh() {
    try {
      const res = await fetch('/admin/api/cluster', { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
      const body = await res.json();
      if (res.status === 401) { showAuth('That token is not accepted.'); return; }
      if (!res.ok) { $('summary').textContent = body.error ? body.error.message : `HTTP ${res.status}`; return; }
      $('auth').hidden = true;
      $('servers').hidden = false;
      render(body.servers || {});
    } catch (err) {
      $('summary').textContent = 'The server does not answer; retrying.';
    }
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

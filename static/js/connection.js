/** The WebSocket: connect, reconnect with backoff, ask /readyz why handshakes fail, ping, send(frame). */

import { PING_MS, IDLE_MS, BACKOFF_MIN_MS, BACKOFF_MAX_MS, MAX_FAILED_OPENS, READY_CHECK_MS, CLOSE_AUTH } from './constants.js';
import { state } from './state.js';
import { tokenLost } from './signin.js';
import { handleFrame } from './frames.js';
import { forgetRequests } from './channels.js';
import { failInFlight } from './composer.js';
import { renderConn } from './views.js';

export function connect() {
  cancelReconnect();
  closeSocket(1000);
  state.conn.checkSeq += 1;                   // a /readyz check still running is outdated now
  if (!state.token) return;
  if (navigator.onLine === false) { setConn('offline'); return; }
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  // receipts=1: "delivered" receipts for our private messages (the ✓✓ marks).
  const url = proto + '//' + location.host + '/ws?token=' + encodeURIComponent(state.token) + '&receipts=1';
  let ws;
  try {
    ws = new WebSocket(url);
  } catch (e) {
    scheduleReconnect();
    return;
  }
  const c = state.conn;
  c.ws = ws;
  c.ready = false;
  let opened = false;
  setConn('connecting');

  ws.addEventListener('open', () => {
    if (ws !== c.ws) return;
    opened = true;
    c.failedOpens = 0;
    c.unavailable = false;
    c.upBefore = false;
    c.lastFrameAt = Date.now();
    setConn('online');
    startPing();
  });
  ws.addEventListener('message', (ev) => {
    if (ws !== c.ws) return;
    c.lastFrameAt = Date.now();
    if (typeof ev.data !== 'string') return;   // we never offer msgpack
    let frame;
    try { frame = JSON.parse(ev.data); } catch (e) { return; }
    if (frame && typeof frame === 'object' && !Array.isArray(frame)) handleFrame(frame);
  });
  ws.addEventListener('close', (ev) => {
    if (ws !== c.ws) return;
    socketGone(ev.code, opened);
  });
  // 'error' is always followed by 'close'; nothing to do here.
}

/** The current socket closed (or was given up on). */
export function socketGone(code, wasOpen) {
  const c = state.conn;
  c.ws = null;
  c.ready = false;
  c.server = '';
  stopPing();
  forgetRequests();
  failInFlight('Connection lost before the server confirmed this message.');
  if (!state.token) return;
  if (code === CLOSE_AUTH) { tokenLost(); return; }         // the token expired
  if (!wasOpen) {
    c.failedOpens += 1;
    if (c.failedOpens >= MAX_FAILED_OPENS) { checkServer(); return; }
  }
  scheduleReconnect();
}

/**
 * Handshakes keep failing. A browser does not tell why (401 and 502 look the same),
 * so ask /readyz: a server that answers 200 is up and refused our token -> sign in
 * again; no answer, 502 or 503 -> the servers are down, keep retrying with backoff.
 * A server may have come back between the failed handshake and the 200: so the first
 * 200 buys one more attempt at once, and only a refusal between two 200s signs out.
 */
export async function checkServer() {
  const c = state.conn;
  const seq = ++c.checkSeq;
  const token = state.token;
  let ready = false;
  const abort = typeof AbortController === 'function' ? new AbortController() : null;
  const timer = abort ? setTimeout(() => abort.abort(), READY_CHECK_MS) : null;
  try {
    const res = await fetch('/readyz', {
      cache: 'no-store', credentials: 'same-origin', signal: abort ? abort.signal : undefined,
    });
    ready = res.status === 200;
  } catch (e) {
    ready = false;                            // network error or timeout: unreachable
  } finally {
    clearTimeout(timer);
  }
  // Signed out, signed in again, or a new connection started meanwhile: not ours to act on.
  if (seq !== c.checkSeq || state.token !== token || !token || c.ws || c.retryTimer) return;
  if (ready && c.upBefore) { tokenLost(); return; }       // up before and after a refused handshake
  c.upBefore = ready;
  if (ready) { connect(); return; }
  c.unavailable = true;
  scheduleReconnect();
}

/** Close our socket without triggering the reconnect logic. */
export function closeSocket(code) {
  const ws = state.conn.ws;
  state.conn.ws = null;
  state.conn.ready = false;
  state.conn.server = '';
  stopPing();
  forgetRequests();
  if (ws) { try { ws.close(code || 1000); } catch (e) { /* ignore */ } }
}

/** Give up on a socket that looks dead, and reconnect. */
export function dropSocket() {
  closeSocket(4000);
  socketGone(1006, true);
}

export function scheduleReconnect() {
  const c = state.conn;
  cancelReconnect();
  if (navigator.onLine === false) { setConn('offline'); return; }
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, c.attempt));
  const delay = Math.min(BACKOFF_MAX_MS, Math.round(base * (0.8 + Math.random() * 0.4)));  // ±20 % jitter
  c.attempt += 1;
  c.retryAt = Date.now() + delay;
  c.retryTimer = setTimeout(connect, delay);
  c.tickTimer = setInterval(renderConn, 1000);
  setConn('reconnecting');
}

export function cancelReconnect() {
  const c = state.conn;
  clearTimeout(c.retryTimer);
  clearInterval(c.tickTimer);
  c.retryTimer = null;
  c.tickTimer = null;
}

export function startPing() {
  stopPing();
  state.conn.pingTimer = setInterval(() => {
    if (Date.now() - state.conn.lastFrameAt > IDLE_MS) { dropSocket(); return; }
    send({ type: 'ping' });
  }, PING_MS);
}

export function stopPing() {
  clearInterval(state.conn.pingTimer);
  state.conn.pingTimer = null;
}

export function setConn(status) {
  const changed = state.conn.status !== status;
  state.conn.status = status;
  renderConn(changed);
}

/** Send one frame on the open socket. Returns false when it could not be sent. */
export function send(frame) {
  const ws = state.conn.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  try {
    ws.send(JSON.stringify(frame));
    return true;
  } catch (e) {
    return false;
  }
}

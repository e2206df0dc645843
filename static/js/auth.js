/**
 * Sign in (POST /api/login, or /api/signup for a new account), enter the chat with a token, sign
 * out, reset the chat state. Tokens from the operator's application: signin.js.
 */

import { STORE } from './constants.js';
import { state } from './state.js';
import { validUsername } from './util.js';
import { ui, focusComposer, hideNotice } from './dom.js';
import { storeGet, storeDel, saveSession, clearSession, loadPositions, loadEpochs, loadRooms } from './storage.js';
import { connect, closeSocket, cancelReconnect, setConn } from './connection.js';
import { dmKey, ensureConv, touchConv } from './store.js';
import { addRoom } from './rooms.js';
import { renderAll, renderScreen, renderLoginError, renderLoginBusy, renderMe, renderSidebar, renderTitle } from './views.js';
import { signin, tokenStarted, tokenStopped } from './signin.js';
import { loadMuted } from './notify.js';

/**
 * `password`: built-in accounts (empty: a name alone, dev login); `signUp`: create the account.
 */
export async function signIn(name, password = '', signUp = false) {
  if (state.loginBusy) return;
  if (!validUsername(name)) {
    renderLoginError(name === ''
      ? 'Please enter a username.'
      : 'Usernames are 1 to 32 characters: letters, digits, "_", "." or "-" (no spaces).');
    ui.loginName.focus();
    return;
  }
  if (signin.accounts && !password && (signUp || !signin.devLogin)) {
    renderLoginError(signUp ? 'Choose a password of at least 8 characters.' : 'Please enter your password.');
    return;
  }
  state.loginBusy = true;
  renderLoginError('');
  renderLoginBusy();
  try {
    let res;
    try {
      res = await fetch(signUp ? '/api/signup' : '/api/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify(password ? { username: name, password } : { username: name }),
        credentials: 'same-origin',
      });
    } catch (e) {
      throw new Error('Cannot reach the server. Check your connection and try again.');
    }
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok || !body || typeof body.token !== 'string') {
      const msg = body && body.error && typeof body.error.message === 'string'
        ? body.error.message
        : 'Sign-in failed (HTTP ' + res.status + ').';
      throw new Error(msg);
    }
    startSession(body.token, typeof body.username === 'string' ? body.username : name, false);
  } catch (e) {
    renderLoginError(e.message || String(e));
    ui.loginName.focus();
  } finally {
    state.loginBusy = false;
    renderLoginBusy();
  }
}

/** Enter the chat with a token. `restore`: coming back from sessionStorage after a reload. */
export function startSession(token, username, restore) {
  ui.loginPassword.value = '';
  state.token = token;
  state.me = username;
  if (!restore) {
    storeDel(STORE.convs);
    storeDel(STORE.active);
  }
  saveSession();
  resetChat();
  state.positions = loadPositions(username);
  state.epochs = loadEpochs(username);
  state.muted = loadMuted(username);
  for (const room of loadRooms(username)) addRoom(room);
  restoreConvs();
  renderScreen();
  renderMe();
  renderAll();
  state.conn.attempt = 0;
  state.conn.failedOpens = 0;
  state.conn.unavailable = false;
  state.conn.upBefore = false;
  tokenStarted();
  connect();
  focusComposer();
}

/** Leave the chat. `message`: shown on the sign-in screen (e.g. session expired). */
export function signOut(message) {
  const name = state.me;
  state.token = null;
  state.me = null;
  clearSession();
  tokenStopped(message);
  closeSocket(1000);
  cancelReconnect();
  resetChat();
  setConn('offline');
  state.sidebarOpen = false;
  renderSidebar();
  renderScreen();
  renderTitle();
  renderLoginError(message || '');
  ui.loginName.value = message && name ? name : '';
  ui.loginName.focus();
}

export const expireSession = (why) => signOut(why || 'Session expired, sign in again.');

export function resetChat() {
  state.convs = new Map();
  state.order = [];
  state.active = 'public';
  state.seen = new Map();
  state.changes = new Map();
  state.changeSends = new Map();
  state.reactions = new Map();
  state.readSent = new Set();
  for (const m of state.pending.values()) clearTimeout(m.ackTimer);
  state.pending = new Map();
  state.outbox = [];
  state.positions = {};
  state.epochs = {};
  state.positionsDirty = false;
  state.oldest = {};
  state.loaded = {};
  state.atStart = {};
  state.requests = new Map();
  state.loadingOlder = {};
  state.resuming = null;
  state.gapsToRetry = [];
  state.rooms = [];
  state.joining = new Map();
  state.online = new Set();
  state.roomOnline = {};
  state.roomMembers = {};
  state.roomOnlineUsers = {};
  state.directory = [];
  state.muted = new Set();
  state.typingSent = {};
  for (const who of state.typing.values()) for (const t of who.values()) clearTimeout(t.timer);
  state.typing = new Map();
  ensureConv('public');
  ui.messages.replaceChildren();
  ui.text.value = '';
  hideNotice();
}

export function restoreConvs() {
  let peers = [];
  try { peers = JSON.parse(storeGet(STORE.convs) || '[]'); } catch (e) { peers = []; }
  if (Array.isArray(peers)) {
    for (const p of peers.slice().reverse()) if (typeof p === 'string' && validUsername(p)) touchConv(ensureConv(dmKey(p)));
  }
  const active = storeGet(STORE.active);
  if (active && state.convs.has(active)) state.active = active;
}

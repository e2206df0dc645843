/**
 * How this page signs in, as the server's template says (data-* of <body>; docs/PROTOCOL.md,
 * section 3):
 *   - data-token-url (CHAT_TOKEN_URL): the operator's own application signs people in. The page
 *     shows no form: it asks that URL for a token with the browser's credentials
 *     (POST, credentials: 'include'; the answer is {"token": T}), like Centrifugo's getToken, and
 *     renews the token before its exp: a new token from the same URL, sent on the open socket
 *     ({type: 'refresh'}, answered by 'refreshed'). A socket closed meanwhile (or with 4001, token
 *     expired) reconnects with the new token and resumes from its offsets, as after any reconnect.
 *   - data-accounts (CHAT_ACCOUNTS=1): a name and a password; "Create account" signs up.
 *   - data-dev-login: a name alone (development mode).
 */

import { state, newCid } from './state.js';
import { $, ui } from './dom.js';
import { saveSession } from './storage.js';
import { startSession, expireSession } from './auth.js';
import { connect, send, setConn } from './connection.js';

const RENEW_BEFORE_MS = 60000;        // renew this long before exp (or at half the token's life if shorter)
const RENEW_RETRY_MS = 5000;          // a renewal that failed is tried again after this long
const FETCH_TIMEOUT_MS = 10000;       // give up on the token URL after this long

/** The server's settings, read from the template by setUpSignInScreen() at start. */
export const signin = { tokenUrl: '', accounts: false, devLogin: false };

const renewal = { timer: null, fetching: null };

/** fetchToken(), shared by a renewal and a reconnect that need a token at the same time. */
function newToken() {
  if (!renewal.fetching) renewal.fetching = fetchToken().finally(() => { renewal.fetching = null; });
  return renewal.fetching;
}

/** The token URL failed for a reason that passes (network, 5xx): try again later, stay signed in. */
function transient(message) {
  const e = new Error(message);
  e.transient = true;
  return e;
}

/** {sub, exp} of a JWT, read (not verified: the server does that), or null. */
export function tokenClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part + '='.repeat((4 - part.length % 4) % 4)));
    return claims && typeof claims === 'object' ? claims : null;
  } catch (e) {
    return null;
  }
}

/** A fresh token from the operator's application; throws an Error whose message is for people. */
export async function fetchToken() {
  const abort = typeof AbortController === 'function' ? new AbortController() : null;
  const timer = abort ? setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS) : null;
  let res;
  try {
    res = await fetch(signin.tokenUrl, {
      method: 'POST', credentials: 'include', cache: 'no-store',
      headers: { Accept: 'application/json' }, signal: abort ? abort.signal : undefined,
    });
  } catch (e) {
    throw transient('Cannot reach the sign-in service. Check your connection and try again.');
  } finally {
    clearTimeout(timer);
  }
  if (res.status === 401 || res.status === 403) throw new Error('You are not signed in. Sign in to the application, then come back.');
  let answer = null;
  try { answer = await res.json(); } catch (e) { answer = null; }
  const claims = answer && typeof answer.token === 'string' ? tokenClaims(answer.token) : null;
  if (!res.ok || !claims || typeof claims.sub !== 'string') {
    const why = 'The sign-in service did not give a token (HTTP ' + res.status + '). Try again later.';
    throw res.status >= 500 ? transient(why) : new Error(why);
  }
  return { token: answer.token, user: claims.sub };
}

/** Read the server's settings, and show the sign-in screen they call for. */
export function setUpSignInScreen() {
  const settings = document.body.dataset;
  signin.tokenUrl = settings.tokenUrl || '';
  signin.accounts = settings.accounts === '1';
  signin.devLogin = settings.devLogin === '1';
  const app = !!signin.tokenUrl;
  $('app-signin').hidden = !app;
  ui.loginForm.hidden = app || !(signin.accounts || signin.devLogin);  // no way to sign in: no form
  $('login-password-field').hidden = !signin.accounts;
  $('login-signup').hidden = !signin.accounts;
  $('login-password').required = signin.accounts && !signin.devLogin;
  $('login-lead').textContent = app ? 'Signing you in…'
    : signin.accounts ? 'Sign in, or create an account.'
    : signin.devLogin ? 'Pick a name to start chatting.'
    : 'Sign-in is not set up on this server (CHAT_TOKEN_URL or CHAT_ACCOUNTS).';
  if (app) {
    const link = $('app-signin-link');
    try { link.href = new URL(signin.tokenUrl, location.href).origin + '/'; } catch (e) { link.href = '/'; }
  }
}

/** The token panel: `message`, and when `stopped`, a button to try again (labelled `action`). */
function showAppSignIn(message, stopped, action) {
  $('login-lead').textContent = stopped ? 'Not signed in' : 'Signing you in…';
  $('app-signin-status').textContent = message;
  const retry = $('app-signin-retry');
  retry.textContent = action || 'Try again';
  retry.hidden = !stopped;
  $('app-signin-link').hidden = !stopped;
}

/** Sign in with a token from the operator's application (CHAT_TOKEN_URL). */
export async function signInWithApp() {
  if (state.loginBusy) return;
  state.loginBusy = true;
  showAppSignIn('Getting your token from the application…', false);
  try {
    const { token, user } = await fetchToken();
    startSession(token, user, false);
  } catch (e) {
    showAppSignIn(e.message || String(e), true);
    $('app-signin-retry').focus();
  } finally {
    state.loginBusy = false;
  }
}

/** A session started (or came back from a reload) on state.token: renew it before it expires. */
export function tokenStarted() {
  scheduleRenewal();
}

/** Signed out (`message`: why, for the sign-in screen): no renewal. */
export function tokenStopped(message) {
  cancelRenewal();
  if (signin.tokenUrl) showAppSignIn(message || 'You left the chat.', true, message ? 'Try again' : 'Sign in again');
}

function cancelRenewal() {
  clearTimeout(renewal.timer);
  renewal.timer = null;
}

/** Try tokenLost() again later: the chat shows "Reconnecting in Ns" meanwhile. */
function retryLost() {
  cancelRenewal();
  state.conn.retryAt = Date.now() + RENEW_RETRY_MS;
  renewal.timer = setTimeout(tokenLost, RENEW_RETRY_MS);
  setConn('reconnecting');
}

function scheduleRenewal(delayMs) {
  cancelRenewal();
  if (!signin.tokenUrl || !state.token) return;
  let delay = delayMs;
  if (delay === undefined) {
    const claims = tokenClaims(state.token);
    if (!claims || typeof claims.exp !== 'number') return;
    const now = Date.now();
    const left = claims.exp * 1000 - now;
    const life = typeof claims.iat === 'number' ? claims.exp * 1000 - claims.iat * 1000 : left;
    delay = left - Math.min(RENEW_BEFORE_MS, life / 2);
  }
  renewal.timer = setTimeout(renew, Math.max(0, delay));
}

/** Fetch a new token and hand it to the open socket; the next reconnect uses it in any case. */
async function renew() {
  renewal.timer = null;
  if (!state.token) return;
  const me = state.me;
  try {
    const { token, user } = await newToken();
    if (state.me !== me) return;                  // signed out or in as someone else meanwhile
    if (user !== me) { expireSession(); return; } // another user signed in to the application
    state.token = token;
    saveSession();
    if (!send({ type: 'refresh', token, cid: newCid() })) scheduleRenewal();
    // else: the 'refreshed' answer schedules the next renewal
  } catch (e) {
    if (state.me === me) scheduleRenewal(RENEW_RETRY_MS);
  }
}

/** The server took the new token (frame 'refreshed'). */
export function onRefreshed() {
  scheduleRenewal();
}

/**
 * The token is no longer good: the socket was closed with 4001, or handshakes are refused by a
 * server that is up. With the application's tokens, get a new one and reconnect (the page then
 * resumes from its offsets); otherwise the person signs in again.
 */
export async function tokenLost() {
  cancelRenewal();
  if (!signin.tokenUrl) { expireSession(); return; }
  const me = state.me;
  try {
    const { token, user } = await newToken();
    if (state.me !== me) return;
    if (user !== me) { expireSession(); return; }
    state.token = token;
    saveSession();
    state.conn.attempt = 0;
    state.conn.failedOpens = 0;
    state.conn.upBefore = false;
    scheduleRenewal();
    connect();
  } catch (e) {
    if (state.me !== me) return;
    if (e.transient) retryLost();
    else expireSession(e.message || String(e));
  }
}

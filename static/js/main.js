/**
 * The chat page's entry point (templates/index.html loads it with <script type="module">; native
 * ES modules, no build step, no framework). Start-up: wire the UI events, then resume the session
 * of this tab or show sign-in.
 *
 * Every user-provided string is rendered with textContent / createTextNode, never as HTML (el() in
 * dom.js). The modules call each other only from functions, never while they load: only this module
 * runs code at load time (start() at the bottom), so their import cycles are harmless.
 *
 *   constants  limits, timings, storage keys        state      the one `state` object, cids
 *   util       formatting and checks (pure)         dom        `ui` elements, el(), notices
 *   storage    session/localStorage                 auth       sign in and out
 *   connection the socket, reconnect, send()        frames     one handler per server frame
 *   channels   offsets, `history` requests, gaps    store      conversations and messages
 *   rooms      rooms, who is online, typing         navigation opening a conversation
 *   changes    edit and delete                      composer   input, send, outbox, retry
 *   views      every region but the message list    messageview the message list
 *   signin     how this page signs in: the operator's application (CHAT_TOKEN_URL) and token
 *              renewal, accounts, dev login
 *   format     links and formatting from text       reactions  react frame, chips, picker
 *   mentions   "@" completion in the composer       notify     mentions, notifications, mute
 *   prefs      theme, notification and sound        directory  rooms to find, a room's members
 *
 * Durability (docs/PROTOCOL.md, "Channels, offsets, recovery"):
 *   - state.positions: the highest offset seen per channel ("public", "user:<me>", "room:<name>"),
 *     from live messages, history and replay; kept in localStorage per user (chat.positions.<user>),
 *     so a reload or a new connection sends `resume` from there (frames.js, startChannels).
 *   - a channel this page has not loaded yet gets its recent history (`history`), which also
 *     fills the DM conversations (user:<me> holds every private message to or from me).
 *   - a live message that skips offsets asks `history` for the missing range (requestGap);
 *     what cannot be recovered shows a marker in the conversations it concerns.
 *   - scrolling to the top of a conversation loads older messages (loadOlder).
 *   - within a conversation, messages are ordered by (ts, offset); own messages not yet
 *     acknowledged stay at the bottom (store.js, sortsBefore).
 */

import { LOAD_OLDER_PX, STORE } from './constants.js';
import { state } from './state.js';
import { $, ui, phoneQuery, focusComposer, isAtBottom, scrollToBottom, hideNotice } from './dom.js';
import { storeGet } from './storage.js';
import { signIn, startSession, signOut } from './auth.js';
import { connect, cancelReconnect, setConn } from './connection.js';
import { readActive } from './frames.js';
import { loadOlder } from './channels.js';
import { joinRoom, leaveRoom, sendTyping } from './rooms.js';
import { openDM, setSidebar } from './navigation.js';
import { submitComposer, renderComposerHint, autoGrow } from './composer.js';
import { signin, setUpSignInScreen, signInWithApp, tokenClaims } from './signin.js';
import { renderScreen, renderLoginError, renderLoginBusy, renderSidebar, renderConvList, renderTitle, renderHeader } from './views.js';
import { mentionKey, updateMentions, closeMentions } from './mentions.js';
import { isMuted, setMuted } from './notify.js';
import { wirePrefs } from './prefs.js';
import { requestDirectory } from './directory.js';

export function wire() {
  ui.loginForm.addEventListener('submit', (e) => {
    e.preventDefault();
    signIn(ui.loginName.value.trim(), ui.loginPassword.value);
  });
  $('login-signup').addEventListener('click', () => signIn(ui.loginName.value.trim(), ui.loginPassword.value, true));
  for (const input of [ui.loginName, ui.loginPassword]) {
    input.addEventListener('input', () => {
      if (!ui.loginError.hidden) renderLoginError('');
    });
  }
  $('app-signin-retry').addEventListener('click', signInWithApp);

  ui.signout.addEventListener('click', () => signOut(''));

  ui.dmForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = ui.dmName.value.trim();
    const problem = name ? openDM(name) : 'Type a username.';
    ui.dmError.textContent = problem || '';
    ui.dmError.hidden = !problem;
    ui.dmName.setAttribute('aria-invalid', problem ? 'true' : 'false');
    if (!problem) ui.dmName.value = '';
    else ui.dmName.focus();
  });
  ui.dmName.addEventListener('input', () => {
    ui.dmError.hidden = true;
    ui.dmName.setAttribute('aria-invalid', 'false');
  });

  ui.roomForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = ui.roomName.value.trim();
    const problem = name ? joinRoom(name) : 'Type a room name.';
    ui.roomError.textContent = problem || '';
    ui.roomError.hidden = !problem;
    ui.roomName.setAttribute('aria-invalid', problem ? 'true' : 'false');
    if (problem) ui.roomName.focus();
    else if (state.rooms.includes(name)) ui.roomName.value = '';
  });
  ui.roomName.addEventListener('input', () => {
    ui.roomError.hidden = true;
    ui.roomName.setAttribute('aria-invalid', 'false');
  });
  ui.roomLeave.addEventListener('click', () => {
    const conv = state.convs.get(state.active);
    if (conv && conv.kind === 'room') leaveRoom(conv.room);
  });

  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    submitComposer();
  });
  ui.text.addEventListener('keydown', (e) => {
    if (!e.isComposing && mentionKey(e)) return;
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      submitComposer();
    }
  });
  ui.text.addEventListener('input', () => {
    autoGrow();
    renderComposerHint();
    sendTyping();
    updateMentions();
  });
  ui.text.addEventListener('blur', closeMentions);
  ui.mute.addEventListener('click', () => {
    setMuted(state.active, !isMuted(state.active));
    renderHeader();
    renderConvList();
    renderTitle();
  });
  wirePrefs();
  ui.directoryRefresh.addEventListener('click', () => requestDirectory(true));

  ui.messages.addEventListener('scroll', () => {
    if (isAtBottom()) ui.newPill.hidden = true;
    if (ui.messages.scrollTop <= LOAD_OLDER_PX) loadOlder(0);
  }, { passive: true });
  ui.newPill.addEventListener('click', () => {
    scrollToBottom();
    focusComposer();
  });

  ui.connRetry.addEventListener('click', () => {
    state.conn.attempt = 0;
    connect();
  });
  ui.noticeClose.addEventListener('click', hideNotice);

  ui.sidebarToggle.addEventListener('click', () => setSidebar(!state.sidebarOpen, true));
  ui.sidebarClose.addEventListener('click', () => setSidebar(false, true));
  ui.backdrop.addEventListener('click', () => setSidebar(false, false));
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && state.sidebarOpen && phoneQuery.matches) {
      e.preventDefault();
      setSidebar(false, true);
    }
  });
  phoneQuery.addEventListener('change', () => {
    if (!phoneQuery.matches) state.sidebarOpen = false;
    renderSidebar();
  });

  window.addEventListener('offline', () => {
    if (state.token && state.conn.status === 'reconnecting') { cancelReconnect(); setConn('offline'); }
  });
  window.addEventListener('online', () => {
    if (state.token && (state.conn.status === 'offline' || state.conn.status === 'reconnecting')) {
      state.conn.attempt = 0;
      connect();
    }
  });
  document.addEventListener('visibilitychange', () => {
    if (document.hidden || !state.token) return;
    const conv = state.convs.get(state.active);
    if (conv && conv.unread) { conv.unread = 0; conv.mentions = 0; renderConvList(); renderTitle(); }
    readActive();
  });
  window.addEventListener('resize', autoGrow);
}

export function start() {
  const first = document.querySelector('.server-id');
  state.serverId = first ? first.textContent.trim() : '';
  wire();
  setUpSignInScreen();
  const token = storeGet(STORE.token);
  const user = storeGet(STORE.user);
  const claims = token ? tokenClaims(token) : null;
  // A token from the application that has (nearly) run out: get a new one rather than fail to connect.
  const stale = signin.tokenUrl && !(claims && claims.exp * 1000 > Date.now() + 5000);
  if (token && user && !stale) {
    startSession(token, user, true);
  } else if (signin.tokenUrl) {
    renderScreen();
    signInWithApp();
  } else {
    renderScreen();
    renderLoginBusy();
    ui.loginName.focus();
  }
}

start();

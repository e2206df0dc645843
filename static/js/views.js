/** Rendering of every region but the message list: screens, connection, sidebar lists, header, title. */

import { state } from './state.js';
import { initial, hueOf } from './util.js';
import { ui, phoneQuery, el, announce } from './dom.js';
import { roomKey } from './rooms.js';
import { openDM, openConv } from './navigation.js';
import { renderComposer, renderComposerHint } from './composer.js';
import { renderMessages } from './messageview.js';
import { isMuted } from './notify.js';

export function renderAll() {
  renderServerId();
  renderConn(true);
  renderSidebar();
  renderConvList();
  renderOnline();
  renderHeader();
  renderMessages();
  renderComposer();
  renderTyping();
  renderTitle();
}

export function renderScreen() {
  const signedIn = !!state.token;
  ui.loginScreen.hidden = signedIn;
  ui.app.hidden = !signedIn;
}

export function renderLoginError(message) {
  ui.loginError.textContent = message;
  ui.loginError.hidden = !message;
  ui.loginName.setAttribute('aria-invalid', message ? 'true' : 'false');
}

export function renderLoginBusy() {
  ui.loginSubmit.disabled = state.loginBusy;
  ui.loginSubmit.textContent = state.loginBusy ? 'Signing in…' : 'Sign in';
}

export function renderMe() {
  ui.meName.textContent = state.me || '';
  ui.meAvatar.textContent = initial(state.me || '');
  ui.meAvatar.style.setProperty('--hue', hueOf(state.me || ''));
}

export function renderServerId() {
  if (!state.serverId) return;
  for (const node of document.querySelectorAll('.server-id')) node.textContent = state.serverId;
}

export const CONN_LABELS = { connecting: 'Connecting…', online: 'Online', reconnecting: 'Reconnecting', offline: 'Offline' };

export function renderConn(changed) {
  const c = state.conn;
  let text = CONN_LABELS[c.status] || c.status;
  const down = c.unavailable && c.status === 'reconnecting';
  if (c.status === 'reconnecting') {
    const s = Math.max(0, Math.ceil((c.retryAt - Date.now()) / 1000));
    if (down) text = s > 0 ? 'Server unavailable, retrying in ' + s + 's' : 'Server unavailable, retrying…';
    else text = s > 0 ? 'Reconnecting in ' + s + 's' : 'Reconnecting…';
  }
  ui.conn.dataset.state = c.status;
  // The server of this socket (from its welcome): a hover hint, and a hook for tests.
  if (c.server && c.status === 'online') {
    ui.conn.dataset.server = c.server;
    ui.conn.title = 'Connected to ' + c.server;
  } else {
    delete ui.conn.dataset.server;
    ui.conn.removeAttribute('title');
  }
  if (down) ui.conn.dataset.reason = 'unavailable'; else delete ui.conn.dataset.reason;
  ui.connText.textContent = text;
  ui.connRetry.hidden = !(c.status === 'reconnecting' || (c.status === 'offline' && state.token));
  if (changed) announce('Connection: ' + (down ? 'server unavailable' : (CONN_LABELS[c.status] || c.status)));
  renderComposerHint();
}

export function renderSidebar() {
  const phone = phoneQuery.matches;
  const open = phone && state.sidebarOpen;
  ui.app.classList.toggle('sidebar-open', open);
  ui.backdrop.hidden = !open;
  ui.sidebarToggle.setAttribute('aria-expanded', String(open));
  // On a phone the closed sidebar is off-screen and must not take focus;
  // while it is open, the rest of the page is inert.
  ui.sidebar.inert = phone && !open;
  ui.main.inert = open;
  const anyUnread = [...state.convs.values()].some((c) => c.unread > 0 && c.key !== state.active);
  ui.toggleDot.hidden = !anyUnread;
}

let convListSig = '';

/** The sidebar button of one conversation (public, DM or room). */
export function convButton(conv) {
  const key = conv.key;
  const active = key === state.active;
  const unread = active ? 0 : conv.unread;
  const mentions = active ? 0 : conv.mentions;
  const muted = isMuted(conv.key);
  let icon;
  let label;
  let what;
  if (conv.kind === 'public') {
    icon = el('span', { class: 'conv-icon conv-icon-public', 'aria-hidden': 'true', text: '#' });
    label = 'Public';
    what = 'Public channel';
  } else if (conv.kind === 'room') {
    icon = el('span', { class: 'conv-icon conv-icon-room', 'aria-hidden': 'true', text: '§' });
    label = conv.room;
    what = 'Room ' + conv.room;
  } else {
    icon = el('span', { class: 'avatar avatar-sm', 'aria-hidden': 'true', text: initial(conv.peer) });
    icon.style.setProperty('--hue', hueOf(conv.peer));
    label = conv.peer;
    what = 'Private conversation with ' + conv.peer;
  }
  const btn = el('button', {
    type: 'button',
    class: 'conv' + (active ? ' is-active' : '') + (unread ? ' has-unread' : '') + (muted ? ' is-muted' : ''),
    'data-conv': key,
    'aria-current': active ? 'true' : null,
    'aria-label': what + (unread ? ', ' + unread + ' unread' : '') + (mentions ? ', ' + mentions + (mentions === 1 ? ' mention' : ' mentions') : '')
      + (muted ? ', muted' : ''),
  }, [
    icon,
    el('span', { class: 'conv-name', text: label }),
    muted ? el('span', { class: 'conv-muted', 'aria-hidden': 'true', title: 'Muted', text: '🔕' }) : null,
    mentions ? el('span', { class: 'badge badge-mention', 'aria-hidden': 'true', text: '@' + (mentions > 99 ? '99+' : mentions) }) : null,
    unread ? el('span', { class: 'badge', 'aria-hidden': 'true', text: unread > 99 ? '99+' : String(unread) }) : null,
  ]);
  btn.addEventListener('click', () => openConv(key, true));
  return el('li', null, [btn]);
}

export function renderConvList() {
  // Skip the rebuild when nothing the lists show has changed (messages can come fast).
  const keys = ['public', ...state.order];
  const roomKeys = state.rooms.map(roomKey);
  const sig = state.active + '|' + [...keys, '|', ...roomKeys].map((k) => { const c = state.convs.get(k) || {}; return k + ':' + c.unread + ':' + c.mentions + ':' + isMuted(k); }).join(',');
  if (sig === convListSig && ui.convList.childElementCount) { renderSidebar(); return; }
  convListSig = sig;
  const focusedKey = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.conv : undefined;
  const build = (list) => list.map((k) => state.convs.get(k)).filter(Boolean).map(convButton);
  ui.convList.replaceChildren(...build(keys));
  ui.roomList.replaceChildren(...build(roomKeys));
  if (focusedKey) {
    const again = ui.sidebar.querySelector('.conv-list [data-conv="' + CSS.escape(focusedKey) + '"]');
    if (again) again.focus();
  }
  renderSidebar();
}

let onlineSig = '';

/** "Who is online": the other users online anywhere, by name; a click opens a DM. */
export function renderOnline() {
  const names = [...state.online].sort((a, b) => a.localeCompare(b));
  const sig = names.join(',');
  if (sig === onlineSig && ui.onlineList.childElementCount === names.length) return;
  onlineSig = sig;
  const items = names.map((name) => {
    const avatar = el('span', { class: 'avatar avatar-sm', 'aria-hidden': 'true', text: initial(name) });
    avatar.style.setProperty('--hue', hueOf(name));
    const btn = el('button', {
      type: 'button', class: 'conv', 'data-user': name,
      'aria-label': name + ', online, open a private conversation',
    }, [avatar, el('span', { class: 'conv-name', text: name }), el('span', { class: 'online-dot', 'aria-hidden': 'true' })]);
    btn.addEventListener('click', () => openDM(name));
    return el('li', null, [btn]);
  });
  ui.onlineList.replaceChildren(...items);
  ui.onlineEmpty.hidden = names.length > 0;
}

/** "bob is typing…" under the list, for the open conversation. */
export function renderTyping() {
  const who = state.typing.get(state.active);
  const names = who ? [...who.keys()].sort() : [];
  let text = '';
  if (names.length === 1) text = names[0] + ' is typing…';
  else if (names.length === 2) text = names[0] + ' and ' + names[1] + ' are typing…';
  else if (names.length > 2) text = 'Several people are typing…';
  if (ui.typing.textContent !== text) ui.typing.textContent = text;
}

export function renderHeader() {
  const conv = state.convs.get(state.active);
  ui.roomLeave.hidden = conv.kind !== 'room';
  const muted = isMuted(conv.key);
  ui.mute.setAttribute('aria-pressed', String(muted));
  ui.mute.textContent = muted ? 'Unmute' : 'Mute';
  ui.mute.title = muted ? 'Unmute this conversation' : 'Mute this conversation';
  ui.mute.setAttribute('aria-label', ui.mute.title);
  if (conv.kind === 'public') {
    ui.convTitle.textContent = 'Public';
    ui.convSub.textContent = 'Everyone online';
    ui.messages.setAttribute('aria-label', 'Messages in Public');
  } else if (conv.kind === 'room') {
    const n = state.roomOnline[conv.room];
    ui.convTitle.textContent = conv.room;
    ui.convSub.textContent = 'Room' + (typeof n === 'number' ? ' · ' + n + ' online' : '');
    ui.roomLeave.setAttribute('aria-label', 'Leave room ' + conv.room);
    ui.messages.setAttribute('aria-label', 'Messages in room ' + conv.room);
  } else {
    ui.convTitle.textContent = conv.peer;
    ui.convSub.textContent = 'Private conversation';
    ui.messages.setAttribute('aria-label', 'Messages with ' + conv.peer);
  }
}

export function renderTitle() {
  let total = 0;
  for (const c of state.convs.values()) if (!isMuted(c.key)) total += c.unread;
  document.title = (total ? '(' + total + ') ' : '') + 'Chat' + (state.me ? ' · ' + state.me : '');
}

/** The page's elements (`ui`), `el()` to build DOM from text (never HTML), scrolling, notices. */

import { AT_BOTTOM_PX } from './constants.js';

export const $ = (id) => document.getElementById(id);

export const ui = {
  loginScreen: $('login-screen'),
  loginForm: $('login-form'),
  loginName: $('login-name'),
  loginPassword: $('login-password'),
  loginError: $('login-error'),
  loginSubmit: $('login-submit'),
  app: $('app'),
  main: $('main'),
  sidebar: $('sidebar'),
  sidebarToggle: $('sidebar-toggle'),
  sidebarClose: $('sidebar-close'),
  toggleDot: $('toggle-dot'),
  backdrop: $('backdrop'),
  convList: $('conv-list'),
  dmForm: $('dm-form'),
  dmName: $('dm-name'),
  dmError: $('dm-error'),
  roomForm: $('room-form'),
  roomName: $('room-name'),
  roomError: $('room-error'),
  roomList: $('room-list'),
  onlineList: $('online-list'),
  onlineEmpty: $('online-empty'),
  roomLeave: $('room-leave'),
  mute: $('mute'),
  themeToggle: $('theme-toggle'),
  notifyToggle: $('notify-toggle'),
  soundToggle: $('sound-toggle'),
  mentionList: $('mention-list'),
  directoryList: $('directory-list'),
  directoryEmpty: $('directory-empty'),
  directoryRefresh: $('directory-refresh'),
  membersSection: $('members-section'),
  membersTitle: $('members-title'),
  memberList: $('member-list'),
  typing: $('typing'),
  meName: $('me-name'),
  meAvatar: $('me-avatar'),
  signout: $('signout'),
  convTitle: $('conv-title'),
  convSub: $('conv-sub'),
  conn: $('conn'),
  connText: $('conn-text'),
  connRetry: $('conn-retry'),
  connSr: $('conn-sr'),
  notice: $('notice'),
  noticeText: $('notice-text'),
  noticeClose: $('notice-close'),
  messages: $('messages'),
  empty: $('empty'),
  emptyTitle: $('empty-title'),
  emptyText: $('empty-text'),
  newPill: $('new-pill'),
  composer: $('composer'),
  text: $('composer-text'),
  send: $('send'),
  hint: $('composer-hint'),
  count: $('composer-count'),
  // First row of the message list: "Loading earlier messages…" / "Beginning of conversation".
  topRow: el('div', { class: 'history-row' }),
};

export const phoneQuery = window.matchMedia('(max-width: 700px)');
// On touch screens, do not focus the composer by ourselves: it would pop the keyboard up.
export const touchQuery = window.matchMedia('(pointer: coarse)');
export const focusComposer = () => { if (!touchQuery.matches) ui.text.focus(); };

/** Create an element. `props.text` sets textContent; never sets HTML. */
export function el(tag, props, children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') node.textContent = String(v);
      else if (k === 'class') node.className = v;
      else if (k === 'on') for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
  }
  if (children) for (const c of children) if (c) node.append(c);
  return node;
}

export function isAtBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight <= AT_BOTTOM_PX;
}

export function scrollToBottom() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
  ui.newPill.hidden = true;
}

/** Say something to screen-reader users (a visually hidden live region). */
export function announce(text) {
  ui.connSr.textContent = text;
}

let noticeTimer = null;
export function showNotice(text) {
  ui.noticeText.textContent = text;
  ui.notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(hideNotice, 8000);
}
export function hideNotice() {
  clearTimeout(noticeTimer);
  ui.notice.hidden = true;
  ui.noticeText.textContent = '';
}

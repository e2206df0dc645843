/** Opening a conversation (a DM by name, a room, Public) and the phone sidebar. */

import { state } from './state.js';
import { validUsername } from './util.js';
import { ui, phoneQuery, focusComposer, isAtBottom } from './dom.js';
import { saveConvs } from './storage.js';
import { readActive } from './frames.js';
import { maybeLoadOlder } from './channels.js';
import { dmKey, ensureConv, touchConv } from './store.js';
import { refreshRoomWho } from './rooms.js';
import { renderComposer } from './composer.js';
import { renderSidebar, renderConvList, renderTyping, renderHeader, renderTitle } from './views.js';
import { renderMessages } from './messageview.js';
import { closeMentions } from './mentions.js';
import { renderMembers } from './directory.js';

/** Open a private conversation with `name` (from the sidebar input or a name click). */
export function openDM(name) {
  if (!validUsername(name)) return 'Not a valid username (1–32 letters, digits, "_", "." or "-").';
  if (name === state.me) return 'That is you. Pick someone else.';
  const conv = ensureConv(dmKey(name));
  touchConv(conv);
  openConv(conv.key, true);
  return null;
}

export function openConv(key, focusAfter) {
  const prev = state.convs.get(state.active);
  if (prev) {
    prev.draft = ui.text.value;
    prev.scroll = isAtBottom() ? null : ui.messages.scrollTop;
  }
  state.active = key;
  const conv = state.convs.get(key);
  conv.unread = 0;
  conv.mentions = 0;
  closeMentions();
  saveConvs();
  if (phoneQuery.matches) state.sidebarOpen = false;
  renderHeader();
  renderMessages();
  renderConvList();
  renderComposer();
  renderSidebar();
  renderTitle();
  renderTyping();
  renderMembers();
  if (conv.kind === 'room') refreshRoomWho(true);
  readActive();
  maybeLoadOlder(0);
  if (focusAfter) focusComposer();
}

export function setSidebar(open, focusAfter) {
  state.sidebarOpen = open;
  renderSidebar();
  if (!focusAfter) return;
  if (open) {
    const current = ui.sidebar.querySelector('.conv-list .conv.is-active') || ui.convList.querySelector('.conv');
    if (current) current.focus();
  } else {
    ui.sidebarToggle.focus();
  }
}

/** The message list: items built once per message from text nodes, kept in place on re-render. */

import { GROUP_WINDOW_MS, GAP_TEXT } from './constants.js';
import { state } from './state.js';
import { fmtTime, fmtFull, dayStamp, dayLabel, hueOf } from './util.js';
import { ui, el, announce, isAtBottom, scrollToBottom } from './dom.js';
import { channelOfConv } from './channels.js';
import { openDM } from './navigation.js';
import { sendChange, startEdit } from './changes.js';
import { retryMessage } from './composer.js';
import { renderText } from './format.js';
import { buildReactionBar, renderReactions } from './reactions.js';
import { mentionsMe } from './notify.js';

/**
 * Re-render the message list of the open conversation from its cached nodes. `keepScroll`:
 * the same conversation changed; keep the reader at the bottom if they were, else keep the
 * message at the top of the view where it was (messages prepended above it do not move it).
 */
export function renderMessages(keepScroll) {
  const conv = state.convs.get(state.active);
  const list = ui.messages;
  const anchor = keepScroll ? captureAnchor() : null;
  // Do not let a screen reader re-read the whole list on a conversation switch.
  list.setAttribute('aria-live', 'off');
  const nodes = [ui.topRow];
  let prev = null;
  let afterMarker = false;
  for (const m of conv.messages) {
    if (!m.el) buildItemNode(m, prev, afterMarker);
    if (m.sepEl) nodes.push(m.sepEl);
    nodes.push(m.el);
    if (m.marker) afterMarker = true;
    else { prev = m; afterMarker = false; }
  }
  // Move, add and remove only what changed: nodes that stay keep their place (and focus).
  const children = list.children;
  for (let k = 0; k < nodes.length; k++) {
    if (children[k] !== nodes[k]) list.insertBefore(nodes[k], children[k] || null);
  }
  while (children.length > nodes.length) list.lastElementChild.remove();
  requestAnimationFrame(() => list.setAttribute('aria-live', 'polite'));
  renderTopRow();
  renderEmpty();
  if (keepScroll) {
    restoreAnchor(anchor);
  } else {
    ui.newPill.hidden = true;
    if (conv.scroll === null || conv.scroll === undefined) scrollToBottom();
    else list.scrollTop = conv.scroll;
  }
}

/** The conversation item (message or marker) each node of the list shows. */
export const itemOf = new WeakMap();

/**
 * Where the reader is: at the bottom, or the first item in view and where its bottom edge
 * is. An item, not a node: its node may be rebuilt when its neighbours change (it may lose
 * its name header or day separator, which is why its bottom edge, not its top, is kept).
 */
export function captureAnchor() {
  const list = ui.messages;
  if (isAtBottom()) return { bottom: true };
  const top = list.getBoundingClientRect().top;
  for (const node of list.children) {
    if (node === ui.topRow || node.getBoundingClientRect().bottom <= top) continue;
    // A day separator belongs to the message after it, which may lose it when rebuilt.
    const shown = itemOf.has(node) ? node : node.nextElementSibling;
    const item = shown ? itemOf.get(shown) : undefined;
    if (!item) break;
    return { item, delta: shown.getBoundingClientRect().bottom - top, scrollTop: list.scrollTop };
  }
  return { scrollTop: list.scrollTop };
}

export function restoreAnchor(anchor) {
  const list = ui.messages;
  if (!anchor || anchor.bottom) { scrollToBottom(); return; }
  const node = anchor.item ? anchor.item.el : null;
  if (node && node.isConnected) {
    list.scrollTop += node.getBoundingClientRect().bottom - list.getBoundingClientRect().top - anchor.delta;
  } else {
    list.scrollTop = anchor.scrollTop;
  }
}

/** The first row of the list: older messages loading, or the start of the channel reached. */
export function renderTopRow() {
  const conv = state.convs.get(state.active);
  let text = '';
  let mode = '';
  if (conv && state.me) {
    const ch = channelOfConv(conv);
    if (state.loadingOlder[ch]) { text = 'Loading earlier messages…'; mode = 'loading'; }
    else if (state.atStart[ch] && conv.messages.some((m) => !m.marker)) { text = 'Beginning of conversation'; mode = 'start'; }
  }
  // Always there, with a fixed height: its text changing never moves the messages.
  ui.topRow.textContent = text;
  ui.topRow.dataset.state = mode;
}

export function renderEmpty() {
  const conv = state.convs.get(state.active);
  const empty = conv.messages.length === 0 && !state.loadingOlder[channelOfConv(conv)];
  ui.empty.hidden = !empty;
  if (!empty) return;
  if (conv.kind === 'public') {
    ui.emptyTitle.textContent = 'Welcome to Public';
    ui.emptyText.textContent = 'Messages here reach everyone who is online. Say hello!';
  } else if (conv.kind === 'room') {
    ui.emptyTitle.textContent = 'Welcome to ' + conv.room;
    ui.emptyText.textContent = 'Only the members of this room read what is written here.';
  } else {
    ui.emptyTitle.textContent = 'You and ' + conv.peer;
    ui.emptyText.textContent = 'Only the two of you can read this conversation.';
  }
}

/**
 * Build the DOM of one item of a conversation: a message (and the day separator before it,
 * if any), or a marker where messages could not be recovered. `prev`: the previous message;
 * `afterMarker`: a marker is between them.
 * Grouping: a message follows the previous one without a header when it is
 * from the same sender, on the same day, within GROUP_WINDOW_MS, with no marker between.
 */
export function buildItemNode(m, prev, afterMarker) {
  if (m.system) {
    m.sepEl = null;
    m.el = el('div', { class: 'sys-line', text: m.text });
  } else if (m.marker) {
    m.sepEl = null;
    m.el = el('div', { class: 'day-sep gap-sep', role: 'status' }, [el('span', { text: GAP_TEXT })]);
  } else {
    buildMessageNode(m, prev, afterMarker);
  }
  itemOf.set(m.el, m);
  return m.el;
}

export function buildMessageNode(m, prev, afterMarker) {
  const newDay = !prev || dayStamp(prev.ts) !== dayStamp(m.ts);
  const grouped = !newDay && !afterMarker && prev && prev.from === m.from && m.ts - prev.ts < GROUP_WINDOW_MS;
  const conv = state.convs.get(m.conv);

  m.sepEl = newDay
    ? el('div', { class: 'day-sep', role: 'separator' }, [el('span', { text: dayLabel(m.ts) })])
    : null;

  let head = null;
  if (!grouped) {
    const time = el('time', { class: 'msg-head-time' });
    m.headTime = time;
    if (m.own) {
      head = null;                 // own messages: aligned right, no name header
    } else {
      const name = conv && (conv.kind === 'public' || conv.kind === 'room')
        ? el('button', {
          type: 'button', class: 'msg-from msg-from-btn', text: m.from,
          title: 'Message ' + m.from + ' privately',
          'aria-label': m.from + ', open a private conversation',
        })
        : el('span', { class: 'msg-from', text: m.from });
      if (name.tagName === 'BUTTON') name.addEventListener('click', () => openDM(m.from));
      name.style.setProperty('--hue', hueOf(m.from));
      head = el('div', { class: 'msg-head' }, [name, time]);
    }
  } else {
    m.headTime = null;
  }

  const time = el('time', { class: 'msg-time' });
  const status = el('span', { class: 'msg-status' });
  const errText = el('span', { class: 'msg-error-text' });
  const retry = el('button', { type: 'button', class: 'link-btn msg-retry', text: 'Retry' });
  retry.addEventListener('click', () => retryMessage(m));
  const error = el('div', { class: 'msg-error' }, [errText, ' ', retry]);
  const textEl = el('div', { class: 'msg-text' });
  const edited = el('span', { class: 'msg-edited', text: 'edited' });
  // Own messages: edit and delete, as buttons (keyboard reachable), shown once the server has them.
  const editBtn = el('button', { type: 'button', class: 'link-btn msg-edit', text: 'Edit', 'aria-label': 'Edit message' });
  const delBtn = el('button', { type: 'button', class: 'link-btn msg-delete', text: 'Delete', 'aria-label': 'Delete message' });
  editBtn.addEventListener('click', () => startEdit(m));
  delBtn.addEventListener('click', () => { if (sendChange(m, 'delete')) delBtn.disabled = true; });
  // Every message: react, and copy its text (as typed, without the formatting).
  const reactions = buildReactionBar(m);
  const copyBtn = el('button', { type: 'button', class: 'link-btn msg-copy', text: 'Copy', 'aria-label': 'Copy message text' });
  copyBtn.addEventListener('click', () => copyText(m, copyBtn));
  const actions = el('div', { class: 'msg-actions' }, [
    reactions.openBtn, ' ', copyBtn, m.own ? ' ' : null, m.own ? editBtn : null, m.own ? ' ' : null, m.own ? delBtn : null,
  ]);

  const body = el('div', { class: 'bubble' }, [
    // The sender, for screen readers, on grouped messages that have no visible header.
    grouped || m.own ? el('span', { class: 'sr-only', text: (m.own ? 'You' : m.from) + ': ' }) : null,
    textEl,
  ]);

  m.el = el('div', { class: 'msg' }, [
    head,
    el('div', { class: 'msg-row' }, [body, el('div', { class: 'msg-meta' }, [edited, time, status])]),
    reactions.chips,
    actions,
    reactions.picker,
    error,
  ]);
  m.editor = null;
  m.shownText = null;
  m.refs = { time, status, error, errText, retry, textEl, edited, editBtn, delBtn, actions, reactions };
  m.grouped = !!grouped;
  updateMessageNode(m);
  return m.el;
}

export const STATUS_TEXT = {
  queued: 'waiting for connection…', pending: 'sending…', retrying: 'server busy, retrying…', sent: '', failed: 'not sent',
};

/** Refresh what can change on a message: status, time, error. */
export function updateMessageNode(m) {
  if (!m.el) return;
  const { time, status, error, errText, retry, textEl, edited, actions } = m.refs;
  m.el.className = 'msg' + (m.own ? ' is-own' : '') + (m.grouped ? ' is-grouped' : '') + ' is-' + m.status
    + (m.deleted ? ' is-deleted' : '') + (m.edited && !m.deleted ? ' is-edited' : '')
    + (!m.own && !m.deleted && mentionsMe(m) ? ' is-mention' : '');
  // Text nodes only: a message's text never becomes markup (format.js builds links and emphasis).
  const shown = m.deleted ? null : m.text;
  if (m.shownText !== shown || shown === null) {
    if (shown === null) textEl.textContent = 'message deleted';
    else renderText(textEl, shown, state.me);
    m.shownText = shown;
  }
  edited.hidden = !m.edited || !!m.deleted;
  actions.hidden = !(m.id && m.status === 'sent' && !m.deleted && !m.editor);
  if (actions.hidden) m.refs.reactions.picker.hidden = true;
  renderReactions(m);
  m.el.dataset.id = m.id || '';
  const hhmm = fmtTime(m.ts);
  const full = fmtFull(m.ts);
  for (const t of [time, m.headTime]) {
    if (!t) continue;
    t.textContent = hhmm;
    t.title = full;
    t.dateTime = new Date(m.ts).toISOString();
  }
  status.textContent = STATUS_TEXT[m.status] || '';
  status.hidden = !status.textContent;
  if (m.status === 'sent' && m.own && m.receipt) {
    const read = m.receipt === 'read';
    status.textContent = read ? '✓✓ read' : '✓✓';
    status.hidden = false;
    status.title = (read ? 'Read by ' : 'Delivered to ') + (m.to || 'them');
    status.setAttribute('aria-label', read ? 'read' : 'delivered');
    m.el.classList.add(read ? 'is-read' : 'is-delivered');
  } else if (m.status === 'sent' && m.own) {
    status.textContent = '✓';
    status.hidden = false;
    status.title = 'Delivered to the server';
    status.setAttribute('aria-label', 'sent');
  } else {
    status.removeAttribute('title');
    status.removeAttribute('aria-label');
  }
  error.hidden = m.status !== 'failed';
  errText.textContent = m.status === 'failed' ? (m.error || 'Not sent.') : '';
  retry.hidden = m.status !== 'failed';
}

/** Copy the text of `m` (as typed) to the clipboard; the button says whether it worked. */
async function copyText(m, btn) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(m.text);
    ok = true;
  } catch (e) {
    // No clipboard API (a page not served over https or from localhost): the old way.
    const area = el('textarea', { class: 'sr-only', 'aria-hidden': 'true' });
    area.value = m.text;
    document.body.append(area);
    area.select();
    try { ok = document.execCommand('copy'); } catch (e2) { ok = false; }
    area.remove();
  }
  btn.textContent = ok ? 'Copied' : 'Copy failed';
  announce(ok ? 'Message copied' : 'Could not copy the message');
  setTimeout(() => { btn.textContent = 'Copy'; }, 1500);
}

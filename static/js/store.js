/** Conversations and their messages: keys, ingest of message frames, ordering, unread counts. */

import { MAX_MESSAGES_PER_CONV, ROOM_PREFIX } from './constants.js';
import { state } from './state.js';
import { isOffset } from './util.js';
import { ui, isAtBottom, scrollToBottom } from './dom.js';
import { saveConvs } from './storage.js';
import { onReceipt, sendRead } from './frames.js';
import { knownChannel, channelOfConv, setPosition } from './channels.js';
import { roomKey, stopTyping } from './rooms.js';
import { recordChange, applyKnownChange } from './changes.js';
import { recordReaction } from './reactions.js';
import { renderConvList, renderTitle } from './views.js';
import { renderMessages, renderTopRow, renderEmpty, buildItemNode, updateMessageNode } from './messageview.js';
import { mentionsMe, notifyMessage } from './notify.js';
import { openConv } from './navigation.js';

export const dmKey = (user) => 'dm:' + user;

/** Conversation key of an incoming message: "public", or "dm:<the other party>". */
export function convKeyForMessage(f) {
  if (f.kind === 'public') return 'public';
  if (f.kind === 'private') {
    const other = f.from === state.me ? f.to : f.from;    // from == me: sent by me (another tab, or history)
    return typeof other === 'string' && other ? dmKey(other) : null;
  }
  if (f.kind === 'room') {
    // Only rooms this page knows: a late copy after leaving must not bring the room back.
    return typeof f.room === 'string' && state.rooms.includes(f.room) ? roomKey(f.room) : null;
  }
  return null;
}

export function newConv(key) {
  if (key === 'public') {
    return { key, kind: 'public', peer: null, title: 'Public', messages: [], unread: 0, mentions: 0, lastTs: 0, scroll: null, draft: '' };
  }
  if (key.startsWith(ROOM_PREFIX)) {
    const room = key.slice(ROOM_PREFIX.length);
    return { key, kind: 'room', peer: null, room, title: room, messages: [], unread: 0, mentions: 0, lastTs: 0, scroll: null, draft: '' };
  }
  const peer = key.slice(3);
  return { key, kind: 'dm', peer, title: peer, messages: [], unread: 0, mentions: 0, lastTs: 0, scroll: null, draft: '' };
}

export function ensureConv(key) {
  let conv = state.convs.get(key);
  if (!conv) {
    conv = newConv(key);
    state.convs.set(key, conv);
    if (conv.kind === 'dm') state.order.push(key);
  }
  return conv;
}

/** Move a DM to the top of the list. */
export function touchConv(conv) {
  if (conv.kind !== 'dm') return;
  const i = state.order.indexOf(conv.key);
  if (i > 0) { state.order.splice(i, 1); state.order.unshift(conv.key); }
  else if (i < 0) state.order.unshift(conv.key);
}

/** Put a DM that history brought among the others by its latest message. */
export function placeByActivity(conv) {
  if (!conv || conv.kind !== 'dm') return;
  const i = state.order.indexOf(conv.key);
  if (i >= 0) state.order.splice(i, 1);
  let j = state.order.findIndex((k) => state.convs.get(k).lastTs < conv.lastTs);
  if (j < 0) j = state.order.length;
  state.order.splice(j, 0, conv.key);
}

/**
 * A message frame (live, replayed, or from history) into its conversation. Returns the new
 * message, or null: a copy of one shown already (by `id`; then its offset is learned if it
 * lacked one: own private messages are acked without echo), an own message waiting for its
 * echo, or a kind this page does not show.
 */
export function ingest(f, source) {
  if (f.id === undefined || f.id === null) return null;
  if (typeof f.from !== 'string') return null;
  const react = f.kind === 'react' || f.kind === 'unreact';
  if (typeof f.text !== 'string' && f.kind !== 'delete' && !react) return null;
  const ch = typeof f.channel === 'string' ? f.channel : null;
  const offset = isOffset(f.offset) ? f.offset : null;
  if (ch && offset !== null && knownChannel(ch)) {
    setPosition(ch, offset);
    if (!(state.oldest[ch] <= offset)) state.oldest[ch] = offset;
  }
  if (f.kind === 'edit' || f.kind === 'delete') {
    // A change to another message: applied to it (now, or when it is loaded), never shown itself.
    if (typeof f.ref === 'string' || typeof f.ref === 'number') {
      recordChange(String(f.ref), f.kind, f.text, typeof f.ts === 'number' ? f.ts : Date.now());
    }
    return null;
  }
  if (react) {
    // A reaction to another message: counted on it (now, or when it is loaded), never shown itself.
    if (typeof f.ref === 'string' || typeof f.ref === 'number') {
      recordReaction(String(f.ref), f.emoji, f.from, f.kind === 'react', typeof f.ts === 'number' ? f.ts : Date.now());
    }
    return null;
  }
  const id = String(f.id);
  const key = convKeyForMessage(f);
  const shown = state.seen.get(id);
  if (shown) {
    if (shown.offset === null && offset !== null && shown.conv === key) {
      shown.offset = offset;
      reposition(shown);
    }
    return null;
  }
  if (!key) return null;                                // a kind this page does not show yet
  const ts = typeof f.ts === 'number' ? f.ts : Date.now();
  const own = f.from === state.me;
  if (own) {
    // Our own message may come back before its ack (or after its socket died): confirm our copy.
    const mine = findPendingEcho(key, f.text);
    if (mine) {
      mine.offset = offset;
      confirmMessage(mine, id, ts);
      return null;
    }
  }
  const msg = {
    id, cid: null, kind: f.kind, from: f.from, to: typeof f.to === 'string' ? f.to : null,
    room: typeof f.room === 'string' ? f.room : null, text: f.text, ts, offset, own, status: 'sent', error: null,
  };
  state.seen.set(id, msg);
  applyKnownChange(msg);
  if (source === 'live') stopTyping(key, f.from);     // their message is what they were typing
  insertMessage(key, msg, source);
  if (key === state.active) sendRead(msg);
  return msg;
}

/** Own messages not acknowledged yet (no id): they stay at the bottom, in sending order. */
export const isUnconfirmed = (m) => !m.marker && m.own && !m.id;

/** Order within a conversation: by (ts, offset); unconfirmed own messages last. */
export function sortsBefore(a, b) {
  const ua = isUnconfirmed(a);
  const ub = isUnconfirmed(b);
  if (ua !== ub) return ub;
  if (ua) return false;
  if (a.ts !== b.ts) return a.ts < b.ts;
  const oa = a.offset === null || a.offset === undefined ? Infinity : a.offset;
  const ob = b.offset === null || b.offset === undefined ? Infinity : b.offset;
  return oa < ob;
}

/** Insert `item` into its sorted place (searching from the end, where most land); its index. */
export function insertSorted(conv, item) {
  let i = conv.messages.length;
  while (i > 0 && sortsBefore(item, conv.messages[i - 1])) i--;
  conv.messages.splice(i, 0, item);
  return i;
}

/** The nodes from index `i` to the next message (included) depend on what precedes them. */
export function invalidateFrom(conv, i) {
  for (let k = i; k < conv.messages.length; k++) {
    const m = conv.messages[k];
    m.el = null;
    if (!m.marker) break;
  }
}

/** Move `m` if its sort key changed (an ack's ts, a learned offset). */
export function reposition(m) {
  const conv = state.convs.get(m.conv);
  if (!conv) return;
  const list = conv.messages;
  const i = list.indexOf(m);
  if (i < 0) return;
  if ((i === 0 || !sortsBefore(m, list[i - 1])) && (i === list.length - 1 || !sortsBefore(list[i + 1], m))) return;
  list.splice(i, 1);
  invalidateFrom(conv, i);
  const j = insertSorted(conv, m);
  m.el = null;
  invalidateFrom(conv, j + 1);
  if (m.conv === state.active) renderMessages(true);
}

/** Our own message sent on the wire and not acked (pending, or failed with its socket), with this text. */
export function findPendingEcho(key, text) {
  for (const m of state.pending.values()) {
    if (m.conv === key && m.text === text && !m.id) return m;
  }
  const conv = state.convs.get(key);
  if (!conv) return null;
  for (let i = conv.messages.length - 1; i >= 0; i--) {
    const m = conv.messages[i];
    if (m.own && !m.id && m.status === 'failed' && m.text === text) return m;
  }
  return null;
}

export function confirmMessage(m, id, ts) {
  clearTimeout(m.ackTimer);
  if (m.cid) state.pending.delete(m.cid);
  m.id = id || m.id;
  if (m.id) state.seen.set(m.id, m);
  m.ts = ts;
  m.status = 'sent';
  m.error = null;
  applyKnownChange(m);
  updateMessageNode(m);
  reposition(m);
  const early = m.id ? state.earlyReceipts.get(m.id) : undefined;
  if (early !== undefined) {
    state.earlyReceipts.delete(m.id);
    onReceipt({ type: 'receipt', id: m.id, status: early });
  }
}

/**
 * Add a message to its conversation, in order. Live ones (and our own, source 'send') are
 * rendered at once; history is rendered by its caller, in one go (onHistory).
 */
export function insertMessage(key, msg, source) {
  const conv = ensureConv(key);
  msg.conv = key;
  msg.el = null;
  msg.sepEl = null;
  const i = insertSorted(conv, msg);
  conv.lastTs = Math.max(conv.lastTs, msg.ts);
  if (source === 'history') {
    invalidateFrom(conv, i + 1);
    return;
  }
  const isActive = key === state.active;
  const wasAtBottom = isActive && isAtBottom();
  touchConv(conv);
  let rebuild = i !== conv.messages.length - 1;
  if (rebuild) invalidateFrom(conv, i + 1);
  // Trim the oldest, unless the reader is up there (reading what scrolling loaded).
  if (!isActive || wasAtBottom) rebuild = trimConv(conv) || rebuild;

  if (!msg.own && (!isActive || document.hidden)) {
    conv.unread += 1;
    if (mentionsMe(msg)) conv.mentions += 1;
  }
  if (source === 'live') notifyMessage(msg, conv, (k) => openConv(k, true));

  if (isActive) {
    if (rebuild) {
      renderMessages(true);
    } else {
      const prev = conv.messages[i - 1];
      buildItemNode(msg, prevMessage(conv, i), !!(prev && prev.marker));
      if (msg.sepEl) ui.messages.append(msg.sepEl);
      ui.messages.append(msg.el);
      renderEmpty();
      renderTopRow();
    }
    if (wasAtBottom || source === 'send') scrollToBottom();
    else ui.newPill.hidden = false;
  }
  renderConvList();
  renderTitle();
  if (key !== 'public') saveConvs();
}

/** The last message (not marker) before index `i`. */
export function prevMessage(conv, i) {
  for (let k = i - 1; k >= 0; k--) if (!conv.messages[k].marker) return conv.messages[k];
  return null;
}

/** Drop the oldest messages beyond MAX_MESSAGES_PER_CONV; true if any went. */
export function trimConv(conv) {
  let trimmed = false;
  while (conv.messages.length > MAX_MESSAGES_PER_CONV && !isUnconfirmed(conv.messages[0])) {
    const old = conv.messages.shift();
    if (old.id && state.seen.get(old.id) === old) state.seen.delete(old.id);   // history may bring it back
    trimmed = true;
  }
  if (!trimmed) return false;
  invalidateFrom(conv, 0);
  if (conv.kind === 'public' || conv.kind === 'room') {
    const ch = channelOfConv(conv);
    const first = conv.messages.find((m) => !m.marker && isOffset(m.offset));
    if (first) { state.oldest[ch] = first.offset; state.atStart[ch] = false; }
  }
  return true;
}

export function removeMessage(m) {
  const conv = state.convs.get(m.conv);
  if (!conv) return;
  const i = conv.messages.indexOf(m);
  if (i < 0) return;
  conv.messages.splice(i, 1);
  clearTimeout(m.ackTimer);
  if (m.cid && state.pending.get(m.cid) === m) state.pending.delete(m.cid);
  if (m.id && state.seen.get(m.id) === m) state.seen.delete(m.id);
  invalidateFrom(conv, i);
  if (m.conv === state.active) renderMessages(true);
}

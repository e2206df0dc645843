/** Rooms (join, leave, membership), who is online, typing hints. */

import { PUBLIC, RECENT_ROOM, MAX_ONLINE, TYPING_SEND_MS, TYPING_SHOW_MS, ROOM_PREFIX } from './constants.js';
import { state, newCid } from './state.js';
import { validUsername, validRoom } from './util.js';
import { ui, isAtBottom, scrollToBottom, showNotice } from './dom.js';
import { saveRooms } from './storage.js';
import { send } from './connection.js';
import { roomChannel, requestHistory } from './channels.js';
import { dmKey, ensureConv, insertSorted, invalidateFrom } from './store.js';
import { openConv } from './navigation.js';
import { renderConvList, renderOnline, renderTyping, renderHeader, renderTitle } from './views.js';
import { renderMessages } from './messageview.js';
import { onRoomWho, requestDirectory } from './directory.js';

export const roomKey = (room) => ROOM_PREFIX + room;

/** Remember `room` as joined (its conversation, the sidebar list, localStorage). */
export function addRoom(room) {
  if (!state.rooms.includes(room)) {
    state.rooms.push(room);
    state.rooms.sort();
    saveRooms();
  }
  return ensureConv(roomKey(room));
}

/** Forget `room` (left here or in another session): its conversation, channel and position. */
export function removeRoom(room) {
  requestDirectory();
  const key = roomKey(room);
  const ch = roomChannel(room);
  const i = state.rooms.indexOf(room);
  if (i >= 0) state.rooms.splice(i, 1);
  saveRooms();
  const conv = state.convs.get(key);
  if (conv) {
    for (const m of conv.messages) {
      clearTimeout(m.ackTimer);
      if (m.cid && state.pending.get(m.cid) === m) state.pending.delete(m.cid);
      if (m.id && state.seen.get(m.id) === m) state.seen.delete(m.id);
    }
    state.outbox = state.outbox.filter((m) => m.conv !== key);
    state.convs.delete(key);
  }
  delete state.positions[ch];
  state.positionsDirty = true;
  delete state.loaded[ch];
  delete state.oldest[ch];
  delete state.atStart[ch];
  delete state.loadingOlder[ch];
  delete state.roomOnline[room];
  stopTyping(key);
  if (state.active === key) openConv(PUBLIC, false);
  else { renderConvList(); renderTitle(); }
}

/** The sidebar's "Join or create a room": returns a problem to show, or null. */
export function joinRoom(name) {
  if (!validRoom(name)) return 'Not a valid room name (1–32 letters, digits, "_", "." or "-").';
  if (state.rooms.includes(name)) { openConv(roomKey(name), true); return null; }
  if (!state.conn.ready) return 'Not connected: try again when the connection is back.';
  const cid = newCid();
  if (!send({ type: 'join', room: name, cid })) return 'Not connected: try again when the connection is back.';
  state.joining.set(cid, name);
  return null;
}

export function leaveRoom(room) {
  if (!state.conn.ready || !send({ type: 'leave', room, cid: newCid() })) {
    showNotice('Not connected: you can leave the room when the connection is back.');
  }
}

/** We are in `room` (confirmed by the server, here or in another session of ours). */
export function roomJoined(room, cid) {
  const known = state.rooms.includes(room);
  addRoom(room);
  requestDirectory();
  const ch = roomChannel(room);
  if (!known && !state.loaded[ch]) requestHistory({ purpose: 'recent', channel: ch, limit: RECENT_ROOM });
  const mine = typeof cid === 'string' && state.joining.get(cid) === room;
  if (mine) {
    state.joining.delete(cid);
    ui.roomName.value = '';
    openConv(roomKey(room), true);
  } else {
    renderConvList();
  }
}

export function onPresence(f) {
  if (typeof f.user !== 'string' || !validUsername(f.user)) return;
  if (typeof f.room === 'string' && validRoom(f.room)) {
    if (f.user === state.me) {
      if (f.status === 'join') roomJoined(f.room, f.cid);
      else if (f.status === 'leave') removeRoom(f.room);
      if (typeof f.cid === 'string') state.joining.delete(f.cid);
      return;
    }
    if (f.status !== 'join' && f.status !== 'leave') return;
    if (!state.rooms.includes(f.room)) return;
    const conv = state.convs.get(roomKey(f.room));
    if (f.status === 'leave') stopTyping(conv.key, f.user);
    requestDirectory();
    addSystemLine(conv, f.user + (f.status === 'join' ? ' joined' : ' left'));
    if (conv.key === state.active) refreshRoomWho();
    return;
  }
  if ((f.status === 'online' || f.status === 'offline') && state.whoAsked) state.whoAsked.since.set(f.user, f.status);
  if (f.status === 'online') {
    if (f.user !== state.me && state.online.size < MAX_ONLINE) state.online.add(f.user);
  } else if (f.status === 'offline') {
    state.online.delete(f.user);
    for (const key of state.typing.keys()) stopTyping(key, f.user);
  } else {
    return;
  }
  renderOnline();
  const conv = state.convs.get(state.active);
  if (conv && conv.kind === 'room') refreshRoomWho();
}

export function onWho(f) {
  const users = Array.isArray(f.users) ? f.users.filter((u) => typeof u === 'string' && validUsername(u)) : [];
  if (typeof f.room === 'string') {
    state.roomOnline[f.room] = users.length;
    onRoomWho(f.room, users, Array.isArray(f.members) ? f.members : users);
    if (state.active === roomKey(f.room)) renderHeader();
    return;
  }
  const online = new Set(users);
  const asked = state.whoAsked;
  if (asked && f.cid === asked.cid) {
    // The server read its answer before some of the presence that reached the page while the
    // answer was on its way: that presence is newer, so it wins.
    for (const [user, status] of asked.since) {
      if (status === 'online') online.add(user);
      else online.delete(user);
    }
    state.whoAsked = null;
  }
  online.delete(state.me);
  state.online = new Set([...online].slice(0, MAX_ONLINE));
  renderOnline();
}

/** Ask who is online anywhere; presence until the answer is kept to be applied on top of it. */
export function askWhoIsOnline() {
  const cid = newCid();
  state.whoAsked = { cid, since: new Map() };
  send({ type: 'who', cid });
}

/** Ask how many members of the open room are online (a few presence changes: one request). */
let roomWhoTimer = null;
export function refreshRoomWho(now) {
  clearTimeout(roomWhoTimer);
  const ask = () => {
    const conv = state.convs.get(state.active);
    if (conv && conv.kind === 'room' && state.conn.ready) send({ type: 'who', room: conv.room, cid: newCid() });
  };
  if (now) ask();
  else roomWhoTimer = setTimeout(ask, 500);
}

/** A "bob joined" line in a room (live only: not stored, not counted as unread). */
export function addSystemLine(conv, text) {
  const item = { marker: true, system: true, text, id: null, own: false, ts: Date.now(), offset: null, conv: conv.key, el: null, sepEl: null };
  const i = insertSorted(conv, item);
  invalidateFrom(conv, i + 1);
  if (conv.key !== state.active) return;
  const wasAtBottom = isAtBottom();
  renderMessages(true);
  if (wasAtBottom) scrollToBottom();
}

/** The key of the conversation a typing hint is about, or null. */
export function typingKey(f) {
  if (typeof f.from !== 'string' || f.from === state.me || !validUsername(f.from)) return null;
  if (typeof f.room === 'string') return state.rooms.includes(f.room) ? roomKey(f.room) : null;
  if (f.to === state.me) return dmKey(f.from);
  return null;
}

export function onTyping(f) {
  const key = typingKey(f);
  if (!key) return;
  let who = state.typing.get(key);
  if (!who) { who = new Map(); state.typing.set(key, who); }
  const prev = who.get(f.from);
  if (prev) clearTimeout(prev.timer);
  who.set(f.from, { timer: setTimeout(() => stopTyping(key, f.from), TYPING_SHOW_MS) });
  if (key === state.active) renderTyping();
}

/** `user` (or everyone, without `user`) no longer shown typing in `key`. */
export function stopTyping(key, user) {
  const who = state.typing.get(key);
  if (!who) return;
  for (const [name, t] of [...who]) {
    if (user !== undefined && name !== user) continue;
    clearTimeout(t.timer);
    who.delete(name);
  }
  if (!who.size) state.typing.delete(key);
  if (key === state.active) renderTyping();
}

/** The user types in the composer: tell the DM peer or the room, at most once per TYPING_SEND_MS. */
export function sendTyping() {
  const conv = state.convs.get(state.active);
  if (!conv || conv.kind === 'public' || !state.conn.ready || ui.text.value.trim() === '') return;
  const now = Date.now();
  if (now - (state.typingSent[conv.key] || 0) < TYPING_SEND_MS) return;
  const frame = conv.kind === 'room' ? { type: 'typing', room: conv.room } : { type: 'typing', to: conv.peer };
  if (send(frame)) state.typingSent[conv.key] = now;
}

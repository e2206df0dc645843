/** Channels, offsets and history: positions, `history` requests (recent, older, gap), gap markers. */

import { PUBLIC, RECENT_PUBLIC, RECENT_DMS, OLDER_PAGE, HISTORY_MAX, LOAD_OLDER_PX, AUTO_OLDER_ROUNDS, GAP_TEXT, RECENT_ROOM, ROOM_PREFIX } from './constants.js';
import { state, newCid } from './state.js';
import { ui, showNotice } from './dom.js';
import { send } from './connection.js';
import { insertSorted, invalidateFrom } from './store.js';
import { renderMessages, renderTopRow } from './messageview.js';

export const myChannel = () => 'user:' + state.me;
export const roomChannel = (room) => ROOM_PREFIX + room;
/** Not the channel of a room this page has left (or never joined). */
export const knownChannel = (ch) => !ch.startsWith(ROOM_PREFIX) || state.rooms.includes(ch.slice(ROOM_PREFIX.length));
export const recentLimit = (ch) => (ch === PUBLIC ? RECENT_PUBLIC : ch.startsWith(ROOM_PREFIX) ? RECENT_ROOM : RECENT_DMS);

/** The channel a conversation's messages are stored in. */
export function channelOfConv(conv) {
  if (conv.kind === 'public') return PUBLIC;
  if (conv.kind === 'room') return roomChannel(conv.room);
  return myChannel();
}

/** The highest offset seen in `ch`; `force` also lowers it (a reset store). */
export function setPosition(ch, offset, force) {
  const prev = state.positions[ch];
  if (prev === offset) return;
  if (force || prev === undefined || offset > prev) {
    state.positions[ch] = offset;
    state.positionsDirty = true;
  }
}

/**
 * Send `history` for `req` = { purpose, channel, before?, limit, ... }; purposes:
 *   'recent': the newest messages of a channel not loaded yet (or those up to a saved position)
 *   'older':  the page before the oldest offset loaded (scrolled to the top of `req.conv`)
 *   'gap':    offsets after `req.after` and before `req.before` that a live message skipped
 */
export function requestHistory(req) {
  const cid = newCid();
  const frame = { type: 'history', channel: req.channel, limit: req.limit, cid };
  if (req.before !== undefined) frame.before = req.before;
  if (!state.conn.ready || !send(frame)) {
    if (req.purpose === 'gap') state.gapsToRetry.push(req);
    return null;
  }
  state.requests.set(cid, req);
  return cid;
}

/** A live message skipped offsets (after, before): fetch them (at most HISTORY_MAX). */
export function requestGap(ch, after, before) {
  requestHistory({ purpose: 'gap', channel: ch, after, before, limit: Math.min(before - after - 1, HISTORY_MAX) });
}

/** Requests in flight die with their socket; gap requests are asked again on the next welcome. */
export function forgetRequests() {
  for (const req of state.requests.values()) if (req.purpose === 'gap') state.gapsToRetry.push(req);
  state.requests.clear();
  state.loadingOlder = {};
  state.resuming = null;
  renderTopRow();
}

/** Scrolled to the top of the open conversation: load the page of its channel before it. */
export function loadOlder(rounds) {
  const conv = state.convs.get(state.active);
  if (!conv || !state.conn.ready) return;
  const ch = channelOfConv(conv);
  if (!state.loaded[ch] || state.atStart[ch] || state.loadingOlder[ch]) return;
  const oldest = state.oldest[ch];
  if (oldest === undefined || oldest <= 1) {
    state.atStart[ch] = true;
    renderTopRow();
    return;
  }
  const cid = requestHistory({ purpose: 'older', channel: ch, before: oldest, limit: OLDER_PAGE, conv: conv.key, rounds });
  if (cid) {
    state.loadingOlder[ch] = cid;
    renderTopRow();
  }
}

/** Keep loading while the top of the list is in view (a short conversation), a few rounds at most. */
export function maybeLoadOlder(rounds) {
  if (rounds < AUTO_OLDER_ROUNDS && ui.messages.scrollTop <= LOAD_OLDER_PX) loadOlder(rounds);
}

/** Messages after offset `after` of `ch` are lost: mark the conversations of that channel. */
export function addGapMarkers(ch, after) {
  let keys = [];
  if (ch === PUBLIC) keys = [PUBLIC];
  else if (ch === myChannel()) keys = state.order.slice();
  else if (ch.startsWith(ROOM_PREFIX) && state.convs.has(ch)) keys = [ch];
  if (ch === myChannel() && !keys.length) showNotice(GAP_TEXT + ' (private messages).');
  let active = false;
  for (const key of keys) {
    const conv = state.convs.get(key);
    if (conv && addMarker(conv, after)) active = active || key === state.active;
  }
  if (active) renderMessages(true);
}

/** A marker after offset `after` (sorted as offset after + 0.5); false if one is there. */
export function addMarker(conv, after) {
  const at = after + 0.5;
  if (conv.messages.some((m) => m.marker && m.offset === at)) return false;
  let lastTs = null;
  let nextTs = null;
  for (const m of conv.messages) {
    if (m.marker || m.offset === null || m.offset === undefined) continue;
    if (m.offset <= after) lastTs = lastTs === null ? m.ts : Math.max(lastTs, m.ts);
    else nextTs = nextTs === null ? m.ts : Math.min(nextTs, m.ts);
  }
  const ts = lastTs !== null ? lastTs : (nextTs !== null ? nextTs : Date.now());
  const marker = { marker: true, id: null, own: false, ts, offset: at, conv: conv.key, el: null, sepEl: null };
  const i = insertSorted(conv, marker);
  invalidateFrom(conv, i + 1);
  return true;
}

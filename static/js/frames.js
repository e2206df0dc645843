/** Frames from the server, one handler per type; `resume` and history requests after `welcome`. */

import { LIMITED_RETRIES, LIMITED_RETRY_MS, PUBLIC } from './constants.js';
import { state, newCid } from './state.js';
import { isOffset, validRoom } from './util.js';
import { ui, announce, showNotice } from './dom.js';
import { saveSession, saveConvs, savePositions } from './storage.js';
import { send } from './connection.js';
import { myChannel, roomChannel, knownChannel, recentLimit, setPosition, requestHistory, requestGap, maybeLoadOlder, addGapMarkers } from './channels.js';
import { placeByActivity, ingest, confirmMessage, removeMessage } from './store.js';
import { onPresence, onWho, onTyping, addRoom, askWhoIsOnline } from './rooms.js';
import { recordChange } from './changes.js';
import { onRefreshed } from './signin.js';
import { recordReaction } from './reactions.js';
import { transmit, flushOutbox } from './composer.js';
import { renderMe, renderServerId, renderConn, renderConvList, renderTitle } from './views.js';
import { renderMessages, renderTopRow, updateMessageNode } from './messageview.js';
import { onRooms, requestDirectory } from './directory.js';

export function handleFrame(frame) {
  switch (frame.type) {
    case 'welcome': onWelcome(frame); break;
    case 'message': onMessage(frame); break;
    case 'history': onHistory(frame); break;
    case 'resumed': onResumed(frame); break;
    case 'ack': onAck(frame); break;
    case 'error': onError(frame); break;
    case 'pong': break;                       // lastFrameAt already refreshed
    case 'presence': onPresence(frame); break;
    case 'typing': onTyping(frame); break;
    case 'who': onWho(frame); break;
    case 'rooms': onRooms(frame); break;
    case 'receipt': onReceipt(frame); break;
    case 'refreshed': onRefreshed(); break;     // the server took our new token (signin.js)
    default: break;                           // unknown types are ignored
  }
  if (state.positionsDirty) savePositions();
}

export function onWelcome(f) {
  const c = state.conn;
  c.ready = true;
  c.attempt = 0;                              // a good connection resets the backoff
  if (typeof f.user === 'string' && f.user && f.user !== state.me) {
    state.me = f.user;
    saveSession();
    renderMe();
  }
  if (typeof f.server === 'string' && f.server) {
    state.serverId = f.server;
    c.server = f.server;
    renderServerId();
    renderConn(false);
  }
  // The rooms the user is in (this server's addition): joined on another device, they show here too.
  const rooms = Array.isArray(f.rooms) ? f.rooms.filter((r) => typeof r === 'string' && validRoom(r)) : [];
  const added = rooms.filter((r) => !state.rooms.includes(r));
  for (const room of added) addRoom(room);
  if (added.length) renderConvList();
  startChannels(f.positions && typeof f.positions === 'object' ? f.positions : {});
  flushOutbox();
}

/**
 * After `welcome`, whose positions are the latest offsets (nothing up to them comes live on
 * this socket): load the recent history of each channel this page has not shown yet, and
 * `resume` from the positions this browser has for the user, if it has any. On a reload the
 * history ends where the saved position is and the replay starts there, so the conversation
 * shows what was read before and everything since, without a hole.
 */
export function startChannels(latest) {
  const resumeFrom = {};
  const epochs = {};
  const history = [];
  for (const ch of [PUBLIC, myChannel(), ...state.rooms.map(roomChannel)]) {
    const top = typeof latest[ch] === 'number' ? latest[ch] : null;
    const have = state.positions[ch];
    let before;                               // undefined: the newest messages
    if (typeof have === 'number') {
      resumeFrom[ch] = have;
      if (typeof state.epochs[ch] === 'string') epochs[ch] = state.epochs[ch];
      // Beyond the latest offset: the store was reset. The server reports the gap
      // (`resumed` lists the channel); from now on this page counts from the latest offset.
      if (top !== null && have > top) setPosition(ch, top, true);
      before = Math.min(have, top === null ? have : top) + 1;
    } else if (top !== null) {
      resumeFrom[ch] = top;
      setPosition(ch, top, true);
    }
    if (!state.loaded[ch]) history.push({ purpose: 'recent', channel: ch, before, limit: recentLimit(ch) });
  }
  // Resume first, always: until it does, the server holds this socket's live messages, so
  // that what it replays and what comes live form one sequence without a copy or a swap.
  const cid = newCid();
  if (send({ type: 'resume', positions: resumeFrom, epochs, cid })) state.resuming = { cid, from: resumeFrom };
  // Membership is durable, but this browser may be the only one that remembers it: join again
  // (idempotent) before reading the room channels. Frames are handled in order by the server.
  for (const room of state.rooms) send({ type: 'join', room });
  askWhoIsOnline();
  requestDirectory(true);
  for (const req of history) requestHistory(req);
  for (const gap of state.gapsToRetry.splice(0)) requestHistory(gap);
}

/** A receipt for one of our private messages: ✓✓ when delivered, "read" once read. */
export function onReceipt(f) {
  if (typeof f.id !== 'string') return;
  const m = state.seen.get(f.id);
  if (!m) {
    // The receipt took a shorter path than the ack (recipient on this server): keep it until
    // the ack names the id (a few, for a few seconds: acks come or the send is retried).
    if (state.earlyReceipts.size >= 200) state.earlyReceipts.delete(state.earlyReceipts.keys().next().value);
    state.earlyReceipts.set(f.id, f.status);
    return;
  }
  if (!m.own || m.kind !== 'private') return;
  const rank = { delivered: 1, read: 2 };
  if ((rank[f.status] || 0) > (rank[m.receipt] || 0)) {
    m.receipt = f.status;
    updateMessageNode(m);
  }
}

/** Tell the sender we have shown their private message (once per message). */
export function sendRead(m) {
  if (!m || m.own || m.kind !== 'private' || !m.id || !m.from || state.readSent.has(m.id)) return;
  if (document.visibilityState !== 'visible' || !state.conn.ready) return;
  if (send({ type: 'receipt', to: m.from, id: m.id, status: 'read' })) state.readSent.add(m.id);
}

/** Read receipts for what the open conversation shows. */
export function readActive() {
  const conv = state.convs.get(state.active);
  if (conv && conv.kind === 'dm') for (const m of conv.messages) sendRead(m);
}

export function onMessage(f) {
  const ch = typeof f.channel === 'string' ? f.channel : null;
  const offset = isOffset(f.offset) ? f.offset : null;
  if (ch && offset !== null && !state.resuming && knownChannel(ch)) {
    const pos = state.positions[ch];
    if (typeof pos === 'number' && offset > pos + 1) requestGap(ch, pos, offset);
  }
  ingest(f, 'live');
}

/** An answer to one of our `history` requests (see requestHistory for the purposes). */
export function onHistory(f) {
  const req = typeof f.cid === 'string' ? state.requests.get(f.cid) : undefined;
  if (req) state.requests.delete(f.cid);
  const found = Array.isArray(f.messages) ? f.messages.filter((m) => m && typeof m === 'object') : [];
  const ch = typeof f.channel === 'string' ? f.channel : (req ? req.channel : '');
  if (!knownChannel(ch)) return;              // a room left meanwhile
  const createdBefore = new Set(state.convs.keys());
  const added = new Map();                    // conversation key -> messages added
  for (const m of found) {
    const msg = ingest(m, 'history');
    if (msg) added.set(msg.conv, (added.get(msg.conv) || 0) + 1);
  }
  let more = -1;                              // >= 0: load older again, after that many rounds
  if (req && req.purpose === 'recent') {
    state.loaded[ch] = true;
    // A room has no position in `welcome`: an empty channel starts at 0, so gaps can be seen.
    if (state.positions[ch] === undefined && req.before === undefined) setPosition(ch, 0);
    if (found.length < req.limit) state.atStart[ch] = true;
    more = 0;
  } else if (req && req.purpose === 'older') {
    if (state.loadingOlder[ch] === f.cid) delete state.loadingOlder[ch];
    if (found.length < req.limit) state.atStart[ch] = true;
    if (req.conv === state.active) more = req.rounds + 1;
  } else if (req && req.purpose === 'gap') {
    const got = found.filter((m) => isOffset(m.offset) && m.offset > req.after && m.offset < req.before).length;
    if (got < req.before - req.after - 1) addGapMarkers(ch, req.after);
  }
  for (const key of added.keys()) {
    if (!createdBefore.has(key)) placeByActivity(state.convs.get(key));
  }
  if (added.size) saveConvs();
  renderMessages(true);                       // keeps what is on screen where it is
  if (more >= 0) maybeLoadOlder(more);
  renderConvList();
  renderTitle();
}

export function onResumed(f) {
  const r = state.resuming;
  if (!r || (typeof f.cid === 'string' && f.cid !== r.cid)) return;
  state.resuming = null;
  if (f.epochs && typeof f.epochs === 'object') {
    for (const [ch, epoch] of Object.entries(f.epochs)) if (typeof epoch === 'string') state.epochs[ch] = epoch;
    state.positionsDirty = true;
  }
  if (f.recovered !== false) return;
  // `gaps` (protocol version 2) names the channels that lost messages; without it (an older server), all.
  const gaps = Array.isArray(f.gaps) && f.gaps.length ? f.gaps : Object.keys(r.from);
  for (const ch of gaps) {
    if (typeof r.from[ch] === 'number') addGapMarkers(ch, r.from[ch]);
    // Its offsets may have started over (a new epoch): count from where it stands now.
    const now = f.positions && f.positions[ch];
    if (typeof now === 'number') setPosition(ch, now, true);
  }
}

export function onAck(f) {
  const change = typeof f.cid === 'string' ? state.changeSends.get(f.cid) : null;
  if (change && change.kind === 'react') {
    state.changeSends.delete(f.cid);
    recordReaction(change.ref, change.emoji, state.me, change.on, typeof f.ts === 'number' ? f.ts : Date.now());
    return;
  }
  if (change) {
    state.changeSends.delete(f.cid);
    recordChange(change.ref, change.kind, change.text, typeof f.ts === 'number' ? f.ts : Date.now());
    return;
  }
  const m = typeof f.cid === 'string' ? state.pending.get(f.cid) : null;
  if (!m) return;
  const id = f.id !== undefined && f.id !== null ? String(f.id) : m.id;
  const shown = id ? state.seen.get(id) : undefined;
  if (shown && shown !== m) { removeMessage(m); return; }   // its copy came back first
  confirmMessage(m, id, typeof f.ts === 'number' ? f.ts : m.ts);
  // The ack says where our own copy is stored (the sending tab gets no echo of a DM):
  // take the offset, and advance the position only over what is contiguous.
  if (typeof f.channel === 'string' && isOffset(f.offset)) {
    if (m.offset === null || m.offset === undefined) m.offset = f.offset;
    if (state.positions[f.channel] === f.offset - 1) setPosition(f.channel, f.offset);
  }
}

export function onError(f) {
  const text = typeof f.message === 'string' && f.message ? f.message : (f.code || 'Error');
  const req = typeof f.cid === 'string' ? state.requests.get(f.cid) : undefined;
  const change = typeof f.cid === 'string' ? state.changeSends.get(f.cid) : null;
  if (change) {
    state.changeSends.delete(f.cid);
    const what = { edit: 'edit the message', delete: 'delete the message', react: 'react to the message' }[change.kind];
    showNotice('Could not ' + what + ': ' + text);
    return;
  }
  if (typeof f.cid === 'string' && state.joining.has(f.cid)) {
    state.joining.delete(f.cid);
    ui.roomError.textContent = 'Could not join: ' + text;
    ui.roomError.hidden = false;
    ui.roomName.setAttribute('aria-invalid', 'true');
    return;
  }
  if (req) {
    state.requests.delete(f.cid);
    if (state.loadingOlder[req.channel] === f.cid) { delete state.loadingOlder[req.channel]; renderTopRow(); }
    if (req.purpose === 'gap') state.gapsToRetry.push(req);   // asked again on the next welcome
    showNotice('Could not load messages: ' + text);
    return;
  }
  if (state.resuming && f.cid === state.resuming.cid && f.code !== 'forbidden') {
    state.resuming = null;                    // no `resumed` follows; live gaps are filled one by one
    showNotice('Could not catch up with missed messages: ' + text);
    return;
  }
  const m = typeof f.cid === 'string' ? state.pending.get(f.cid) : null;
  if (m) {
    clearTimeout(m.ackTimer);
    state.pending.delete(f.cid);
    if (f.code === 'rate_limited' && (m.limitedRetries || 0) < LIMITED_RETRIES) {
      // Too fast, or the server is overloaded: both pass. Wait, with jitter so that many
      // pages refused together do not come back together, then send the same frame again.
      m.limitedRetries = (m.limitedRetries || 0) + 1;
      m.status = 'retrying';
      updateMessageNode(m);
      const delay = LIMITED_RETRY_MS * 2 ** (m.limitedRetries - 1) * (0.75 + Math.random() / 2);
      setTimeout(() => { if (m.status === 'retrying') transmit(m); }, delay);
      return;
    }
    m.status = 'failed';
    m.error = text;
    updateMessageNode(m);
    announce('Message not sent: ' + text);
    return;
  }
  showNotice(text);
}

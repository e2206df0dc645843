/** The composer: validate, send with a cid, outbox while offline, retry, character count. */

import { MAX_TEXT, COUNT_SHOW_FROM, ACK_TIMEOUT_MS } from './constants.js';
import { state, newCid } from './state.js';
import { textLength } from './util.js';
import { ui } from './dom.js';
import { send } from './connection.js';
import { ensureConv, insertMessage, removeMessage } from './store.js';
import { updateMessageNode } from './messageview.js';
import { askPermission } from './notify.js';
import { renderPrefs } from './prefs.js';

/** Validate and send the composer's text to the open conversation. */
export function submitComposer() {
  const text = ui.text.value;
  const problem = textProblem(text);
  if (problem) { renderComposerHint(problem, true); return; }
  queueOutgoing(state.active, text);
  askPermission().then(renderPrefs);   // a sensible moment: the user is chatting (never on load)
  delete state.typingSent[state.active];   // the message ends the hint: typing again says so at once
  ui.text.value = '';
  state.convs.get(state.active).draft = '';
  renderComposer();
  ui.text.focus();             // keep the keyboard up after sending
}

export function textProblem(text) {
  if (text.trim() === '') return 'Type a message first.';
  const n = textLength(text);
  if (n > MAX_TEXT) return 'Too long: ' + n + ' / ' + MAX_TEXT + ' characters.';
  return null;
}

/** `cid`: a retry keeps its first attempt's, so the server recognises it (same id, no copy). */
export function queueOutgoing(key, text, cid) {
  const conv = ensureConv(key);
  const kind = conv.kind === 'dm' ? 'private' : conv.kind;
  const msg = {
    id: null, cid: cid || newCid(), kind, room: conv.kind === 'room' ? conv.room : null,
    from: state.me, to: conv.peer, text, ts: Date.now(), offset: null, own: true, status: 'queued', error: null,
  };
  insertMessage(key, msg, 'send');
  transmit(msg);
}

/** Put an outgoing message on the wire, or in the outbox while not connected. */
export function transmit(msg) {
  let frame;
  if (msg.kind === 'public') frame = { type: 'public', text: msg.text, cid: msg.cid };
  else if (msg.kind === 'room') frame = { type: 'room', room: msg.room, text: msg.text, cid: msg.cid };
  else frame = { type: 'private', to: msg.to, text: msg.text, cid: msg.cid };
  if (state.conn.ready && send(frame)) {
    msg.status = 'pending';
    state.pending.set(msg.cid, msg);
    msg.ackTimer = setTimeout(() => {
      if (msg.status === 'pending') {
        // Keep it in `pending`: a late ack still confirms it.
        msg.status = 'failed';
        msg.error = 'No confirmation from the server yet.';
        updateMessageNode(msg);
      }
    }, ACK_TIMEOUT_MS);
  } else {
    msg.status = 'queued';
    if (!state.outbox.includes(msg)) state.outbox.push(msg);
  }
  updateMessageNode(msg);
}

export function flushOutbox() {
  const queued = state.outbox;
  state.outbox = [];
  for (const m of queued) if (m.status === 'queued') transmit(m);
}

/** Messages on the wire when the socket dropped: we cannot know whether they arrived. */
export function failInFlight(reason) {
  for (const m of state.pending.values()) {
    clearTimeout(m.ackTimer);
    m.status = 'failed';
    m.error = reason;
    updateMessageNode(m);
  }
  state.pending.clear();
}

export function retryMessage(m) {
  const key = m.conv;
  const text = m.text;
  const cid = m.cid;
  removeMessage(m);
  queueOutgoing(key, text, cid);
}

export function renderComposer() {
  const conv = state.convs.get(state.active);
  ui.text.value = conv.draft || '';
  let label = 'Message ' + conv.peer;
  if (conv.kind === 'public') label = 'Message everyone';
  else if (conv.kind === 'room') label = 'Message room ' + conv.room;
  ui.text.placeholder = label + '…';
  ui.text.setAttribute('aria-label', label);
  autoGrow();
  renderComposerHint();
}

export function renderComposerHint(problem, isError) {
  const text = ui.text.value;
  const n = textLength(text);
  ui.send.disabled = text.trim() === '' || n > MAX_TEXT;
  ui.count.hidden = n < COUNT_SHOW_FROM;
  ui.count.textContent = n + ' / ' + MAX_TEXT;
  ui.count.classList.toggle('is-over', n > MAX_TEXT);
  let hint = 'Enter to send · Shift+Enter for a new line';
  let err = false;
  if (problem) { hint = problem; err = !!isError; }
  else if (n > MAX_TEXT) { hint = 'Too long: at most ' + MAX_TEXT + ' characters.'; err = true; }
  else if (state.conn.status !== 'online') hint = 'Not connected: messages will be sent when the connection is back.';
  ui.hint.textContent = hint;
  ui.hint.classList.toggle('is-error', err);
}

export function autoGrow() {
  const t = ui.text;
  t.style.height = 'auto';
  t.style.height = Math.min(t.scrollHeight + 2, Math.round(window.innerHeight * 0.4)) + 'px';
}

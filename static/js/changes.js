/** Edits and deletes of messages (protocol version 2): applied as they come, sent for our own. */

import { state, newCid } from './state.js';
import { el, announce } from './dom.js';
import { send } from './connection.js';
import { channelOfConv } from './channels.js';
import { textProblem } from './composer.js';
import { updateMessageNode } from './messageview.js';

/** Keep the latest change of message `ref` (a delete is final) and apply it if the message is here. */
export function recordChange(ref, kind, text, ts) {
  const known = state.changes.get(ref);
  if (known && (known.kind === 'delete' || (kind === 'edit' && known.ts > ts))) return;
  if (kind === 'edit' && typeof text !== 'string') return;
  state.changes.set(ref, { kind, text: kind === 'edit' ? text : '', ts });
  const m = state.seen.get(ref);
  if (m) applyKnownChange(m);
}

export function applyKnownChange(m) {
  const change = m.id ? state.changes.get(m.id) : undefined;
  if (!change || m.marker || m.system) return;
  if (change.kind === 'delete') {
    if (m.deleted) return;
    m.deleted = true;
    m.text = '';
  } else {
    if (m.deleted || (m.edited && m.text === change.text)) return;
    m.edited = true;
    m.text = change.text;
  }
  if (m.editor) m.editor.cancel();
  updateMessageNode(m);
}

/** Send our edit or delete of our own message `m`. */
export function sendChange(m, kind, text) {
  const conv = state.convs.get(m.conv);
  if (!conv || !m.id || !m.own) return false;
  const frame = { type: kind, channel: channelOfConv(conv), id: m.id, cid: newCid() };
  if (kind === 'edit') frame.text = text;
  if (!state.conn.ready || !send(frame)) { announce('Not connected: try again when online.'); return false; }
  state.changeSends.set(frame.cid, { ref: m.id, kind, text });
  return true;
}

/** Edit our message in place: a text box instead of its text; Enter saves, Escape cancels. */
export function startEdit(m) {
  if (!m.el || m.editor || m.deleted) return;
  const { textEl } = m.refs;
  const input = el('textarea', { class: 'msg-edit-input', 'aria-label': 'Edit message', rows: '2' });
  input.value = m.text;
  const save = el('button', { type: 'button', class: 'link-btn msg-edit-save', text: 'Save' });
  const cancel = el('button', { type: 'button', class: 'link-btn msg-edit-cancel', text: 'Cancel' });
  const box = el('div', { class: 'msg-editor' }, [input, el('div', { class: 'msg-editor-actions' }, [save, ' ', cancel])]);
  const close = () => {
    m.editor = null;
    box.replaceWith(textEl);
    updateMessageNode(m);
  };
  const commit = () => {
    const text = input.value;
    const problem = text === m.text ? null : textProblem(text);
    if (problem) { announce(problem); input.setAttribute('aria-invalid', 'true'); return; }
    if (text !== m.text && !sendChange(m, 'edit', text)) return;
    close();
    if (m.refs.editBtn && !m.refs.editBtn.hidden) m.refs.editBtn.focus();
  };
  save.addEventListener('click', commit);
  cancel.addEventListener('click', () => { close(); m.refs.editBtn.focus(); });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); commit(); }
    else if (e.key === 'Escape') { e.preventDefault(); close(); m.refs.editBtn.focus(); }
  });
  m.editor = { cancel: close };
  textEl.replaceWith(box);
  updateMessageNode(m);
  input.focus();
}

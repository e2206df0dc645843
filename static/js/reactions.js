/**
 * Reactions (this server's `react` frame, docs/PROTOCOL.md section 12): a small set of emoji per
 * message, with counts and who reacted. Every `react`/`unreact` event (live, history, replay, or
 * the ack of our own) is recorded per message, emoji and user; the latest of each wins, so the
 * order they arrive in does not matter.
 */

import { state, newCid } from './state.js';
import { el, announce } from './dom.js';
import { send } from './connection.js';
import { channelOfConv } from './channels.js';
import { updateMessageNode } from './messageview.js';

export const REACTIONS = ['👍', '❤️', '😂', '😮', '😢', '🎉'];
const NAMES = { '👍': 'thumbs up', '❤️': 'heart', '😂': 'laughing', '😮': 'surprised', '😢': 'sad', '🎉': 'party' };

/** Record that `user` gave (`on`) or took back `emoji` on message `ref` at `ts`; redraw the message. */
export function recordReaction(ref, emoji, user, on, ts) {
  if (!REACTIONS.includes(emoji) || typeof user !== 'string') return;
  let byEmoji = state.reactions.get(ref);
  if (!byEmoji) { byEmoji = new Map(); state.reactions.set(ref, byEmoji); }
  let byUser = byEmoji.get(emoji);
  if (!byUser) { byUser = new Map(); byEmoji.set(emoji, byUser); }
  const known = byUser.get(user);
  if (known && known.ts > ts) return;
  byUser.set(user, { on, ts });
  const m = state.seen.get(ref);
  if (m) updateMessageNode(m);
}

/** The reactions of message `id`: [{emoji, users (sorted), mine}], in the order of REACTIONS. */
export function reactionsOf(id) {
  const byEmoji = id ? state.reactions.get(id) : undefined;
  if (!byEmoji) return [];
  const out = [];
  for (const emoji of REACTIONS) {
    const byUser = byEmoji.get(emoji);
    if (!byUser) continue;
    const users = [...byUser].filter(([, r]) => r.on).map(([u]) => u).sort((a, b) => a.localeCompare(b));
    if (users.length) out.push({ emoji, users, mine: users.includes(state.me) });
  }
  return out;
}

/** Give or take back our reaction `emoji` on message `m`. */
export function toggleReaction(m, emoji) {
  const conv = state.convs.get(m.conv);
  if (!conv || !m.id) return;
  const mine = reactionsOf(m.id).some((r) => r.emoji === emoji && r.mine);
  const frame = { type: 'react', channel: channelOfConv(conv), id: m.id, emoji, cid: newCid() };
  if (mine) frame.remove = true;
  if (!state.conn.ready || !send(frame)) { announce('Not connected: try again when online.'); return; }
  state.changeSends.set(frame.cid, { ref: m.id, kind: 'react', emoji, on: !mine });
}

/** The reaction chips and the picker of message `m` (built once per message node). */
export function buildReactionBar(m) {
  const chips = el('div', { class: 'msg-reactions' });
  const picker = el('div', { class: 'reaction-picker', role: 'group', 'aria-label': 'Pick a reaction', hidden: true },
    REACTIONS.map((emoji) => el('button', {
      type: 'button', class: 'reaction-pick', text: emoji, 'aria-label': 'React with ' + NAMES[emoji],
      on: { click: () => { picker.hidden = true; openBtn.setAttribute('aria-expanded', 'false'); toggleReaction(m, emoji); } },
    })));
  const openBtn = el('button', {
    type: 'button', class: 'link-btn msg-react', text: 'React', 'aria-label': 'Add a reaction', 'aria-expanded': 'false',
    on: { click: () => { picker.hidden = !picker.hidden; openBtn.setAttribute('aria-expanded', String(!picker.hidden)); } },
  });
  // Escape closes the picker and gives the focus back to its button.
  picker.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    e.preventDefault();
    picker.hidden = true;
    openBtn.setAttribute('aria-expanded', 'false');
    openBtn.focus();
  });
  return { chips, picker, openBtn };
}

/** Redraw the chips of message `m`: one button per emoji with its count; ours is pressed. */
export function renderReactions(m) {
  const { chips } = m.refs.reactions;
  const list = m.deleted ? [] : reactionsOf(m.id);
  const sig = list.map((r) => r.emoji + r.users.join(',')).join('|');
  if (chips.dataset.sig === sig) return;
  chips.dataset.sig = sig;
  chips.replaceChildren(...list.map((r) => {
    const who = r.users.map((u) => (u === state.me ? 'you' : u)).join(', ');
    return el('button', {
      type: 'button', class: 'reaction' + (r.mine ? ' is-mine' : ''), title: who,
      'aria-pressed': String(r.mine), 'aria-label': NAMES[r.emoji] + ' ' + r.users.length + ': ' + who,
      'data-emoji': r.emoji,
      on: { click: () => toggleReaction(m, r.emoji) },
    }, [el('span', { class: 'reaction-emoji', 'aria-hidden': 'true', text: r.emoji }),
      el('span', { class: 'reaction-count', text: String(r.users.length) })]);
  }));
  chips.hidden = list.length === 0;
}

/**
 * Rooms you can find, and who is in the open room (this server's `rooms` frame and the `members`
 * of `who` with a room, docs/PROTOCOL.md section 12). The directory is asked for after `welcome`,
 * when our rooms change and on "Refresh"; the member list comes with every `who` of the open room.
 */

import { state, newCid } from './state.js';
import { ui, el } from './dom.js';
import { send } from './connection.js';
import { validRoom, validUsername, initial, hueOf } from './util.js';
import { roomKey, joinRoom } from './rooms.js';
import { openConv, openDM } from './navigation.js';

let asked = null;        // timer of a directory request waiting (a few changes: one request)

/** Ask for the rooms directory (soon, or `now`). */
export function requestDirectory(now) {
  clearTimeout(asked);
  const ask = () => { if (state.conn.ready) send({ type: 'rooms', cid: newCid() }); };
  if (now) ask(); else asked = setTimeout(ask, 500);
}

export function onRooms(f) {
  const list = Array.isArray(f.rooms) ? f.rooms : [];
  state.directory = list
    .filter((r) => r && typeof r.room === 'string' && validRoom(r.room) && Number.isInteger(r.members))
    .map((r) => ({ room: r.room, members: r.members }));
  renderDirectory();
}

/** `who` with a room: its members (all) and those online. */
export function onRoomWho(room, online, members) {
  state.roomMembers[room] = members.filter((u) => typeof u === 'string' && validUsername(u));
  state.roomOnlineUsers[room] = new Set(online);
  if (state.active === roomKey(room)) renderMembers();
}

/** The directory in the sidebar: each room, its member count; a click joins it (or opens it). */
export function renderDirectory() {
  const items = state.directory.map(({ room, members }) => {
    const joined = state.rooms.includes(room);
    const what = members + (members === 1 ? ' member' : ' members');
    const btn = el('button', {
      type: 'button', class: 'conv' + (joined ? ' is-joined' : ''), 'data-room': room,
      'aria-label': (joined ? 'Open room ' : 'Join room ') + room + ', ' + what,
    }, [
      el('span', { class: 'conv-icon conv-icon-room', 'aria-hidden': 'true', text: '§' }),
      el('span', { class: 'conv-name', text: room }),
      el('span', { class: 'conv-count', 'aria-hidden': 'true', text: String(members) }),
    ]);
    btn.addEventListener('click', () => {
      if (joined) { openConv(roomKey(room), true); return; }
      const problem = joinRoom(room);
      if (problem) { ui.roomError.textContent = problem; ui.roomError.hidden = false; }
    });
    return el('li', null, [btn]);
  });
  ui.directoryList.replaceChildren(...items);
  ui.directoryEmpty.hidden = items.length > 0;
}

/** The members of the open room, online first; hidden outside rooms. */
export function renderMembers() {
  const conv = state.convs.get(state.active);
  const room = conv && conv.kind === 'room' ? conv.room : null;
  const members = room ? state.roomMembers[room] || [] : [];
  ui.membersSection.hidden = !room;
  if (!room) return;
  ui.membersTitle.textContent = 'Members of ' + room;
  const online = state.roomOnlineUsers[room] || new Set();
  const sorted = [...members].sort((a, b) => (online.has(b) - online.has(a)) || a.localeCompare(b));
  ui.memberList.replaceChildren(...sorted.map((name) => {
    const on = online.has(name);
    const avatar = el('span', { class: 'avatar avatar-sm', 'aria-hidden': 'true', text: initial(name) });
    avatar.style.setProperty('--hue', hueOf(name));
    const label = name + (name === state.me ? ' (you)' : '') + (on ? ', online' : ', offline');
    const btn = el('button', {
      type: 'button', class: 'conv' + (on ? '' : ' is-offline'), 'data-member': name, 'aria-label': label,
      disabled: name === state.me,
    }, [avatar, el('span', { class: 'conv-name', text: name }), on ? el('span', { class: 'online-dot', 'aria-hidden': 'true' }) : null]);
    btn.addEventListener('click', () => openDM(name));
    return el('li', null, [btn]);
  }));
}

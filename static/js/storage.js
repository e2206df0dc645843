/** sessionStorage (token, open conversations per tab) and localStorage (positions, epochs, rooms per user). */

import { STORE, POSITIONS_PREFIX, EPOCHS_PREFIX, ROOMS_PREFIX } from './constants.js';
import { state } from './state.js';
import { validRoom, isOffset } from './util.js';

export function storeGet(key) { try { return sessionStorage.getItem(key); } catch (e) { return null; } }
export function storeSet(key, v) { try { sessionStorage.setItem(key, v); } catch (e) { /* private mode */ } }
export function storeDel(key) { try { sessionStorage.removeItem(key); } catch (e) { /* ignore */ } }

export function saveSession() {
  storeSet(STORE.token, state.token);
  storeSet(STORE.user, state.me);
}

/** The list of open DMs and the open conversation survive a reload of the tab. */
export function saveConvs() {
  if (!state.me) return;
  storeSet(STORE.convs, JSON.stringify(state.order.map((k) => state.convs.get(k).peer)));
  storeSet(STORE.active, state.active);
}

export function clearSession() {
  for (const k of Object.values(STORE)) storeDel(k);
}

/** Positions per channel of `user` saved on this browser: {} when none (a first sign-in here). */
export function loadPositions(user) {
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(POSITIONS_PREFIX + user) || 'null'); } catch (e) { saved = null; }
  const positions = {};
  if (saved && typeof saved === 'object' && !Array.isArray(saved)) {
    for (const [ch, off] of Object.entries(saved)) if (isOffset(off) || off === 0) positions[ch] = off;
  }
  return positions;
}

export function savePositions() {
  state.positionsDirty = false;
  if (!state.me) return;
  try {
    localStorage.setItem(POSITIONS_PREFIX + state.me, JSON.stringify(state.positions));
    localStorage.setItem(EPOCHS_PREFIX + state.me, JSON.stringify(state.epochs));
  } catch (e) { /* private mode or full: positions live as long as the page */ }
}

/** Epochs of the saved positions of `user`: a position means something only in its epoch. */
export function loadEpochs(user) {
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(EPOCHS_PREFIX + user) || 'null'); } catch (e) { saved = null; }
  const epochs = {};
  if (saved && typeof saved === 'object' && !Array.isArray(saved)) {
    for (const [ch, epoch] of Object.entries(saved)) if (typeof epoch === 'string') epochs[ch] = epoch;
  }
  return epochs;
}

/** Rooms of `user` this browser joined: [] when none. */
export function loadRooms(user) {
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(ROOMS_PREFIX + user) || 'null'); } catch (e) { saved = null; }
  return Array.isArray(saved) ? [...new Set(saved.filter((r) => typeof r === 'string' && validRoom(r)))].sort() : [];
}

export function saveRooms() {
  if (!state.me) return;
  try {
    localStorage.setItem(ROOMS_PREFIX + state.me, JSON.stringify(state.rooms));
  } catch (e) { /* private mode or full */ }
}

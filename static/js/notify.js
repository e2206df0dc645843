/**
 * Mentions and notifications. A message that mentions the user (`@name`) stands out and counts
 * apart in its conversation's badge. While the tab is hidden, a private message or a mention
 * shows a desktop notification (permission is asked when the user first sends a message or turns
 * notifications on, never on load) and, if the user turned it on, plays a short sound. Muted
 * conversations do neither and stay out of the count in the title. Mutes and the sound setting
 * are kept per user in localStorage.
 */

import { state } from './state.js';
import { mentionsOf } from './format.js';

const MUTED_PREFIX = 'chat.muted.';       // localStorage: conversation keys muted by the user
const SOUND_KEY = 'chat.sound';           // localStorage: '1' when the sound is on (this browser)
const BODY_MAX = 140;                     // characters of the message shown in a notification

/** Whether message `m` mentions the signed-in user (worked out once per text). */
export function mentionsMe(m) {
  if (!m || typeof m.text !== 'string' || !state.me) return false;
  if (m.mentionOf !== m.text) {
    m.mentionOf = m.text;
    m.mentionsMe = mentionsOf(m.text).has(state.me);
  }
  return m.mentionsMe;
}

export const notificationsSupported = () => typeof window.Notification === 'function';

/** 'granted', 'denied', 'default', or 'unsupported'. */
export const permission = () => (notificationsSupported() ? window.Notification.permission : 'unsupported');

/** Ask for permission to notify, once it makes sense (the user sent a message, or asked for it). */
export async function askPermission() {
  if (permission() !== 'default') return permission();
  try {
    return await window.Notification.requestPermission();
  } catch (e) {
    return permission();
  }
}

export function isMuted(key) {
  return state.muted.has(key);
}

export function loadMuted(user) {
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(MUTED_PREFIX + user) || 'null'); } catch (e) { saved = null; }
  return new Set(Array.isArray(saved) ? saved.filter((k) => typeof k === 'string') : []);
}

export function setMuted(key, muted) {
  if (muted) state.muted.add(key); else state.muted.delete(key);
  if (!state.me) return;
  try { localStorage.setItem(MUTED_PREFIX + state.me, JSON.stringify([...state.muted])); } catch (e) { /* private mode */ }
}

export function soundOn() {
  try { return localStorage.getItem(SOUND_KEY) === '1'; } catch (e) { return false; }
}

export function setSound(on) {
  try { localStorage.setItem(SOUND_KEY, on ? '1' : '0'); } catch (e) { /* private mode */ }
}

/**
 * A message `m` of conversation `conv` arrived live: notify if the tab is hidden, it is a private
 * message or mentions us, and the conversation is not muted. `open(key)` opens the conversation
 * when the notification is clicked.
 */
export function notifyMessage(m, conv, open) {
  if (m.own || !document.hidden || isMuted(conv.key)) return;
  const mention = mentionsMe(m);
  if (conv.kind !== 'dm' && !mention) return;
  if (soundOn()) beep();
  if (permission() !== 'granted') return;
  const where = conv.kind === 'dm' ? m.from : (conv.kind === 'room' ? m.from + ' in ' + conv.room : m.from + ' in Public');
  const text = m.text.length > BODY_MAX ? m.text.slice(0, BODY_MAX - 1) + '…' : m.text;
  try {
    const n = new window.Notification(mention ? where + ' mentioned you' : where, { body: text, tag: conv.key });
    n.onclick = () => { window.focus(); open(conv.key); n.close(); };
  } catch (e) { /* some browsers allow notifications from a service worker only */ }
}

let audio = null;
/** A short, quiet tone (no sound file to load). */
function beep() {
  try {
    audio = audio || new (window.AudioContext || window.webkitAudioContext)();
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.frequency.value = 880;
    gain.gain.setValueAtTime(0.08, audio.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.0001, audio.currentTime + 0.25);
    osc.connect(gain).connect(audio.destination);
    osc.start();
    osc.stop(audio.currentTime + 0.25);
  } catch (e) { /* no audio: the notification and the title say it */ }
}

/** Pure helpers: time and day labels, text length, name and offset checks, name colours. */

import { USERNAME_RE } from './constants.js';

export const pad2 = (n) => String(n).padStart(2, '0');
export const fmtTime = (ts) => { const d = new Date(ts); return pad2(d.getHours()) + ':' + pad2(d.getMinutes()); };
export const fmtFull = (ts) => new Date(ts).toLocaleString(undefined, {
  weekday: 'long', year: 'numeric', month: 'long', day: 'numeric',
  hour: '2-digit', minute: '2-digit', second: '2-digit',
});
export const dayStamp = (ts) => { const d = new Date(ts); return d.getFullYear() * 10000 + d.getMonth() * 100 + d.getDate(); };

export function dayLabel(ts) {
  const today = dayStamp(Date.now());
  const yesterday = dayStamp(Date.now() - 86400000);
  const day = dayStamp(ts);
  if (day === today) return 'Today';
  if (day === yesterday) return 'Yesterday';
  return new Date(ts).toLocaleDateString(undefined, { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
}

/** Length in code points, as the server (Python len) counts it. */
export const textLength = (s) => { let n = 0; for (const _ of s) n++; return n; };

export const validUsername = (name) => USERNAME_RE.test(name);
export const validRoom = (name) => USERNAME_RE.test(name);     // room names follow the username rules
export const isOffset = (v) => typeof v === 'number' && Number.isInteger(v) && v > 0;
export const initial = (name) => (name ? name.replace(/[^A-Za-z0-9]/g, '').charAt(0) || name.charAt(0) : '?').toUpperCase();

/** A stable pleasant hue per username, used for the avatar / name colour. */
export function hueOf(name) {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  return h % 360;
}

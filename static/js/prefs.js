/**
 * Settings of this browser: the light/dark switch (remembered in localStorage, otherwise the
 * system's choice), desktop notifications (asked for on this button or when first sending, never
 * on load) and the notification sound.
 */

import { ui, announce } from './dom.js';
import { askPermission, permission, soundOn, setSound } from './notify.js';

const THEME_KEY = 'chat.theme';           // localStorage: 'light' or 'dark' once the user chose
const darkQuery = window.matchMedia('(prefers-color-scheme: dark)');

function savedTheme() {
  try {
    const t = localStorage.getItem(THEME_KEY);
    return t === 'light' || t === 'dark' ? t : null;
  } catch (e) { return null; }
}

/** The theme in use: the one chosen on this browser, else the system's. */
export const theme = () => savedTheme() || (darkQuery.matches ? 'dark' : 'light');

export function applyTheme() {
  const chosen = savedTheme();
  if (chosen) document.documentElement.dataset.theme = chosen;
  else delete document.documentElement.dataset.theme;
  const dark = theme() === 'dark';
  ui.themeToggle.setAttribute('aria-pressed', String(dark));
  ui.themeToggle.textContent = dark ? 'Light mode' : 'Dark mode';
  ui.themeToggle.title = dark ? 'Switch to the light theme' : 'Switch to the dark theme';
}

export function toggleTheme() {
  const next = theme() === 'dark' ? 'light' : 'dark';
  try { localStorage.setItem(THEME_KEY, next); } catch (e) { /* private mode: for this page only */ }
  document.documentElement.dataset.theme = next;
  applyTheme();
  announce(next === 'dark' ? 'Dark theme' : 'Light theme');
}

export function renderPrefs() {
  const p = permission();
  ui.notifyToggle.hidden = p === 'unsupported';
  ui.notifyToggle.disabled = p !== 'default';
  ui.notifyToggle.textContent = { granted: 'Notifications on', denied: 'Notifications blocked', default: 'Turn on notifications' }[p] || '';
  ui.notifyToggle.title = p === 'denied' ? 'Allow notifications for this site in the browser settings' : '';
  const on = soundOn();
  ui.soundToggle.setAttribute('aria-pressed', String(on));
  ui.soundToggle.textContent = on ? 'Sound on' : 'Sound off';
}

export function wirePrefs() {
  applyTheme();
  renderPrefs();
  darkQuery.addEventListener('change', applyTheme);
  ui.themeToggle.addEventListener('click', toggleTheme);
  ui.notifyToggle.addEventListener('click', async () => { await askPermission(); renderPrefs(); });
  ui.soundToggle.addEventListener('click', () => { setSound(!soundOn()); renderPrefs(); });
}

/**
 * "@" in the composer offers names: the users online and the online members of the open room
 * (and the other side of a private conversation). Arrow keys move, Enter or Tab picks, Escape
 * closes; a click picks too. The list is a listbox tied to the composer (aria-activedescendant).
 */

import { state } from './state.js';
import { ui, el } from './dom.js';

const MAX_SHOWN = 8;
const BEFORE_CARET_RE = /(^|[^\w.@-])@([A-Za-z0-9_.-]{0,32})$/;

let options = [];        // names shown
let selected = 0;
let range = null;        // [start, end] of the "@prefix" being completed

function candidates() {
  const conv = state.convs.get(state.active);
  const names = new Set(state.online);
  if (conv && conv.kind === 'room') for (const u of state.roomMembers[conv.room] || []) names.add(u);
  if (conv && conv.kind === 'dm') names.add(conv.peer);
  names.delete(state.me);
  return [...names].sort((a, b) => a.localeCompare(b));
}

/** The composer's text changed: show, update or hide the list. */
export function updateMentions() {
  const t = ui.text;
  const caret = t.selectionStart;
  const m = caret === t.selectionEnd ? t.value.slice(0, caret).match(BEFORE_CARET_RE) : null;
  if (!m) { closeMentions(); return; }
  const prefix = m[2].toLowerCase();
  options = candidates().filter((n) => n.toLowerCase().startsWith(prefix)).slice(0, MAX_SHOWN);
  if (!options.length) { closeMentions(); return; }
  range = [caret - m[2].length - 1, caret];
  selected = Math.min(selected, options.length - 1);
  render();
}

export function closeMentions() {
  options = [];
  range = null;
  selected = 0;
  ui.mentionList.hidden = true;
  ui.mentionList.replaceChildren();
  ui.text.removeAttribute('aria-activedescendant');
}

/** Keys while the list is open; true when the key was the list's (the composer must not act on it). */
export function mentionKey(e) {
  if (ui.mentionList.hidden || !options.length) return false;
  if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
    selected = (selected + (e.key === 'ArrowDown' ? 1 : options.length - 1)) % options.length;
    render();
  } else if ((e.key === 'Enter' && !e.shiftKey) || e.key === 'Tab') {
    pick(options[selected]);
  } else if (e.key === 'Escape') {
    closeMentions();
  } else {
    return false;
  }
  e.preventDefault();
  return true;
}

function pick(name) {
  if (!range) return;
  const t = ui.text;
  const insert = '@' + name + ' ';
  t.value = t.value.slice(0, range[0]) + insert + t.value.slice(range[1]);
  const at = range[0] + insert.length;
  t.setSelectionRange(at, at);
  closeMentions();
  t.focus();
  t.dispatchEvent(new Event('input'));
}

function render() {
  ui.mentionList.replaceChildren(...options.map((name, i) => {
    const item = el('li', {
      id: 'mention-' + i, role: 'option', class: 'mention-option' + (i === selected ? ' is-selected' : ''),
      'aria-selected': String(i === selected), text: '@' + name,
    });
    // mousedown, not click: the composer keeps its focus and caret.
    item.addEventListener('mousedown', (e) => { e.preventDefault(); pick(name); });
    return item;
  }));
  ui.mentionList.hidden = false;
  ui.text.setAttribute('aria-activedescendant', 'mention-' + selected);
}

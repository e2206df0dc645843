/**
 * A message's text as DOM: links, light formatting and mentions, built from text nodes and
 * elements only (never innerHTML): whatever a message holds, it can never become markup.
 *
 *   ```code block```   `code`   **bold** or *bold*   _italic_   @name   http(s):// and mailto: links
 *
 * Links open in a new tab, without the opener or a referrer; only http, https and mailto URLs
 * become links (anything else stays text). Emphasis needs a space or punctuation (or the start or
 * end of the text) outside its markers, so snake_case_names and 2*3*4 stay as they are.
 */

import { el } from './dom.js';

const FENCE = '```';
const INLINE_CODE_RE = /`([^`\n]+)`/g;
const LINK_RE = /\b(?:https?:\/\/|mailto:)[^\s<>"'`]+/gi;
const TRAILING_RE = /[.,;:!?)\]}*_]+$/;         // punctuation after a URL is not part of it
const SAFE_PROTOCOLS = new Set(['http:', 'https:', 'mailto:']);
const EMPHASIS_RE = /(^|[\s([{"'])(?:\*\*([^*\n]+?)\*\*|\*([^*\s](?:[^*\n]*?[^*\s])?)\*|_([^_\s](?:[^_\n]*?[^_\s])?)_)(?=$|[\s.,;:!?)\]}"'])/g;
const MENTION_RE = /(^|[^\w.@-])@([A-Za-z0-9_.-]{1,32})/g;

/** The users a text mentions (`@name`; a trailing "." or "-" is punctuation, not the name). */
export function mentionsOf(text) {
  const names = new Set();
  for (const part of text.split(FENCE).filter((_, i) => i % 2 === 0)) {
    for (const m of part.replace(INLINE_CODE_RE, ' ').matchAll(MENTION_RE)) names.add(m[2].replace(/[.-]+$/, ''));
  }
  return names;
}

/** Replace the children of `target` with the formatted `text`; `me`: mentions of this user stand out. */
export function renderText(target, text, me) {
  target.replaceChildren(...formatText(text, me || ''));
}

/** The nodes of a formatted text. */
export function formatText(text, me) {
  const parts = text.split(FENCE);
  if (parts.length % 2 === 0) {                  // an unclosed fence is text
    const tail = parts.splice(parts.length - 2, 2).join(FENCE);
    parts.push(tail);
  }
  const nodes = [];
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      const code = part.replace(/^[A-Za-z0-9+#.-]*\n/, '').replace(/\n$/, '');   // a language tag, if any
      nodes.push(el('pre', { class: 'msg-code-block' }, [el('code', { text: code })]));
    } else if (part) {
      nodes.push(...inlineCode(part, me));
    }
  });
  return nodes;
}

function inlineCode(text, me) {
  return splitBy(text, INLINE_CODE_RE, (m) => [el('code', { class: 'msg-code', text: m[1] })], (s) => links(s, me));
}

function links(text, me) {
  return splitBy(text, LINK_RE, (m) => {
    const raw = m[0];
    const trailing = (raw.match(TRAILING_RE) || [''])[0];
    const url = raw.slice(0, raw.length - trailing.length);
    const link = safeLink(url);
    if (!link) return emphasis(raw, me);
    return trailing ? [link, ...emphasis(trailing, me)] : [link];
  }, (s) => emphasis(s, me));
}

/** An <a> for an http, https or mailto URL, or null for anything else. */
function safeLink(url) {
  let parsed;
  try { parsed = new URL(url); } catch (e) { return null; }
  if (!SAFE_PROTOCOLS.has(parsed.protocol)) return null;
  if (parsed.protocol === 'mailto:' ? parsed.pathname === '' : !parsed.hostname) return null;
  return el('a', {
    class: 'msg-link', href: parsed.href, target: '_blank', rel: 'noopener noreferrer', text: url,
  });
}

function emphasis(text, me) {
  return splitBy(text, EMPHASIS_RE, (m) => {
    const inner = m[2] !== undefined ? m[2] : m[3] !== undefined ? m[3] : m[4];
    const tag = m[4] !== undefined ? 'em' : 'strong';
    return [...mentions(m[1], me), el(tag, null, mentions(inner, me))];
  }, (s) => mentions(s, me));
}

function mentions(text, me) {
  return splitBy(text, MENTION_RE, (m) => {
    const name = m[2].replace(/[.-]+$/, '');
    const rest = m[2].slice(name.length);
    const cls = 'mention' + (name === me ? ' is-me' : '');
    return [document.createTextNode(m[1]), el('span', { class: cls, text: '@' + name }), rest ? document.createTextNode(rest) : null];
  }, (s) => [document.createTextNode(s)]);
}

/** Split `text` by the matches of `re` (global): `onMatch(match)` and `onText(string)` give nodes. */
function splitBy(text, re, onMatch, onText) {
  const out = [];
  let at = 0;
  re.lastIndex = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > at) out.push(...onText(text.slice(at, m.index)));
    out.push(...onMatch(m).filter(Boolean));
    at = m.index + m[0].length;
  }
  if (at < text.length) out.push(...onText(text.slice(at)));
  return out;
}

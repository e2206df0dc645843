/*
 * Chat page.
 *
 * Plain JavaScript, no build step, no framework. All user-provided strings are
 * rendered with textContent / createTextNode, never as HTML.
 *
 * Layout of this file:
 *   1. constants and the single `state` object
 *   2. small helpers (DOM, time, ids)
 *   3. session storage (token + username per tab)
 *   4. sign in / sign out
 *   5. connection: connect, reconnect with backoff, ping, send(frame)
 *   6. handleFrame(frame): one switch on frame.type
 *   7. conversations and messages (model updates)
 *   8. render functions, one per region of the page
 *   9. UI event wiring and start-up
 *
 * Extension points for later features (rooms, presence, typing, history):
 *   - a conversation is keyed "public", "dm:<user>" (and later "room:<name>");
 *     see convKeyForMessage() and ensureConv().
 *   - state.positions keeps the last offset seen per channel, ready for `resume`.
 *   - add a `case` in handleFrame() and, if needed, a render function.
 */
(function () {
  'use strict';

  // ---------------------------------------------------------------- 1. state

  const USERNAME_RE = /^[A-Za-z0-9_.-]{1,32}$/;
  const MAX_TEXT = 4000;               // characters (code points), as the server counts them
  const COUNT_SHOW_FROM = 3500;        // show the character counter from this length on
  const PING_MS = 25000;               // ping interval while the socket is open
  const IDLE_MS = 65000;               // no frame at all for this long: the socket is dead
  const ACK_TIMEOUT_MS = 20000;        // a message with no ack after this is shown as failed
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const MAX_FAILED_OPENS = 3;          // closes before open in a row -> ask /readyz why (see socketGone)
  const READY_CHECK_MS = 5000;         // give up on a /readyz request after this long
  const CLOSE_AUTH = 4001;             // close code meaning "token no longer valid"
  const MAX_MESSAGES_PER_CONV = 1000;
  const GROUP_WINDOW_MS = 5 * 60 * 1000;
  const AT_BOTTOM_PX = 48;

  const STORE = {
    token: 'chat.token',
    user: 'chat.username',
    convs: 'chat.convs',
    active: 'chat.active',
  };

  /**
   * The whole client state. Render functions read it; event handlers change it
   * and then call the render functions of the regions they touched.
   */
  const state = {
    me: null,                 // username, string, once signed in
    token: null,              // JWT from /api/login
    serverId: '',             // SERVER_ID of the server that serves our socket (or the page)
    conn: {
      status: 'offline',      // 'connecting' | 'online' | 'reconnecting' | 'offline'
      ws: null,               // the current WebSocket, or null
      ready: false,           // welcome received on the current socket
      server: '',             // SERVER_ID from the welcome of the current socket
      attempt: 0,             // reconnect attempt count, for the backoff
      failedOpens: 0,         // closes before open, in a row
      unavailable: false,     // /readyz did not answer 200 after failed opens: the server is down
      upBefore: false,        // /readyz answered 200 just before the current attempt (see checkServer)
      checkSeq: 0,            // identifies the latest /readyz check; older answers are ignored
      retryAt: 0,             // when the next reconnect attempt is due (ms)
      retryTimer: null,
      tickTimer: null,        // refreshes the "reconnecting in Ns" countdown
      pingTimer: null,
      lastFrameAt: 0,
    },
    convs: new Map(),         // key -> conversation (see newConv)
    order: [],                // DM keys, most recent activity first ("public" is always first)
    active: 'public',         // key of the open conversation
    seen: new Set(),          // message ids already shown (drop duplicates)
    pending: new Map(),       // cid -> message sent on the wire, waiting for ack/error
    outbox: [],               // messages typed while not connected, sent on welcome
    positions: {},            // channel -> last offset seen (for a later `resume`)
    cidSeq: 0,
    sidebarOpen: false,       // phone layout only
    loginBusy: false,
  };

  // ------------------------------------------------------------- 2. helpers

  const $ = (id) => document.getElementById(id);

  const ui = {
    loginScreen: $('login-screen'),
    loginForm: $('login-form'),
    loginName: $('login-name'),
    loginError: $('login-error'),
    loginSubmit: $('login-submit'),
    app: $('app'),
    main: $('main'),
    sidebar: $('sidebar'),
    sidebarToggle: $('sidebar-toggle'),
    sidebarClose: $('sidebar-close'),
    toggleDot: $('toggle-dot'),
    backdrop: $('backdrop'),
    convList: $('conv-list'),
    dmForm: $('dm-form'),
    dmName: $('dm-name'),
    dmError: $('dm-error'),
    meName: $('me-name'),
    meAvatar: $('me-avatar'),
    signout: $('signout'),
    convTitle: $('conv-title'),
    convSub: $('conv-sub'),
    conn: $('conn'),
    connText: $('conn-text'),
    connRetry: $('conn-retry'),
    connSr: $('conn-sr'),
    notice: $('notice'),
    noticeText: $('notice-text'),
    noticeClose: $('notice-close'),
    messages: $('messages'),
    empty: $('empty'),
    emptyTitle: $('empty-title'),
    emptyText: $('empty-text'),
    newPill: $('new-pill'),
    composer: $('composer'),
    text: $('composer-text'),
    send: $('send'),
    hint: $('composer-hint'),
    count: $('composer-count'),
  };

  const phoneQuery = window.matchMedia('(max-width: 700px)');
  // On touch screens, do not focus the composer by ourselves: it would pop the keyboard up.
  const touchQuery = window.matchMedia('(pointer: coarse)');
  const focusComposer = () => { if (!touchQuery.matches) ui.text.focus(); };

  /** Create an element. `props.text` sets textContent; never sets HTML. */
  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'text') node.textContent = String(v);
        else if (k === 'class') node.className = v;
        else if (k === 'on') for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
        else node.setAttribute(k, v === true ? '' : String(v));
      }
    }
    if (children) for (const c of children) if (c) node.append(c);
    return node;
  }

  const pad2 = (n) => String(n).padStart(2, '0');
  const fmtTime = (ts) => { const d = new Date(ts); return pad2(d.getHours()) + ':' + pad2(d.getMinutes()); };
  const fmtFull = (ts) => new Date(ts).toLocaleString(undefined, {
    weekday: 'long', year: 'numeric', month: 'long', day: 'numeric',
    hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
  const dayStamp = (ts) => { const d = new Date(ts); return d.getFullYear() * 10000 + d.getMonth() * 100 + d.getDate(); };

  function dayLabel(ts) {
    const today = dayStamp(Date.now());
    const yesterday = dayStamp(Date.now() - 86400000);
    const day = dayStamp(ts);
    if (day === today) return 'Today';
    if (day === yesterday) return 'Yesterday';
    return new Date(ts).toLocaleDateString(undefined, { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
  }

  /** Length in code points, as the server (Python len) counts it. */
  const textLength = (s) => { let n = 0; for (const _ of s) n++; return n; };

  function newCid() {
    state.cidSeq += 1;
    return 'c' + state.cidSeq + Math.random().toString(36).slice(2, 10);
  }

  const validUsername = (name) => USERNAME_RE.test(name);
  const initial = (name) => (name ? name.replace(/[^A-Za-z0-9]/g, '').charAt(0) || name.charAt(0) : '?').toUpperCase();

  /** A stable pleasant hue per username, used for the avatar / name colour. */
  function hueOf(name) {
    let h = 0;
    for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
    return h % 360;
  }

  function isAtBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight <= AT_BOTTOM_PX;
  }

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
    ui.newPill.hidden = true;
  }

  // ------------------------------------------------------- 3. session store

  function storeGet(key) { try { return sessionStorage.getItem(key); } catch (e) { return null; } }
  function storeSet(key, v) { try { sessionStorage.setItem(key, v); } catch (e) { /* private mode */ } }
  function storeDel(key) { try { sessionStorage.removeItem(key); } catch (e) { /* ignore */ } }

  function saveSession() {
    storeSet(STORE.token, state.token);
    storeSet(STORE.user, state.me);
  }

  /** The list of open DMs and the open conversation survive a reload of the tab. */
  function saveConvs() {
    if (!state.me) return;
    storeSet(STORE.convs, JSON.stringify(state.order.map((k) => state.convs.get(k).peer)));
    storeSet(STORE.active, state.active);
  }

  function clearSession() {
    for (const k of Object.values(STORE)) storeDel(k);
  }

  // ----------------------------------------------------- 4. sign in and out

  async function signIn(name) {
    if (state.loginBusy) return;
    if (!validUsername(name)) {
      renderLoginError(name === ''
        ? 'Please enter a username.'
        : 'Usernames are 1 to 32 characters: letters, digits, "_", "." or "-" (no spaces).');
      ui.loginName.focus();
      return;
    }
    state.loginBusy = true;
    renderLoginError('');
    renderLoginBusy();
    try {
      let res;
      try {
        res = await fetch('/api/login', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
          body: JSON.stringify({ username: name }),
          credentials: 'same-origin',
        });
      } catch (e) {
        throw new Error('Cannot reach the server. Check your connection and try again.');
      }
      let body = null;
      try { body = await res.json(); } catch (e) { body = null; }
      if (!res.ok || !body || typeof body.token !== 'string') {
        const msg = body && body.error && typeof body.error.message === 'string'
          ? body.error.message
          : 'Sign-in failed (HTTP ' + res.status + ').';
        throw new Error(msg);
      }
      startSession(body.token, typeof body.username === 'string' ? body.username : name, false);
    } catch (e) {
      renderLoginError(e.message || String(e));
      ui.loginName.focus();
    } finally {
      state.loginBusy = false;
      renderLoginBusy();
    }
  }

  /** Enter the chat with a token. `restore`: coming back from sessionStorage after a reload. */
  function startSession(token, username, restore) {
    state.token = token;
    state.me = username;
    if (!restore) {
      storeDel(STORE.convs);
      storeDel(STORE.active);
    }
    saveSession();
    resetChat();
    restoreConvs();
    renderScreen();
    renderMe();
    renderAll();
    state.conn.attempt = 0;
    state.conn.failedOpens = 0;
    state.conn.unavailable = false;
    state.conn.upBefore = false;
    connect();
    focusComposer();
  }

  /** Leave the chat. `message`: shown on the sign-in screen (e.g. session expired). */
  function signOut(message) {
    const name = state.me;
    state.token = null;
    state.me = null;
    clearSession();
    closeSocket(1000);
    cancelReconnect();
    resetChat();
    setConn('offline');
    state.sidebarOpen = false;
    renderSidebar();
    renderScreen();
    renderTitle();
    renderLoginError(message || '');
    ui.loginName.value = message && name ? name : '';
    ui.loginName.focus();
  }

  const expireSession = () => signOut('Session expired, sign in again.');

  function resetChat() {
    state.convs = new Map();
    state.order = [];
    state.active = 'public';
    state.seen = new Set();
    for (const m of state.pending.values()) clearTimeout(m.ackTimer);
    state.pending = new Map();
    state.outbox = [];
    state.positions = {};
    ensureConv('public');
    ui.messages.replaceChildren();
    ui.text.value = '';
    hideNotice();
  }

  function restoreConvs() {
    let peers = [];
    try { peers = JSON.parse(storeGet(STORE.convs) || '[]'); } catch (e) { peers = []; }
    if (Array.isArray(peers)) {
      for (const p of peers.slice().reverse()) if (typeof p === 'string' && validUsername(p)) touchConv(ensureConv(dmKey(p)));
    }
    const active = storeGet(STORE.active);
    if (active && state.convs.has(active)) state.active = active;
  }

  // ------------------------------------------------------- 5. connection

  function connect() {
    cancelReconnect();
    closeSocket(1000);
    state.conn.checkSeq += 1;                   // a /readyz check still running is outdated now
    if (!state.token) return;
    if (navigator.onLine === false) { setConn('offline'); return; }
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = proto + '//' + location.host + '/ws?token=' + encodeURIComponent(state.token);
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    const c = state.conn;
    c.ws = ws;
    c.ready = false;
    let opened = false;
    setConn('connecting');

    ws.addEventListener('open', () => {
      if (ws !== c.ws) return;
      opened = true;
      c.failedOpens = 0;
      c.unavailable = false;
      c.upBefore = false;
      c.lastFrameAt = Date.now();
      setConn('online');
      startPing();
    });
    ws.addEventListener('message', (ev) => {
      if (ws !== c.ws) return;
      c.lastFrameAt = Date.now();
      if (typeof ev.data !== 'string') return;   // we never offer msgpack
      let frame;
      try { frame = JSON.parse(ev.data); } catch (e) { return; }
      if (frame && typeof frame === 'object' && !Array.isArray(frame)) handleFrame(frame);
    });
    ws.addEventListener('close', (ev) => {
      if (ws !== c.ws) return;
      socketGone(ev.code, opened);
    });
    // 'error' is always followed by 'close'; nothing to do here.
  }

  /** The current socket closed (or was given up on). */
  function socketGone(code, wasOpen) {
    const c = state.conn;
    c.ws = null;
    c.ready = false;
    c.server = '';
    stopPing();
    failInFlight('Connection lost before the server confirmed this message.');
    if (!state.token) return;
    if (code === CLOSE_AUTH) { expireSession(); return; }
    if (!wasOpen) {
      c.failedOpens += 1;
      if (c.failedOpens >= MAX_FAILED_OPENS) { checkServer(); return; }
    }
    scheduleReconnect();
  }

  /**
   * Handshakes keep failing. A browser does not tell why (401 and 502 look the same),
   * so ask /readyz: a server that answers 200 is up and refused our token -> sign in
   * again; no answer, 502 or 503 -> the servers are down, keep retrying with backoff.
   * A server may have come back between the failed handshake and the 200: so the first
   * 200 buys one more attempt at once, and only a refusal between two 200s signs out.
   */
  async function checkServer() {
    const c = state.conn;
    const seq = ++c.checkSeq;
    const token = state.token;
    let ready = false;
    const abort = typeof AbortController === 'function' ? new AbortController() : null;
    const timer = abort ? setTimeout(() => abort.abort(), READY_CHECK_MS) : null;
    try {
      const res = await fetch('/readyz', {
        cache: 'no-store', credentials: 'same-origin', signal: abort ? abort.signal : undefined,
      });
      ready = res.status === 200;
    } catch (e) {
      ready = false;                            // network error or timeout: unreachable
    } finally {
      clearTimeout(timer);
    }
    // Signed out, signed in again, or a new connection started meanwhile: not ours to act on.
    if (seq !== c.checkSeq || state.token !== token || !token || c.ws || c.retryTimer) return;
    if (ready && c.upBefore) { expireSession(); return; }   // up before and after a refused handshake
    c.upBefore = ready;
    if (ready) { connect(); return; }
    c.unavailable = true;
    scheduleReconnect();
  }

  /** Close our socket without triggering the reconnect logic. */
  function closeSocket(code) {
    const ws = state.conn.ws;
    state.conn.ws = null;
    state.conn.ready = false;
    state.conn.server = '';
    stopPing();
    if (ws) { try { ws.close(code || 1000); } catch (e) { /* ignore */ } }
  }

  /** Give up on a socket that looks dead, and reconnect. */
  function dropSocket() {
    closeSocket(4000);
    socketGone(1006, true);
  }

  function scheduleReconnect() {
    const c = state.conn;
    cancelReconnect();
    if (navigator.onLine === false) { setConn('offline'); return; }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, c.attempt));
    const delay = Math.min(BACKOFF_MAX_MS, Math.round(base * (0.8 + Math.random() * 0.4)));  // ±20 % jitter
    c.attempt += 1;
    c.retryAt = Date.now() + delay;
    c.retryTimer = setTimeout(connect, delay);
    c.tickTimer = setInterval(renderConn, 1000);
    setConn('reconnecting');
  }

  function cancelReconnect() {
    const c = state.conn;
    clearTimeout(c.retryTimer);
    clearInterval(c.tickTimer);
    c.retryTimer = null;
    c.tickTimer = null;
  }

  function startPing() {
    stopPing();
    state.conn.pingTimer = setInterval(() => {
      if (Date.now() - state.conn.lastFrameAt > IDLE_MS) { dropSocket(); return; }
      send({ type: 'ping' });
    }, PING_MS);
  }

  function stopPing() {
    clearInterval(state.conn.pingTimer);
    state.conn.pingTimer = null;
  }

  function setConn(status) {
    const changed = state.conn.status !== status;
    state.conn.status = status;
    renderConn(changed);
  }

  /** Send one frame on the open socket. Returns false when it could not be sent. */
  function send(frame) {
    const ws = state.conn.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch (e) {
      return false;
    }
  }

  // ------------------------------------------------------- 6. frames

  function handleFrame(frame) {
    switch (frame.type) {
      case 'welcome': onWelcome(frame); break;
      case 'message': onMessage(frame); break;
      case 'ack': onAck(frame); break;
      case 'error': onError(frame); break;
      case 'pong': break;                       // lastFrameAt already refreshed
      // later: 'presence', 'typing', 'history', 'resumed', 'who'
      default: break;                           // unknown types are ignored
    }
  }

  function onWelcome(f) {
    const c = state.conn;
    c.ready = true;
    c.attempt = 0;                              // a good connection resets the backoff
    if (typeof f.user === 'string' && f.user && f.user !== state.me) {
      state.me = f.user;
      saveSession();
      renderMe();
    }
    if (typeof f.server === 'string' && f.server) {
      state.serverId = f.server;
      c.server = f.server;
      renderServerId();
      renderConn(false);
    }
    if (f.positions && typeof f.positions === 'object') {
      for (const [ch, off] of Object.entries(f.positions)) {
        if (typeof off === 'number' && !(ch in state.positions)) state.positions[ch] = off;
      }
    }
    flushOutbox();
  }

  function onMessage(f) {
    if (f.id === undefined || f.id === null) return;
    if (typeof f.text !== 'string' || typeof f.from !== 'string') return;
    trackPosition(f);
    const id = String(f.id);
    if (state.seen.has(id)) return;                       // duplicate copy
    const key = convKeyForMessage(f);
    if (!key) return;                                     // a kind this page does not show yet
    const ts = typeof f.ts === 'number' ? f.ts : Date.now();
    const own = f.from === state.me;

    if (own) {
      // Our own public message may come back before its ack: confirm the pending copy.
      const mine = findPendingEcho(key, f.text);
      if (mine) {
        state.seen.add(id);
        confirmMessage(mine, id, ts);
        return;
      }
    }
    state.seen.add(id);
    addMessage(key, {
      id, cid: null, kind: f.kind, from: f.from, to: typeof f.to === 'string' ? f.to : null,
      text: f.text, ts, own, status: 'sent', error: null,
    });
  }

  function onAck(f) {
    const m = typeof f.cid === 'string' ? state.pending.get(f.cid) : null;
    if (!m) return;
    const id = f.id !== undefined && f.id !== null ? String(f.id) : m.id;
    if (id) state.seen.add(id);
    confirmMessage(m, id, typeof f.ts === 'number' ? f.ts : m.ts);
  }

  function onError(f) {
    const text = typeof f.message === 'string' && f.message ? f.message : (f.code || 'Error');
    const m = typeof f.cid === 'string' ? state.pending.get(f.cid) : null;
    if (m) {
      clearTimeout(m.ackTimer);
      state.pending.delete(f.cid);
      m.status = 'failed';
      m.error = text;
      updateMessageNode(m);
      announce('Message not sent: ' + text);
      return;
    }
    showNotice(text);
  }

  function trackPosition(f) {
    if (typeof f.channel === 'string' && typeof f.offset === 'number') {
      const prev = state.positions[f.channel];
      if (prev === undefined || f.offset > prev) state.positions[f.channel] = f.offset;
    }
  }

  // ------------------------------------------- 7. conversations and messages

  const dmKey = (user) => 'dm:' + user;

  /** Conversation key of an incoming message: "public", or "dm:<the other party>". */
  function convKeyForMessage(f) {
    if (f.kind === 'public') return 'public';
    if (f.kind === 'private') {
      const other = f.from === state.me ? f.to : f.from;    // from == me: a copy from my other tab
      return typeof other === 'string' && other ? dmKey(other) : null;
    }
    return null;                                            // 'room' later: 'room:' + f.room
  }

  function newConv(key) {
    if (key === 'public') {
      return { key, kind: 'public', peer: null, title: 'Public', messages: [], unread: 0, lastTs: 0, scroll: null, draft: '' };
    }
    const peer = key.slice(3);
    return { key, kind: 'dm', peer, title: peer, messages: [], unread: 0, lastTs: 0, scroll: null, draft: '' };
  }

  function ensureConv(key) {
    let conv = state.convs.get(key);
    if (!conv) {
      conv = newConv(key);
      state.convs.set(key, conv);
      if (conv.kind !== 'public') state.order.push(key);
    }
    return conv;
  }

  /** Move a DM to the top of the list. */
  function touchConv(conv) {
    if (conv.kind === 'public') return;
    const i = state.order.indexOf(conv.key);
    if (i > 0) { state.order.splice(i, 1); state.order.unshift(conv.key); }
    else if (i < 0) state.order.unshift(conv.key);
  }

  /** Open a private conversation with `name` (from the sidebar input or a name click). */
  function openDM(name) {
    if (!validUsername(name)) return 'Not a valid username (1–32 letters, digits, "_", "." or "-").';
    if (name === state.me) return 'That is you. Pick someone else.';
    const conv = ensureConv(dmKey(name));
    touchConv(conv);
    openConv(conv.key, true);
    return null;
  }

  function openConv(key, focusAfter) {
    const prev = state.convs.get(state.active);
    if (prev) {
      prev.draft = ui.text.value;
      prev.scroll = isAtBottom() ? null : ui.messages.scrollTop;
    }
    state.active = key;
    const conv = state.convs.get(key);
    conv.unread = 0;
    saveConvs();
    if (phoneQuery.matches) state.sidebarOpen = false;
    renderHeader();
    renderMessages();
    renderConvList();
    renderComposer();
    renderSidebar();
    renderTitle();
    if (focusAfter) focusComposer();
  }

  /** Find our own message sent on the wire, not yet acked, with this text. */
  function findPendingEcho(key, text) {
    for (const m of state.pending.values()) {
      if (m.conv === key && m.text === text && !m.id) return m;
    }
    return null;
  }

  function confirmMessage(m, id, ts) {
    clearTimeout(m.ackTimer);
    if (m.cid) state.pending.delete(m.cid);
    m.id = id || m.id;
    m.ts = ts;
    m.status = 'sent';
    m.error = null;
    updateMessageNode(m);
  }

  /** Add a message to a conversation, render it if the conversation is open. */
  function addMessage(key, msg) {
    const conv = ensureConv(key);
    msg.conv = key;
    msg.el = null;
    const isActive = key === state.active;
    const wasAtBottom = isActive && isAtBottom();
    conv.messages.push(msg);
    conv.lastTs = Math.max(conv.lastTs, msg.ts);
    touchConv(conv);

    let rebuild = false;
    while (conv.messages.length > MAX_MESSAGES_PER_CONV) {
      const old = conv.messages.shift();
      if (old.el) old.el.remove();
      if (old.sepEl) old.sepEl.remove();
      conv.messages[0].el = null;       // its grouping / day separator may change
      rebuild = true;
    }

    if (!msg.own && (!isActive || document.hidden)) conv.unread += 1;

    if (isActive) {
      if (rebuild) {
        renderMessages(true);
      } else {
        const prev = conv.messages[conv.messages.length - 2] || null;
        buildMessageNode(msg, prev);
        if (msg.sepEl) ui.messages.append(msg.sepEl);
        ui.messages.append(msg.el);
        renderEmpty();
      }
      if (wasAtBottom || msg.own) scrollToBottom();
      else ui.newPill.hidden = false;
    }
    renderConvList();
    renderTitle();
    if (key !== 'public') saveConvs();
  }

  function removeMessage(m) {
    const conv = state.convs.get(m.conv);
    if (!conv) return;
    const i = conv.messages.indexOf(m);
    if (i < 0) return;
    conv.messages.splice(i, 1);
    clearTimeout(m.ackTimer);
    if (m.cid) state.pending.delete(m.cid);
    if (m.el) m.el.remove();
    if (m.sepEl) m.sepEl.remove();
    if (conv.messages[i]) conv.messages[i].el = null;    // next one may need a new header
    if (m.conv === state.active) renderMessages(true);
  }

  /** Validate and send the composer's text to the open conversation. */
  function submitComposer() {
    const text = ui.text.value;
    const problem = textProblem(text);
    if (problem) { renderComposerHint(problem, true); return; }
    queueOutgoing(state.active, text);
    ui.text.value = '';
    state.convs.get(state.active).draft = '';
    renderComposer();
    ui.text.focus();             // keep the keyboard up after sending
  }

  function textProblem(text) {
    if (text.trim() === '') return 'Type a message first.';
    const n = textLength(text);
    if (n > MAX_TEXT) return 'Too long: ' + n + ' / ' + MAX_TEXT + ' characters.';
    return null;
  }

  function queueOutgoing(key, text) {
    const conv = ensureConv(key);
    const msg = {
      id: null, cid: newCid(), kind: conv.kind === 'public' ? 'public' : 'private',
      from: state.me, to: conv.peer, text, ts: Date.now(), own: true, status: 'queued', error: null,
    };
    addMessage(key, msg);
    transmit(msg);
  }

  /** Put an outgoing message on the wire, or in the outbox while not connected. */
  function transmit(msg) {
    const frame = msg.kind === 'public'
      ? { type: 'public', text: msg.text, cid: msg.cid }
      : { type: 'private', to: msg.to, text: msg.text, cid: msg.cid };
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

  function flushOutbox() {
    const queued = state.outbox;
    state.outbox = [];
    for (const m of queued) if (m.status === 'queued') transmit(m);
  }

  /** Messages on the wire when the socket dropped: we cannot know whether they arrived. */
  function failInFlight(reason) {
    for (const m of state.pending.values()) {
      clearTimeout(m.ackTimer);
      m.status = 'failed';
      m.error = reason;
      updateMessageNode(m);
    }
    state.pending.clear();
  }

  function retryMessage(m) {
    const key = m.conv;
    const text = m.text;
    removeMessage(m);
    queueOutgoing(key, text);
  }

  // ------------------------------------------------------- 8. rendering

  function renderAll() {
    renderServerId();
    renderConn(true);
    renderSidebar();
    renderConvList();
    renderHeader();
    renderMessages();
    renderComposer();
    renderTitle();
  }

  function renderScreen() {
    const signedIn = !!state.token;
    ui.loginScreen.hidden = signedIn;
    ui.app.hidden = !signedIn;
  }

  function renderLoginError(message) {
    ui.loginError.textContent = message;
    ui.loginError.hidden = !message;
    ui.loginName.setAttribute('aria-invalid', message ? 'true' : 'false');
  }

  function renderLoginBusy() {
    ui.loginSubmit.disabled = state.loginBusy;
    ui.loginSubmit.textContent = state.loginBusy ? 'Signing in…' : 'Sign in';
  }

  function renderMe() {
    ui.meName.textContent = state.me || '';
    ui.meAvatar.textContent = initial(state.me || '');
    ui.meAvatar.style.setProperty('--hue', hueOf(state.me || ''));
  }

  function renderServerId() {
    if (!state.serverId) return;
    for (const node of document.querySelectorAll('.server-id')) node.textContent = state.serverId;
  }

  const CONN_LABELS = { connecting: 'Connecting…', online: 'Online', reconnecting: 'Reconnecting', offline: 'Offline' };

  function renderConn(changed) {
    const c = state.conn;
    let text = CONN_LABELS[c.status] || c.status;
    const down = c.unavailable && c.status === 'reconnecting';
    if (c.status === 'reconnecting') {
      const s = Math.max(0, Math.ceil((c.retryAt - Date.now()) / 1000));
      if (down) text = s > 0 ? 'Server unavailable, retrying in ' + s + 's' : 'Server unavailable, retrying…';
      else text = s > 0 ? 'Reconnecting in ' + s + 's' : 'Reconnecting…';
    }
    ui.conn.dataset.state = c.status;
    // The server of this socket (from its welcome): a hover hint, and a hook for tests.
    if (c.server && c.status === 'online') {
      ui.conn.dataset.server = c.server;
      ui.conn.title = 'Connected to ' + c.server;
    } else {
      delete ui.conn.dataset.server;
      ui.conn.removeAttribute('title');
    }
    if (down) ui.conn.dataset.reason = 'unavailable'; else delete ui.conn.dataset.reason;
    ui.connText.textContent = text;
    ui.connRetry.hidden = !(c.status === 'reconnecting' || (c.status === 'offline' && state.token));
    if (changed) announce('Connection: ' + (down ? 'server unavailable' : (CONN_LABELS[c.status] || c.status)));
    renderComposerHint();
  }

  function renderSidebar() {
    const phone = phoneQuery.matches;
    const open = phone && state.sidebarOpen;
    ui.app.classList.toggle('sidebar-open', open);
    ui.backdrop.hidden = !open;
    ui.sidebarToggle.setAttribute('aria-expanded', String(open));
    // On a phone the closed sidebar is off-screen and must not take focus;
    // while it is open, the rest of the page is inert.
    ui.sidebar.inert = phone && !open;
    ui.main.inert = open;
    const anyUnread = [...state.convs.values()].some((c) => c.unread > 0 && c.key !== state.active);
    ui.toggleDot.hidden = !anyUnread;
  }

  let convListSig = '';

  function renderConvList() {
    // Skip the rebuild when nothing the list shows has changed (messages can come fast).
    const keys = ['public', ...state.order];
    const sig = state.active + '|' + keys.map((k) => k + ':' + (state.convs.get(k) || {}).unread).join(',');
    if (sig === convListSig && ui.convList.childElementCount) { renderSidebar(); return; }
    convListSig = sig;
    const focusedKey = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.conv : undefined;
    const items = [];
    for (const key of keys) {
      const conv = state.convs.get(key);
      if (!conv) continue;
      const active = key === state.active;
      const unread = active ? 0 : conv.unread;
      const icon = conv.kind === 'public'
        ? el('span', { class: 'conv-icon conv-icon-public', 'aria-hidden': 'true', text: '#' })
        : el('span', { class: 'avatar avatar-sm', 'aria-hidden': 'true', text: initial(conv.peer) });
      if (conv.kind !== 'public') icon.style.setProperty('--hue', hueOf(conv.peer));
      const label = conv.kind === 'public' ? 'Public' : conv.peer;
      const btn = el('button', {
        type: 'button',
        class: 'conv' + (active ? ' is-active' : '') + (unread ? ' has-unread' : ''),
        'data-conv': key,
        'aria-current': active ? 'true' : null,
        'aria-label': (conv.kind === 'public' ? 'Public channel' : 'Private conversation with ' + label)
          + (unread ? ', ' + unread + ' unread' : ''),
      }, [
        icon,
        el('span', { class: 'conv-name', text: label }),
        unread ? el('span', { class: 'badge', 'aria-hidden': 'true', text: unread > 99 ? '99+' : String(unread) }) : null,
      ]);
      btn.addEventListener('click', () => openConv(key, true));
      items.push(el('li', null, [btn]));
    }
    ui.convList.replaceChildren(...items);
    if (focusedKey) {
      const again = ui.convList.querySelector('[data-conv="' + CSS.escape(focusedKey) + '"]');
      if (again) again.focus();
    }
    renderSidebar();
  }

  function renderHeader() {
    const conv = state.convs.get(state.active);
    if (conv.kind === 'public') {
      ui.convTitle.textContent = 'Public';
      ui.convSub.textContent = 'Everyone online';
    } else {
      ui.convTitle.textContent = conv.peer;
      ui.convSub.textContent = 'Private conversation';
    }
    ui.messages.setAttribute('aria-label', conv.kind === 'public'
      ? 'Messages in Public' : 'Messages with ' + conv.peer);
  }

  function renderTitle() {
    let total = 0;
    for (const c of state.convs.values()) total += c.unread;
    document.title = (total ? '(' + total + ') ' : '') + 'Chat' + (state.me ? ' · ' + state.me : '');
  }

  /** Re-render the message list of the open conversation from its cached nodes. */
  function renderMessages(keepScroll) {
    const conv = state.convs.get(state.active);
    const list = ui.messages;
    const scrollTop = list.scrollTop;
    const wasAtBottom = isAtBottom();
    // Do not let a screen reader re-read the whole list on a conversation switch.
    list.setAttribute('aria-live', 'off');
    const nodes = [];
    let prev = null;
    for (const m of conv.messages) {
      if (!m.el) buildMessageNode(m, prev);
      if (m.sepEl) nodes.push(m.sepEl);
      nodes.push(m.el);
      prev = m;
    }
    list.replaceChildren(...nodes);
    requestAnimationFrame(() => list.setAttribute('aria-live', 'polite'));
    renderEmpty();
    ui.newPill.hidden = true;
    if (keepScroll) {
      if (wasAtBottom) scrollToBottom(); else list.scrollTop = scrollTop;
    } else if (conv.scroll === null || conv.scroll === undefined) {
      scrollToBottom();
    } else {
      list.scrollTop = conv.scroll;
    }
  }

  function renderEmpty() {
    const conv = state.convs.get(state.active);
    const empty = conv.messages.length === 0;
    ui.empty.hidden = !empty;
    if (!empty) return;
    if (conv.kind === 'public') {
      ui.emptyTitle.textContent = 'Welcome to Public';
      ui.emptyText.textContent = 'Messages here reach everyone who is online. Say hello!';
    } else {
      ui.emptyTitle.textContent = 'You and ' + conv.peer;
      ui.emptyText.textContent = 'Only the two of you can read this conversation.';
    }
  }

  /**
   * Build the DOM of one message (and of the day separator before it, if any).
   * Grouping: a message follows the previous one without a header when it is
   * from the same sender, on the same day, within GROUP_WINDOW_MS.
   */
  function buildMessageNode(m, prev) {
    const newDay = !prev || dayStamp(prev.ts) !== dayStamp(m.ts);
    const grouped = !newDay && prev && prev.from === m.from && m.ts - prev.ts < GROUP_WINDOW_MS;
    const conv = state.convs.get(m.conv);

    m.sepEl = newDay
      ? el('div', { class: 'day-sep', role: 'separator' }, [el('span', { text: dayLabel(m.ts) })])
      : null;

    let head = null;
    if (!grouped) {
      const time = el('time', { class: 'msg-head-time' });
      m.headTime = time;
      if (m.own) {
        head = null;                 // own messages: aligned right, no name header
      } else {
        const name = conv && conv.kind === 'public'
          ? el('button', {
            type: 'button', class: 'msg-from msg-from-btn', text: m.from,
            title: 'Message ' + m.from + ' privately',
            'aria-label': m.from + ', open a private conversation',
          })
          : el('span', { class: 'msg-from', text: m.from });
        if (name.tagName === 'BUTTON') name.addEventListener('click', () => openDM(m.from));
        name.style.setProperty('--hue', hueOf(m.from));
        head = el('div', { class: 'msg-head' }, [name, time]);
      }
    } else {
      m.headTime = null;
    }

    const time = el('time', { class: 'msg-time' });
    const status = el('span', { class: 'msg-status' });
    const errText = el('span', { class: 'msg-error-text' });
    const retry = el('button', { type: 'button', class: 'link-btn msg-retry', text: 'Retry' });
    retry.addEventListener('click', () => retryMessage(m));
    const error = el('div', { class: 'msg-error' }, [errText, ' ', retry]);

    const body = el('div', { class: 'bubble' }, [
      // The sender, for screen readers, on grouped messages that have no visible header.
      grouped || m.own ? el('span', { class: 'sr-only', text: (m.own ? 'You' : m.from) + ': ' }) : null,
      el('div', { class: 'msg-text', text: m.text }),
    ]);

    m.el = el('div', { class: 'msg' }, [
      head,
      el('div', { class: 'msg-row' }, [body, el('div', { class: 'msg-meta' }, [time, status])]),
      error,
    ]);
    m.refs = { time, status, error, errText, retry };
    m.grouped = !!grouped;
    updateMessageNode(m);
    return m.el;
  }

  const STATUS_TEXT = { queued: 'waiting for connection…', pending: 'sending…', sent: '', failed: 'not sent' };

  /** Refresh what can change on a message: status, time, error. */
  function updateMessageNode(m) {
    if (!m.el) return;
    const { time, status, error, errText, retry } = m.refs;
    m.el.className = 'msg' + (m.own ? ' is-own' : '') + (m.grouped ? ' is-grouped' : '') + ' is-' + m.status;
    m.el.dataset.id = m.id || '';
    const hhmm = fmtTime(m.ts);
    const full = fmtFull(m.ts);
    for (const t of [time, m.headTime]) {
      if (!t) continue;
      t.textContent = hhmm;
      t.title = full;
      t.dateTime = new Date(m.ts).toISOString();
    }
    status.textContent = STATUS_TEXT[m.status] || '';
    status.hidden = !status.textContent;
    if (m.status === 'sent' && m.own) {
      status.textContent = '✓';
      status.hidden = false;
      status.title = 'Delivered to the server';
      status.setAttribute('aria-label', 'sent');
    } else {
      status.removeAttribute('title');
      status.removeAttribute('aria-label');
    }
    error.hidden = m.status !== 'failed';
    errText.textContent = m.status === 'failed' ? (m.error || 'Not sent.') : '';
    retry.hidden = m.status !== 'failed';
  }

  function renderComposer() {
    const conv = state.convs.get(state.active);
    ui.text.value = conv.draft || '';
    const label = conv.kind === 'public' ? 'Message everyone' : 'Message ' + conv.peer;
    ui.text.placeholder = label + '…';
    ui.text.setAttribute('aria-label', label);
    autoGrow();
    renderComposerHint();
  }

  function renderComposerHint(problem, isError) {
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

  function autoGrow() {
    const t = ui.text;
    t.style.height = 'auto';
    t.style.height = Math.min(t.scrollHeight + 2, Math.round(window.innerHeight * 0.4)) + 'px';
  }

  /** Say something to screen-reader users (a visually hidden live region). */
  function announce(text) {
    ui.connSr.textContent = text;
  }

  let noticeTimer = null;
  function showNotice(text) {
    ui.noticeText.textContent = text;
    ui.notice.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(hideNotice, 8000);
  }
  function hideNotice() {
    clearTimeout(noticeTimer);
    ui.notice.hidden = true;
    ui.noticeText.textContent = '';
  }

  // ------------------------------------------------- 9. events and start-up

  function setSidebar(open, focusAfter) {
    state.sidebarOpen = open;
    renderSidebar();
    if (!focusAfter) return;
    if (open) {
      const current = ui.convList.querySelector('.conv.is-active') || ui.convList.querySelector('.conv');
      if (current) current.focus();
    } else {
      ui.sidebarToggle.focus();
    }
  }

  function wire() {
    ui.loginForm.addEventListener('submit', (e) => {
      e.preventDefault();
      signIn(ui.loginName.value.trim());
    });
    ui.loginName.addEventListener('input', () => {
      if (!ui.loginError.hidden) renderLoginError('');
    });

    ui.signout.addEventListener('click', () => signOut(''));

    ui.dmForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const name = ui.dmName.value.trim();
      const problem = name ? openDM(name) : 'Type a username.';
      ui.dmError.textContent = problem || '';
      ui.dmError.hidden = !problem;
      ui.dmName.setAttribute('aria-invalid', problem ? 'true' : 'false');
      if (!problem) ui.dmName.value = '';
      else ui.dmName.focus();
    });
    ui.dmName.addEventListener('input', () => {
      ui.dmError.hidden = true;
      ui.dmName.setAttribute('aria-invalid', 'false');
    });

    ui.composer.addEventListener('submit', (e) => {
      e.preventDefault();
      submitComposer();
    });
    ui.text.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        submitComposer();
      }
    });
    ui.text.addEventListener('input', () => {
      autoGrow();
      renderComposerHint();
    });

    ui.messages.addEventListener('scroll', () => {
      if (isAtBottom()) ui.newPill.hidden = true;
    }, { passive: true });
    ui.newPill.addEventListener('click', () => {
      scrollToBottom();
      focusComposer();
    });

    ui.connRetry.addEventListener('click', () => {
      state.conn.attempt = 0;
      connect();
    });
    ui.noticeClose.addEventListener('click', hideNotice);

    ui.sidebarToggle.addEventListener('click', () => setSidebar(!state.sidebarOpen, true));
    ui.sidebarClose.addEventListener('click', () => setSidebar(false, true));
    ui.backdrop.addEventListener('click', () => setSidebar(false, false));
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && state.sidebarOpen && phoneQuery.matches) {
        e.preventDefault();
        setSidebar(false, true);
      }
    });
    phoneQuery.addEventListener('change', () => {
      if (!phoneQuery.matches) state.sidebarOpen = false;
      renderSidebar();
    });

    window.addEventListener('offline', () => {
      if (state.token && state.conn.status === 'reconnecting') { cancelReconnect(); setConn('offline'); }
    });
    window.addEventListener('online', () => {
      if (state.token && (state.conn.status === 'offline' || state.conn.status === 'reconnecting')) {
        state.conn.attempt = 0;
        connect();
      }
    });
    document.addEventListener('visibilitychange', () => {
      if (document.hidden || !state.token) return;
      const conv = state.convs.get(state.active);
      if (conv && conv.unread) { conv.unread = 0; renderConvList(); renderTitle(); }
    });
    window.addEventListener('resize', autoGrow);
  }

  function start() {
    const first = document.querySelector('.server-id');
    state.serverId = first ? first.textContent.trim() : '';
    wire();
    const token = storeGet(STORE.token);
    const user = storeGet(STORE.user);
    if (token && user) {
      startSession(token, user, true);
    } else {
      renderScreen();
      renderLoginBusy();
      ui.loginName.focus();
    }
  }

  start();
}());

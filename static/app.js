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
 *   7. channels, history, conversations and messages (model updates)
 *   8. render functions, one per region of the page
 *   9. UI event wiring and start-up
 *
 * Extension points for later features (rooms, presence, typing):
 *   - a conversation is keyed "public", "dm:<user>" (and later "room:<name>");
 *     see convKeyForMessage(), channelOfConv() and ensureConv().
 *   - add a `case` in handleFrame() and, if needed, a render function.
 *
 * Durability (docs/PROTOCOL.md, "Channels, offsets, recovery"):
 *   - state.positions: the highest offset seen per channel ("public", "user:<me>"), from
 *     live messages, history and replay; kept in localStorage per user (chat.positions.<user>),
 *     so a reload or a new connection sends `resume` from there (see onWelcome).
 *   - a channel this page has not loaded yet gets its recent history (`history`), which also
 *     fills the DM conversations (user:<me> holds every private message to or from me).
 *   - a live message that skips offsets asks `history` for the missing range (requestGap);
 *     what cannot be recovered shows a marker in the conversations it concerns.
 *   - scrolling to the top of a conversation loads older messages (loadOlder).
 *   - within a conversation, messages are ordered by (ts, offset); own messages not yet
 *     acknowledged stay at the bottom (see sortsBefore).
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
  const LIMITED_RETRIES = 3;           // a message refused with rate_limited is sent again this often,
  const LIMITED_RETRY_MS = 1000;       // ... after about 1, 2 and 4 s (same cid: never stored twice)
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const MAX_FAILED_OPENS = 3;          // closes before open in a row -> ask /readyz why (see socketGone)
  const READY_CHECK_MS = 5000;         // give up on a /readyz request after this long
  const CLOSE_AUTH = 4001;             // close code meaning "token no longer valid"
  const MAX_MESSAGES_PER_CONV = 1000;
  const GROUP_WINDOW_MS = 5 * 60 * 1000;
  const AT_BOTTOM_PX = 48;
  const PUBLIC = 'public';
  const RECENT_PUBLIC = 50;            // history loaded for Public on a first sign-in
  const RECENT_DMS = 100;              // ... and for user:<me>, which fills the DM conversations
  const OLDER_PAGE = 50;               // history loaded per scroll to the top
  const HISTORY_MAX = 200;             // the server's largest `limit`
  const LOAD_OLDER_PX = 60;            // this close to the top of the list: load older messages
  const AUTO_OLDER_ROUNDS = 10;        // older pages loaded in a row without the user scrolling
  const GAP_TEXT = 'Some messages could not be recovered';
  const RECENT_ROOM = 50;              // history loaded for a room this page has not shown yet
  const MAX_ONLINE = 1000;             // the server's largest `who` answer
  const TYPING_SEND_MS = 2000;         // at most one typing hint per conversation this often
  const TYPING_SHOW_MS = 3000;         // "bob is typing…" lasts this long after a hint
  const ROOM_PREFIX = 'room:';

  const STORE = {
    token: 'chat.token',
    user: 'chat.username',
    convs: 'chat.convs',
    active: 'chat.active',
  };
  // localStorage (shared by the tabs of this browser, kept after sign-out): 'chat.positions.<user>'.
  const POSITIONS_PREFIX = 'chat.positions.';
  const EPOCHS_PREFIX = 'chat.epochs.';      // the epoch of each saved position (protocol v2)
  // localStorage: 'chat.rooms.<user>', the rooms this browser joined for the user (no frame lists them).
  const ROOMS_PREFIX = 'chat.rooms.';

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
    rooms: [],                // names of the rooms joined (sorted), saved per user in localStorage
    joining: new Map(),       // cid -> room name of a `join` sent from the sidebar (opened when confirmed)
    online: new Set(),        // users online anywhere (from `who` and presence online/offline)
    roomOnline: {},           // room -> number of its members online (from `who` with room)
    typingSent: {},           // conversation key -> when we last sent a typing hint for it
    typing: new Map(),        // conversation key -> Map(user -> until when they are shown typing)
    active: 'public',         // key of the open conversation
    seen: new Map(),          // message id -> message shown (drop duplicates, learn offsets)
    readSent: new Set(),      // ids of private messages whose read receipt was sent
    earlyReceipts: new Map(), // message id -> receipt status that came before the message's ack
    changes: new Map(),       // message id -> latest edit/delete of it ({kind, text, ts}), kept for reloads
    changeSends: new Map(),   // cid -> our own edit/delete on the wire ({ref, kind, text})
    pending: new Map(),       // cid -> message sent on the wire, waiting for ack/error
    outbox: [],               // messages typed while not connected, sent on welcome
    positions: {},            // channel -> highest offset seen (saved per user, for `resume`)
    epochs: {},               // channel -> the epoch of that offset (saved with it)
    positionsDirty: false,    // positions changed since they were last saved
    oldest: {},               // channel -> lowest offset loaded on this page
    loaded: {},               // channel -> its recent history has been loaded on this page
    atStart: {},              // channel -> no older message left in history
    requests: new Map(),      // cid -> history request in flight (see requestHistory)
    loadingOlder: {},         // channel -> cid of the older-messages request in flight
    resuming: null,           // { cid, from: {channel: offset} } from `resume` until `resumed`
    gapsToRetry: [],          // gap requests whose socket closed before the answer
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
    roomForm: $('room-form'),
    roomName: $('room-name'),
    roomError: $('room-error'),
    roomList: $('room-list'),
    onlineList: $('online-list'),
    onlineEmpty: $('online-empty'),
    roomLeave: $('room-leave'),
    typing: $('typing'),
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
    // First row of the message list: "Loading earlier messages…" / "Beginning of conversation".
    topRow: el('div', { class: 'history-row' }),
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
  const validRoom = (name) => USERNAME_RE.test(name);     // room names follow the username rules
  const isOffset = (v) => typeof v === 'number' && Number.isInteger(v) && v > 0;
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

  /** Positions per channel of `user` saved on this browser: {} when none (a first sign-in here). */
  function loadPositions(user) {
    let saved = null;
    try { saved = JSON.parse(localStorage.getItem(POSITIONS_PREFIX + user) || 'null'); } catch (e) { saved = null; }
    const positions = {};
    if (saved && typeof saved === 'object' && !Array.isArray(saved)) {
      for (const [ch, off] of Object.entries(saved)) if (isOffset(off) || off === 0) positions[ch] = off;
    }
    return positions;
  }

  function savePositions() {
    state.positionsDirty = false;
    if (!state.me) return;
    try {
      localStorage.setItem(POSITIONS_PREFIX + state.me, JSON.stringify(state.positions));
      localStorage.setItem(EPOCHS_PREFIX + state.me, JSON.stringify(state.epochs));
    } catch (e) { /* private mode or full: positions live as long as the page */ }
  }

  /** Epochs of the saved positions of `user`: a position means something only in its epoch. */
  function loadEpochs(user) {
    let saved = null;
    try { saved = JSON.parse(localStorage.getItem(EPOCHS_PREFIX + user) || 'null'); } catch (e) { saved = null; }
    const epochs = {};
    if (saved && typeof saved === 'object' && !Array.isArray(saved)) {
      for (const [ch, epoch] of Object.entries(saved)) if (typeof epoch === 'string') epochs[ch] = epoch;
    }
    return epochs;
  }

  /** Rooms of `user` this browser joined: [] when none. */
  function loadRooms(user) {
    let saved = null;
    try { saved = JSON.parse(localStorage.getItem(ROOMS_PREFIX + user) || 'null'); } catch (e) { saved = null; }
    return Array.isArray(saved) ? [...new Set(saved.filter((r) => typeof r === 'string' && validRoom(r)))].sort() : [];
  }

  function saveRooms() {
    if (!state.me) return;
    try {
      localStorage.setItem(ROOMS_PREFIX + state.me, JSON.stringify(state.rooms));
    } catch (e) { /* private mode or full */ }
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
    state.positions = loadPositions(username);
    state.epochs = loadEpochs(username);
    for (const room of loadRooms(username)) addRoom(room);
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
    state.seen = new Map();
    state.changes = new Map();
    state.changeSends = new Map();
    state.readSent = new Set();
    for (const m of state.pending.values()) clearTimeout(m.ackTimer);
    state.pending = new Map();
    state.outbox = [];
    state.positions = {};
    state.epochs = {};
    state.positionsDirty = false;
    state.oldest = {};
    state.loaded = {};
    state.atStart = {};
    state.requests = new Map();
    state.loadingOlder = {};
    state.resuming = null;
    state.gapsToRetry = [];
    state.rooms = [];
    state.joining = new Map();
    state.online = new Set();
    state.roomOnline = {};
    state.typingSent = {};
    for (const who of state.typing.values()) for (const t of who.values()) clearTimeout(t.timer);
    state.typing = new Map();
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
    // receipts=1: "delivered" receipts for our private messages (the ✓✓ marks).
    const url = proto + '//' + location.host + '/ws?token=' + encodeURIComponent(state.token) + '&receipts=1';
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
    forgetRequests();
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
    forgetRequests();
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
      case 'history': onHistory(frame); break;
      case 'resumed': onResumed(frame); break;
      case 'ack': onAck(frame); break;
      case 'error': onError(frame); break;
      case 'pong': break;                       // lastFrameAt already refreshed
      case 'presence': onPresence(frame); break;
      case 'typing': onTyping(frame); break;
      case 'who': onWho(frame); break;
      case 'receipt': onReceipt(frame); break;
      default: break;                           // unknown types are ignored
    }
    if (state.positionsDirty) savePositions();
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
    startChannels(f.positions && typeof f.positions === 'object' ? f.positions : {});
    flushOutbox();
  }

  /**
   * After `welcome`, whose positions are the latest offsets (nothing up to them comes live on
   * this socket): load the recent history of each channel this page has not shown yet, and
   * `resume` from the positions this browser has for the user, if it has any. On a reload the
   * history ends where the saved position is and the replay starts there, so the conversation
   * shows what was read before and everything since, without a hole.
   */
  function startChannels(latest) {
    const resumeFrom = {};
    const epochs = {};
    const history = [];
    for (const ch of [PUBLIC, myChannel(), ...state.rooms.map(roomChannel)]) {
      const top = typeof latest[ch] === 'number' ? latest[ch] : null;
      const have = state.positions[ch];
      let before;                               // undefined: the newest messages
      if (typeof have === 'number') {
        resumeFrom[ch] = have;
        if (typeof state.epochs[ch] === 'string') epochs[ch] = state.epochs[ch];
        // Beyond the latest offset: the store was reset. The server reports the gap
        // (`resumed` lists the channel); from now on this page counts from the latest offset.
        if (top !== null && have > top) setPosition(ch, top, true);
        before = Math.min(have, top === null ? have : top) + 1;
      } else if (top !== null) {
        resumeFrom[ch] = top;
        setPosition(ch, top, true);
      }
      if (!state.loaded[ch]) history.push({ purpose: 'recent', channel: ch, before, limit: recentLimit(ch) });
    }
    // Resume first, always: until it does, the server holds this socket's live messages, so
    // that what it replays and what comes live form one sequence without a copy or a swap.
    const cid = newCid();
    if (send({ type: 'resume', positions: resumeFrom, epochs, cid })) state.resuming = { cid, from: resumeFrom };
    // Membership is durable, but this browser may be the only one that remembers it: join again
    // (idempotent) before reading the room channels. Frames are handled in order by the server.
    for (const room of state.rooms) send({ type: 'join', room });
    send({ type: 'who', cid: newCid() });
    for (const req of history) requestHistory(req);
    for (const gap of state.gapsToRetry.splice(0)) requestHistory(gap);
  }

  /** A receipt for one of our private messages: ✓✓ when delivered, "read" once read. */
  function onReceipt(f) {
    if (typeof f.id !== 'string') return;
    const m = state.seen.get(f.id);
    if (!m) {
      // The receipt took a shorter path than the ack (recipient on this server): keep it until
      // the ack names the id (a few, for a few seconds: acks come or the send is retried).
      if (state.earlyReceipts.size >= 200) state.earlyReceipts.delete(state.earlyReceipts.keys().next().value);
      state.earlyReceipts.set(f.id, f.status);
      return;
    }
    if (!m.own || m.kind !== 'private') return;
    const rank = { delivered: 1, read: 2 };
    if ((rank[f.status] || 0) > (rank[m.receipt] || 0)) {
      m.receipt = f.status;
      updateMessageNode(m);
    }
  }

  /** Tell the sender we have shown their private message (once per message). */
  function sendRead(m) {
    if (!m || m.own || m.kind !== 'private' || !m.id || !m.from || state.readSent.has(m.id)) return;
    if (document.visibilityState !== 'visible' || !state.conn.ready) return;
    if (send({ type: 'receipt', to: m.from, id: m.id, status: 'read' })) state.readSent.add(m.id);
  }

  /** Read receipts for what the open conversation shows. */
  function readActive() {
    const conv = state.convs.get(state.active);
    if (conv && conv.kind === 'dm') for (const m of conv.messages) sendRead(m);
  }

  function onMessage(f) {
    const ch = typeof f.channel === 'string' ? f.channel : null;
    const offset = isOffset(f.offset) ? f.offset : null;
    if (ch && offset !== null && !state.resuming && knownChannel(ch)) {
      const pos = state.positions[ch];
      if (typeof pos === 'number' && offset > pos + 1) requestGap(ch, pos, offset);
    }
    ingest(f, 'live');
  }

  /** An answer to one of our `history` requests (see requestHistory for the purposes). */
  function onHistory(f) {
    const req = typeof f.cid === 'string' ? state.requests.get(f.cid) : undefined;
    if (req) state.requests.delete(f.cid);
    const found = Array.isArray(f.messages) ? f.messages.filter((m) => m && typeof m === 'object') : [];
    const ch = typeof f.channel === 'string' ? f.channel : (req ? req.channel : '');
    if (!knownChannel(ch)) return;              // a room left meanwhile
    const createdBefore = new Set(state.convs.keys());
    const added = new Map();                    // conversation key -> messages added
    for (const m of found) {
      const msg = ingest(m, 'history');
      if (msg) added.set(msg.conv, (added.get(msg.conv) || 0) + 1);
    }
    let more = -1;                              // >= 0: load older again, after that many rounds
    if (req && req.purpose === 'recent') {
      state.loaded[ch] = true;
      // A room has no position in `welcome`: an empty channel starts at 0, so gaps can be seen.
      if (state.positions[ch] === undefined && req.before === undefined) setPosition(ch, 0);
      if (found.length < req.limit) state.atStart[ch] = true;
      more = 0;
    } else if (req && req.purpose === 'older') {
      if (state.loadingOlder[ch] === f.cid) delete state.loadingOlder[ch];
      if (found.length < req.limit) state.atStart[ch] = true;
      if (req.conv === state.active) more = req.rounds + 1;
    } else if (req && req.purpose === 'gap') {
      const got = found.filter((m) => isOffset(m.offset) && m.offset > req.after && m.offset < req.before).length;
      if (got < req.before - req.after - 1) addGapMarkers(ch, req.after);
    }
    for (const key of added.keys()) {
      if (!createdBefore.has(key)) placeByActivity(state.convs.get(key));
    }
    if (added.size) saveConvs();
    renderMessages(true);                       // keeps what is on screen where it is
    if (more >= 0) maybeLoadOlder(more);
    renderConvList();
    renderTitle();
  }

  function onResumed(f) {
    const r = state.resuming;
    if (!r || (typeof f.cid === 'string' && f.cid !== r.cid)) return;
    state.resuming = null;
    if (f.epochs && typeof f.epochs === 'object') {
      for (const [ch, epoch] of Object.entries(f.epochs)) if (typeof epoch === 'string') state.epochs[ch] = epoch;
      state.positionsDirty = true;
    }
    if (f.recovered !== false) return;
    // `gaps` (an addition of this server) names the channels that lost messages; without it, all.
    const gaps = Array.isArray(f.gaps) && f.gaps.length ? f.gaps : Object.keys(r.from);
    for (const ch of gaps) {
      if (typeof r.from[ch] === 'number') addGapMarkers(ch, r.from[ch]);
      // Its offsets may have started over (a new epoch): count from where it stands now.
      const now = f.positions && f.positions[ch];
      if (typeof now === 'number') setPosition(ch, now, true);
    }
  }

  function onAck(f) {
    const change = typeof f.cid === 'string' ? state.changeSends.get(f.cid) : null;
    if (change) {
      state.changeSends.delete(f.cid);
      recordChange(change.ref, change.kind, change.text, typeof f.ts === 'number' ? f.ts : Date.now());
      return;
    }
    const m = typeof f.cid === 'string' ? state.pending.get(f.cid) : null;
    if (!m) return;
    const id = f.id !== undefined && f.id !== null ? String(f.id) : m.id;
    const shown = id ? state.seen.get(id) : undefined;
    if (shown && shown !== m) { removeMessage(m); return; }   // its copy came back first
    confirmMessage(m, id, typeof f.ts === 'number' ? f.ts : m.ts);
    // The ack says where our own copy is stored (the sending tab gets no echo of a DM):
    // take the offset, and advance the position only over what is contiguous.
    if (typeof f.channel === 'string' && isOffset(f.offset)) {
      if (m.offset === null || m.offset === undefined) m.offset = f.offset;
      if (state.positions[f.channel] === f.offset - 1) setPosition(f.channel, f.offset);
    }
  }

  function onError(f) {
    const text = typeof f.message === 'string' && f.message ? f.message : (f.code || 'Error');
    const req = typeof f.cid === 'string' ? state.requests.get(f.cid) : undefined;
    const change = typeof f.cid === 'string' ? state.changeSends.get(f.cid) : null;
    if (change) {
      state.changeSends.delete(f.cid);
      showNotice((change.kind === 'edit' ? 'Could not edit the message: ' : 'Could not delete the message: ') + text);
      return;
    }
    if (typeof f.cid === 'string' && state.joining.has(f.cid)) {
      state.joining.delete(f.cid);
      ui.roomError.textContent = 'Could not join: ' + text;
      ui.roomError.hidden = false;
      ui.roomName.setAttribute('aria-invalid', 'true');
      return;
    }
    if (req) {
      state.requests.delete(f.cid);
      if (state.loadingOlder[req.channel] === f.cid) { delete state.loadingOlder[req.channel]; renderTopRow(); }
      if (req.purpose === 'gap') state.gapsToRetry.push(req);   // asked again on the next welcome
      showNotice('Could not load messages: ' + text);
      return;
    }
    if (state.resuming && f.cid === state.resuming.cid && f.code !== 'forbidden') {
      state.resuming = null;                    // no `resumed` follows; live gaps are filled one by one
      showNotice('Could not catch up with missed messages: ' + text);
      return;
    }
    const m = typeof f.cid === 'string' ? state.pending.get(f.cid) : null;
    if (m) {
      clearTimeout(m.ackTimer);
      state.pending.delete(f.cid);
      if (f.code === 'rate_limited' && (m.limitedRetries || 0) < LIMITED_RETRIES) {
        // Too fast, or the server is overloaded: both pass. Wait, with jitter so that many
        // pages refused together do not come back together, then send the same frame again.
        m.limitedRetries = (m.limitedRetries || 0) + 1;
        m.status = 'retrying';
        updateMessageNode(m);
        const delay = LIMITED_RETRY_MS * 2 ** (m.limitedRetries - 1) * (0.75 + Math.random() / 2);
        setTimeout(() => { if (m.status === 'retrying') transmit(m); }, delay);
        return;
      }
      m.status = 'failed';
      m.error = text;
      updateMessageNode(m);
      announce('Message not sent: ' + text);
      return;
    }
    showNotice(text);
  }

  // ------------------------------------------------ 7. channels and history

  const myChannel = () => 'user:' + state.me;
  const roomChannel = (room) => ROOM_PREFIX + room;
  /** Not the channel of a room this page has left (or never joined). */
  const knownChannel = (ch) => !ch.startsWith(ROOM_PREFIX) || state.rooms.includes(ch.slice(ROOM_PREFIX.length));
  const recentLimit = (ch) => (ch === PUBLIC ? RECENT_PUBLIC : ch.startsWith(ROOM_PREFIX) ? RECENT_ROOM : RECENT_DMS);

  /** The channel a conversation's messages are stored in. */
  function channelOfConv(conv) {
    if (conv.kind === 'public') return PUBLIC;
    if (conv.kind === 'room') return roomChannel(conv.room);
    return myChannel();
  }

  /** The highest offset seen in `ch`; `force` also lowers it (a reset store). */
  function setPosition(ch, offset, force) {
    const prev = state.positions[ch];
    if (prev === offset) return;
    if (force || prev === undefined || offset > prev) {
      state.positions[ch] = offset;
      state.positionsDirty = true;
    }
  }

  /**
   * Send `history` for `req` = { purpose, channel, before?, limit, ... }; purposes:
   *   'recent': the newest messages of a channel not loaded yet (or those up to a saved position)
   *   'older':  the page before the oldest offset loaded (scrolled to the top of `req.conv`)
   *   'gap':    offsets after `req.after` and before `req.before` that a live message skipped
   */
  function requestHistory(req) {
    const cid = newCid();
    const frame = { type: 'history', channel: req.channel, limit: req.limit, cid };
    if (req.before !== undefined) frame.before = req.before;
    if (!state.conn.ready || !send(frame)) {
      if (req.purpose === 'gap') state.gapsToRetry.push(req);
      return null;
    }
    state.requests.set(cid, req);
    return cid;
  }

  /** A live message skipped offsets (after, before): fetch them (at most HISTORY_MAX). */
  function requestGap(ch, after, before) {
    requestHistory({ purpose: 'gap', channel: ch, after, before, limit: Math.min(before - after - 1, HISTORY_MAX) });
  }

  /** Requests in flight die with their socket; gap requests are asked again on the next welcome. */
  function forgetRequests() {
    for (const req of state.requests.values()) if (req.purpose === 'gap') state.gapsToRetry.push(req);
    state.requests.clear();
    state.loadingOlder = {};
    state.resuming = null;
    renderTopRow();
  }

  /** Scrolled to the top of the open conversation: load the page of its channel before it. */
  function loadOlder(rounds) {
    const conv = state.convs.get(state.active);
    if (!conv || !state.conn.ready) return;
    const ch = channelOfConv(conv);
    if (!state.loaded[ch] || state.atStart[ch] || state.loadingOlder[ch]) return;
    const oldest = state.oldest[ch];
    if (oldest === undefined || oldest <= 1) {
      state.atStart[ch] = true;
      renderTopRow();
      return;
    }
    const cid = requestHistory({ purpose: 'older', channel: ch, before: oldest, limit: OLDER_PAGE, conv: conv.key, rounds });
    if (cid) {
      state.loadingOlder[ch] = cid;
      renderTopRow();
    }
  }

  /** Keep loading while the top of the list is in view (a short conversation), a few rounds at most. */
  function maybeLoadOlder(rounds) {
    if (rounds < AUTO_OLDER_ROUNDS && ui.messages.scrollTop <= LOAD_OLDER_PX) loadOlder(rounds);
  }

  /** Messages after offset `after` of `ch` are lost: mark the conversations of that channel. */
  function addGapMarkers(ch, after) {
    let keys = [];
    if (ch === PUBLIC) keys = [PUBLIC];
    else if (ch === myChannel()) keys = state.order.slice();
    else if (ch.startsWith(ROOM_PREFIX) && state.convs.has(ch)) keys = [ch];
    if (ch === myChannel() && !keys.length) showNotice(GAP_TEXT + ' (private messages).');
    let active = false;
    for (const key of keys) {
      const conv = state.convs.get(key);
      if (conv && addMarker(conv, after)) active = active || key === state.active;
    }
    if (active) renderMessages(true);
  }

  /** A marker after offset `after` (sorted as offset after + 0.5); false if one is there. */
  function addMarker(conv, after) {
    const at = after + 0.5;
    if (conv.messages.some((m) => m.marker && m.offset === at)) return false;
    let lastTs = null;
    let nextTs = null;
    for (const m of conv.messages) {
      if (m.marker || m.offset === null || m.offset === undefined) continue;
      if (m.offset <= after) lastTs = lastTs === null ? m.ts : Math.max(lastTs, m.ts);
      else nextTs = nextTs === null ? m.ts : Math.min(nextTs, m.ts);
    }
    const ts = lastTs !== null ? lastTs : (nextTs !== null ? nextTs : Date.now());
    const marker = { marker: true, id: null, own: false, ts, offset: at, conv: conv.key, el: null, sepEl: null };
    const i = insertSorted(conv, marker);
    invalidateFrom(conv, i + 1);
    return true;
  }

  // ------------------------------------------- 7b. conversations and messages

  const dmKey = (user) => 'dm:' + user;

  /** Conversation key of an incoming message: "public", or "dm:<the other party>". */
  function convKeyForMessage(f) {
    if (f.kind === 'public') return 'public';
    if (f.kind === 'private') {
      const other = f.from === state.me ? f.to : f.from;    // from == me: sent by me (another tab, or history)
      return typeof other === 'string' && other ? dmKey(other) : null;
    }
    if (f.kind === 'room') {
      // Only rooms this page knows: a late copy after leaving must not bring the room back.
      return typeof f.room === 'string' && state.rooms.includes(f.room) ? roomKey(f.room) : null;
    }
    return null;
  }

  function newConv(key) {
    if (key === 'public') {
      return { key, kind: 'public', peer: null, title: 'Public', messages: [], unread: 0, lastTs: 0, scroll: null, draft: '' };
    }
    if (key.startsWith(ROOM_PREFIX)) {
      const room = key.slice(ROOM_PREFIX.length);
      return { key, kind: 'room', peer: null, room, title: room, messages: [], unread: 0, lastTs: 0, scroll: null, draft: '' };
    }
    const peer = key.slice(3);
    return { key, kind: 'dm', peer, title: peer, messages: [], unread: 0, lastTs: 0, scroll: null, draft: '' };
  }

  function ensureConv(key) {
    let conv = state.convs.get(key);
    if (!conv) {
      conv = newConv(key);
      state.convs.set(key, conv);
      if (conv.kind === 'dm') state.order.push(key);
    }
    return conv;
  }

  /** Move a DM to the top of the list. */
  function touchConv(conv) {
    if (conv.kind !== 'dm') return;
    const i = state.order.indexOf(conv.key);
    if (i > 0) { state.order.splice(i, 1); state.order.unshift(conv.key); }
    else if (i < 0) state.order.unshift(conv.key);
  }

  /** Put a DM that history brought among the others by its latest message. */
  function placeByActivity(conv) {
    if (!conv || conv.kind !== 'dm') return;
    const i = state.order.indexOf(conv.key);
    if (i >= 0) state.order.splice(i, 1);
    let j = state.order.findIndex((k) => state.convs.get(k).lastTs < conv.lastTs);
    if (j < 0) j = state.order.length;
    state.order.splice(j, 0, conv.key);
  }

  // ------------------------------------------ 7c. rooms, who is online, typing

  const roomKey = (room) => ROOM_PREFIX + room;

  /** Remember `room` as joined (its conversation, the sidebar list, localStorage). */
  function addRoom(room) {
    if (!state.rooms.includes(room)) {
      state.rooms.push(room);
      state.rooms.sort();
      saveRooms();
    }
    return ensureConv(roomKey(room));
  }

  /** Forget `room` (left here or in another session): its conversation, channel and position. */
  function removeRoom(room) {
    const key = roomKey(room);
    const ch = roomChannel(room);
    const i = state.rooms.indexOf(room);
    if (i >= 0) state.rooms.splice(i, 1);
    saveRooms();
    const conv = state.convs.get(key);
    if (conv) {
      for (const m of conv.messages) {
        clearTimeout(m.ackTimer);
        if (m.cid && state.pending.get(m.cid) === m) state.pending.delete(m.cid);
        if (m.id && state.seen.get(m.id) === m) state.seen.delete(m.id);
      }
      state.outbox = state.outbox.filter((m) => m.conv !== key);
      state.convs.delete(key);
    }
    delete state.positions[ch];
    state.positionsDirty = true;
    delete state.loaded[ch];
    delete state.oldest[ch];
    delete state.atStart[ch];
    delete state.loadingOlder[ch];
    delete state.roomOnline[room];
    stopTyping(key);
    if (state.active === key) openConv(PUBLIC, false);
    else { renderConvList(); renderTitle(); }
  }

  /** The sidebar's "Join or create a room": returns a problem to show, or null. */
  function joinRoom(name) {
    if (!validRoom(name)) return 'Not a valid room name (1–32 letters, digits, "_", "." or "-").';
    if (state.rooms.includes(name)) { openConv(roomKey(name), true); return null; }
    if (!state.conn.ready) return 'Not connected: try again when the connection is back.';
    const cid = newCid();
    if (!send({ type: 'join', room: name, cid })) return 'Not connected: try again when the connection is back.';
    state.joining.set(cid, name);
    return null;
  }

  function leaveRoom(room) {
    if (!state.conn.ready || !send({ type: 'leave', room, cid: newCid() })) {
      showNotice('Not connected: you can leave the room when the connection is back.');
    }
  }

  /** We are in `room` (confirmed by the server, here or in another session of ours). */
  function roomJoined(room, cid) {
    const known = state.rooms.includes(room);
    addRoom(room);
    const ch = roomChannel(room);
    if (!known && !state.loaded[ch]) requestHistory({ purpose: 'recent', channel: ch, limit: RECENT_ROOM });
    const mine = typeof cid === 'string' && state.joining.get(cid) === room;
    if (mine) {
      state.joining.delete(cid);
      ui.roomName.value = '';
      openConv(roomKey(room), true);
    } else {
      renderConvList();
    }
  }

  function onPresence(f) {
    if (typeof f.user !== 'string' || !validUsername(f.user)) return;
    if (typeof f.room === 'string' && validRoom(f.room)) {
      if (f.user === state.me) {
        if (f.status === 'join') roomJoined(f.room, f.cid);
        else if (f.status === 'leave') removeRoom(f.room);
        if (typeof f.cid === 'string') state.joining.delete(f.cid);
        return;
      }
      if (f.status !== 'join' && f.status !== 'leave') return;
      if (!state.rooms.includes(f.room)) return;
      const conv = state.convs.get(roomKey(f.room));
      if (f.status === 'leave') stopTyping(conv.key, f.user);
      addSystemLine(conv, f.user + (f.status === 'join' ? ' joined' : ' left'));
      if (conv.key === state.active) refreshRoomWho();
      return;
    }
    if (f.status === 'online') {
      if (f.user !== state.me && state.online.size < MAX_ONLINE) state.online.add(f.user);
    } else if (f.status === 'offline') {
      state.online.delete(f.user);
      for (const key of state.typing.keys()) stopTyping(key, f.user);
    } else {
      return;
    }
    renderOnline();
    const conv = state.convs.get(state.active);
    if (conv && conv.kind === 'room') refreshRoomWho();
  }

  function onWho(f) {
    const users = Array.isArray(f.users) ? f.users.filter((u) => typeof u === 'string' && validUsername(u)) : [];
    if (typeof f.room === 'string') {
      state.roomOnline[f.room] = users.length;
      if (state.active === roomKey(f.room)) renderHeader();
      return;
    }
    state.online = new Set(users.filter((u) => u !== state.me).slice(0, MAX_ONLINE));
    renderOnline();
  }

  /** Ask how many members of the open room are online (a few presence changes: one request). */
  let roomWhoTimer = null;
  function refreshRoomWho(now) {
    clearTimeout(roomWhoTimer);
    const ask = () => {
      const conv = state.convs.get(state.active);
      if (conv && conv.kind === 'room' && state.conn.ready) send({ type: 'who', room: conv.room, cid: newCid() });
    };
    if (now) ask();
    else roomWhoTimer = setTimeout(ask, 500);
  }

  /** A "bob joined" line in a room (live only: not stored, not counted as unread). */
  function addSystemLine(conv, text) {
    const item = { marker: true, system: true, text, id: null, own: false, ts: Date.now(), offset: null, conv: conv.key, el: null, sepEl: null };
    const i = insertSorted(conv, item);
    invalidateFrom(conv, i + 1);
    if (conv.key !== state.active) return;
    const wasAtBottom = isAtBottom();
    renderMessages(true);
    if (wasAtBottom) scrollToBottom();
  }

  /** The key of the conversation a typing hint is about, or null. */
  function typingKey(f) {
    if (typeof f.from !== 'string' || f.from === state.me || !validUsername(f.from)) return null;
    if (typeof f.room === 'string') return state.rooms.includes(f.room) ? roomKey(f.room) : null;
    if (f.to === state.me) return dmKey(f.from);
    return null;
  }

  function onTyping(f) {
    const key = typingKey(f);
    if (!key) return;
    let who = state.typing.get(key);
    if (!who) { who = new Map(); state.typing.set(key, who); }
    const prev = who.get(f.from);
    if (prev) clearTimeout(prev.timer);
    who.set(f.from, { timer: setTimeout(() => stopTyping(key, f.from), TYPING_SHOW_MS) });
    if (key === state.active) renderTyping();
  }

  /** `user` (or everyone, without `user`) no longer shown typing in `key`. */
  function stopTyping(key, user) {
    const who = state.typing.get(key);
    if (!who) return;
    for (const [name, t] of [...who]) {
      if (user !== undefined && name !== user) continue;
      clearTimeout(t.timer);
      who.delete(name);
    }
    if (!who.size) state.typing.delete(key);
    if (key === state.active) renderTyping();
  }

  /** The user types in the composer: tell the DM peer or the room, at most once per TYPING_SEND_MS. */
  function sendTyping() {
    const conv = state.convs.get(state.active);
    if (!conv || conv.kind === 'public' || !state.conn.ready || ui.text.value.trim() === '') return;
    const now = Date.now();
    if (now - (state.typingSent[conv.key] || 0) < TYPING_SEND_MS) return;
    const frame = conv.kind === 'room' ? { type: 'typing', room: conv.room } : { type: 'typing', to: conv.peer };
    if (send(frame)) state.typingSent[conv.key] = now;
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
    renderTyping();
    if (conv.kind === 'room') refreshRoomWho(true);
    readActive();
    maybeLoadOlder(0);
    if (focusAfter) focusComposer();
  }

  /**
   * A message frame (live, replayed, or from history) into its conversation. Returns the new
   * message, or null: a copy of one shown already (by `id`; then its offset is learned if it
   * lacked one: own private messages are acked without echo), an own message waiting for its
   * echo, or a kind this page does not show.
   */
  function ingest(f, source) {
    if (f.id === undefined || f.id === null) return null;
    if (typeof f.from !== 'string') return null;
    if (typeof f.text !== 'string' && f.kind !== 'delete') return null;
    const ch = typeof f.channel === 'string' ? f.channel : null;
    const offset = isOffset(f.offset) ? f.offset : null;
    if (ch && offset !== null && knownChannel(ch)) {
      setPosition(ch, offset);
      if (!(state.oldest[ch] <= offset)) state.oldest[ch] = offset;
    }
    if (f.kind === 'edit' || f.kind === 'delete') {
      // A change to another message: applied to it (now, or when it is loaded), never shown itself.
      if (typeof f.ref === 'string' || typeof f.ref === 'number') {
        recordChange(String(f.ref), f.kind, f.text, typeof f.ts === 'number' ? f.ts : Date.now());
      }
      return null;
    }
    const id = String(f.id);
    const key = convKeyForMessage(f);
    const shown = state.seen.get(id);
    if (shown) {
      if (shown.offset === null && offset !== null && shown.conv === key) {
        shown.offset = offset;
        reposition(shown);
      }
      return null;
    }
    if (!key) return null;                                // a kind this page does not show yet
    const ts = typeof f.ts === 'number' ? f.ts : Date.now();
    const own = f.from === state.me;
    if (own) {
      // Our own message may come back before its ack (or after its socket died): confirm our copy.
      const mine = findPendingEcho(key, f.text);
      if (mine) {
        mine.offset = offset;
        confirmMessage(mine, id, ts);
        return null;
      }
    }
    const msg = {
      id, cid: null, kind: f.kind, from: f.from, to: typeof f.to === 'string' ? f.to : null,
      room: typeof f.room === 'string' ? f.room : null, text: f.text, ts, offset, own, status: 'sent', error: null,
    };
    state.seen.set(id, msg);
    applyKnownChange(msg);
    if (source === 'live') stopTyping(key, f.from);     // their message is what they were typing
    insertMessage(key, msg, source);
    if (key === state.active) sendRead(msg);
    return msg;
  }

  /** Own messages not acknowledged yet (no id): they stay at the bottom, in sending order. */
  const isUnconfirmed = (m) => !m.marker && m.own && !m.id;

  /** Order within a conversation: by (ts, offset); unconfirmed own messages last. */
  function sortsBefore(a, b) {
    const ua = isUnconfirmed(a);
    const ub = isUnconfirmed(b);
    if (ua !== ub) return ub;
    if (ua) return false;
    if (a.ts !== b.ts) return a.ts < b.ts;
    const oa = a.offset === null || a.offset === undefined ? Infinity : a.offset;
    const ob = b.offset === null || b.offset === undefined ? Infinity : b.offset;
    return oa < ob;
  }

  /** Insert `item` into its sorted place (searching from the end, where most land); its index. */
  function insertSorted(conv, item) {
    let i = conv.messages.length;
    while (i > 0 && sortsBefore(item, conv.messages[i - 1])) i--;
    conv.messages.splice(i, 0, item);
    return i;
  }

  /** The nodes from index `i` to the next message (included) depend on what precedes them. */
  function invalidateFrom(conv, i) {
    for (let k = i; k < conv.messages.length; k++) {
      const m = conv.messages[k];
      m.el = null;
      if (!m.marker) break;
    }
  }

  /** Move `m` if its sort key changed (an ack's ts, a learned offset). */
  function reposition(m) {
    const conv = state.convs.get(m.conv);
    if (!conv) return;
    const list = conv.messages;
    const i = list.indexOf(m);
    if (i < 0) return;
    if ((i === 0 || !sortsBefore(m, list[i - 1])) && (i === list.length - 1 || !sortsBefore(list[i + 1], m))) return;
    list.splice(i, 1);
    invalidateFrom(conv, i);
    const j = insertSorted(conv, m);
    m.el = null;
    invalidateFrom(conv, j + 1);
    if (m.conv === state.active) renderMessages(true);
  }

  /** Our own message sent on the wire and not acked (pending, or failed with its socket), with this text. */
  function findPendingEcho(key, text) {
    for (const m of state.pending.values()) {
      if (m.conv === key && m.text === text && !m.id) return m;
    }
    const conv = state.convs.get(key);
    if (!conv) return null;
    for (let i = conv.messages.length - 1; i >= 0; i--) {
      const m = conv.messages[i];
      if (m.own && !m.id && m.status === 'failed' && m.text === text) return m;
    }
    return null;
  }

  function confirmMessage(m, id, ts) {
    clearTimeout(m.ackTimer);
    if (m.cid) state.pending.delete(m.cid);
    m.id = id || m.id;
    if (m.id) state.seen.set(m.id, m);
    m.ts = ts;
    m.status = 'sent';
    m.error = null;
    applyKnownChange(m);
    updateMessageNode(m);
    reposition(m);
    const early = m.id ? state.earlyReceipts.get(m.id) : undefined;
    if (early !== undefined) {
      state.earlyReceipts.delete(m.id);
      onReceipt({ type: 'receipt', id: m.id, status: early });
    }
  }

  /**
   * Add a message to its conversation, in order. Live ones (and our own, source 'send') are
   * rendered at once; history is rendered by its caller, in one go (onHistory).
   */
  function insertMessage(key, msg, source) {
    const conv = ensureConv(key);
    msg.conv = key;
    msg.el = null;
    msg.sepEl = null;
    const i = insertSorted(conv, msg);
    conv.lastTs = Math.max(conv.lastTs, msg.ts);
    if (source === 'history') {
      invalidateFrom(conv, i + 1);
      return;
    }
    const isActive = key === state.active;
    const wasAtBottom = isActive && isAtBottom();
    touchConv(conv);
    let rebuild = i !== conv.messages.length - 1;
    if (rebuild) invalidateFrom(conv, i + 1);
    // Trim the oldest, unless the reader is up there (reading what scrolling loaded).
    if (!isActive || wasAtBottom) rebuild = trimConv(conv) || rebuild;

    if (!msg.own && (!isActive || document.hidden)) conv.unread += 1;

    if (isActive) {
      if (rebuild) {
        renderMessages(true);
      } else {
        const prev = conv.messages[i - 1];
        buildItemNode(msg, prevMessage(conv, i), !!(prev && prev.marker));
        if (msg.sepEl) ui.messages.append(msg.sepEl);
        ui.messages.append(msg.el);
        renderEmpty();
        renderTopRow();
      }
      if (wasAtBottom || source === 'send') scrollToBottom();
      else ui.newPill.hidden = false;
    }
    renderConvList();
    renderTitle();
    if (key !== 'public') saveConvs();
  }

  /** The last message (not marker) before index `i`. */
  function prevMessage(conv, i) {
    for (let k = i - 1; k >= 0; k--) if (!conv.messages[k].marker) return conv.messages[k];
    return null;
  }

  /** Drop the oldest messages beyond MAX_MESSAGES_PER_CONV; true if any went. */
  function trimConv(conv) {
    let trimmed = false;
    while (conv.messages.length > MAX_MESSAGES_PER_CONV && !isUnconfirmed(conv.messages[0])) {
      const old = conv.messages.shift();
      if (old.id && state.seen.get(old.id) === old) state.seen.delete(old.id);   // history may bring it back
      trimmed = true;
    }
    if (!trimmed) return false;
    invalidateFrom(conv, 0);
    if (conv.kind === 'public' || conv.kind === 'room') {
      const ch = channelOfConv(conv);
      const first = conv.messages.find((m) => !m.marker && isOffset(m.offset));
      if (first) { state.oldest[ch] = first.offset; state.atStart[ch] = false; }
    }
    return true;
  }

  // ------------------------------------------------ edits and deletes (protocol version 2)

  /** Keep the latest change of message `ref` (a delete is final) and apply it if the message is here. */
  function recordChange(ref, kind, text, ts) {
    const known = state.changes.get(ref);
    if (known && (known.kind === 'delete' || (kind === 'edit' && known.ts > ts))) return;
    if (kind === 'edit' && typeof text !== 'string') return;
    state.changes.set(ref, { kind, text: kind === 'edit' ? text : '', ts });
    const m = state.seen.get(ref);
    if (m) applyKnownChange(m);
  }

  function applyKnownChange(m) {
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
  function sendChange(m, kind, text) {
    const conv = state.convs.get(m.conv);
    if (!conv || !m.id || !m.own) return false;
    const frame = { type: kind, channel: channelOfConv(conv), id: m.id, cid: newCid() };
    if (kind === 'edit') frame.text = text;
    if (!state.conn.ready || !send(frame)) { announce('Not connected: try again when online.'); return false; }
    state.changeSends.set(frame.cid, { ref: m.id, kind, text });
    return true;
  }

  /** Edit our message in place: a text box instead of its text; Enter saves, Escape cancels. */
  function startEdit(m) {
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

  function removeMessage(m) {
    const conv = state.convs.get(m.conv);
    if (!conv) return;
    const i = conv.messages.indexOf(m);
    if (i < 0) return;
    conv.messages.splice(i, 1);
    clearTimeout(m.ackTimer);
    if (m.cid && state.pending.get(m.cid) === m) state.pending.delete(m.cid);
    if (m.id && state.seen.get(m.id) === m) state.seen.delete(m.id);
    invalidateFrom(conv, i);
    if (m.conv === state.active) renderMessages(true);
  }

  /** Validate and send the composer's text to the open conversation. */
  function submitComposer() {
    const text = ui.text.value;
    const problem = textProblem(text);
    if (problem) { renderComposerHint(problem, true); return; }
    queueOutgoing(state.active, text);
    delete state.typingSent[state.active];   // the message ends the hint: typing again says so at once
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

  /** `cid`: a retry keeps its first attempt's, so the server recognises it (same id, no copy). */
  function queueOutgoing(key, text, cid) {
    const conv = ensureConv(key);
    const kind = conv.kind === 'dm' ? 'private' : conv.kind;
    const msg = {
      id: null, cid: cid || newCid(), kind, room: conv.kind === 'room' ? conv.room : null,
      from: state.me, to: conv.peer, text, ts: Date.now(), offset: null, own: true, status: 'queued', error: null,
    };
    insertMessage(key, msg, 'send');
    transmit(msg);
  }

  /** Put an outgoing message on the wire, or in the outbox while not connected. */
  function transmit(msg) {
    let frame;
    if (msg.kind === 'public') frame = { type: 'public', text: msg.text, cid: msg.cid };
    else if (msg.kind === 'room') frame = { type: 'room', room: msg.room, text: msg.text, cid: msg.cid };
    else frame = { type: 'private', to: msg.to, text: msg.text, cid: msg.cid };
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
    const cid = m.cid;
    removeMessage(m);
    queueOutgoing(key, text, cid);
  }

  // ------------------------------------------------------- 8. rendering

  function renderAll() {
    renderServerId();
    renderConn(true);
    renderSidebar();
    renderConvList();
    renderOnline();
    renderHeader();
    renderMessages();
    renderComposer();
    renderTyping();
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

  /** The sidebar button of one conversation (public, DM or room). */
  function convButton(conv) {
    const key = conv.key;
    const active = key === state.active;
    const unread = active ? 0 : conv.unread;
    let icon;
    let label;
    let what;
    if (conv.kind === 'public') {
      icon = el('span', { class: 'conv-icon conv-icon-public', 'aria-hidden': 'true', text: '#' });
      label = 'Public';
      what = 'Public channel';
    } else if (conv.kind === 'room') {
      icon = el('span', { class: 'conv-icon conv-icon-room', 'aria-hidden': 'true', text: '§' });
      label = conv.room;
      what = 'Room ' + conv.room;
    } else {
      icon = el('span', { class: 'avatar avatar-sm', 'aria-hidden': 'true', text: initial(conv.peer) });
      icon.style.setProperty('--hue', hueOf(conv.peer));
      label = conv.peer;
      what = 'Private conversation with ' + conv.peer;
    }
    const btn = el('button', {
      type: 'button',
      class: 'conv' + (active ? ' is-active' : '') + (unread ? ' has-unread' : ''),
      'data-conv': key,
      'aria-current': active ? 'true' : null,
      'aria-label': what + (unread ? ', ' + unread + ' unread' : ''),
    }, [
      icon,
      el('span', { class: 'conv-name', text: label }),
      unread ? el('span', { class: 'badge', 'aria-hidden': 'true', text: unread > 99 ? '99+' : String(unread) }) : null,
    ]);
    btn.addEventListener('click', () => openConv(key, true));
    return el('li', null, [btn]);
  }

  function renderConvList() {
    // Skip the rebuild when nothing the lists show has changed (messages can come fast).
    const keys = ['public', ...state.order];
    const roomKeys = state.rooms.map(roomKey);
    const sig = state.active + '|' + [...keys, '|', ...roomKeys].map((k) => k + ':' + (state.convs.get(k) || {}).unread).join(',');
    if (sig === convListSig && ui.convList.childElementCount) { renderSidebar(); return; }
    convListSig = sig;
    const focusedKey = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.conv : undefined;
    const build = (list) => list.map((k) => state.convs.get(k)).filter(Boolean).map(convButton);
    ui.convList.replaceChildren(...build(keys));
    ui.roomList.replaceChildren(...build(roomKeys));
    if (focusedKey) {
      const again = ui.sidebar.querySelector('.conv-list [data-conv="' + CSS.escape(focusedKey) + '"]');
      if (again) again.focus();
    }
    renderSidebar();
  }

  let onlineSig = '';

  /** "Who is online": the other users online anywhere, by name; a click opens a DM. */
  function renderOnline() {
    const names = [...state.online].sort((a, b) => a.localeCompare(b));
    const sig = names.join(',');
    if (sig === onlineSig && ui.onlineList.childElementCount === names.length) return;
    onlineSig = sig;
    const items = names.map((name) => {
      const avatar = el('span', { class: 'avatar avatar-sm', 'aria-hidden': 'true', text: initial(name) });
      avatar.style.setProperty('--hue', hueOf(name));
      const btn = el('button', {
        type: 'button', class: 'conv', 'data-user': name,
        'aria-label': name + ', online, open a private conversation',
      }, [avatar, el('span', { class: 'conv-name', text: name }), el('span', { class: 'online-dot', 'aria-hidden': 'true' })]);
      btn.addEventListener('click', () => openDM(name));
      return el('li', null, [btn]);
    });
    ui.onlineList.replaceChildren(...items);
    ui.onlineEmpty.hidden = names.length > 0;
  }

  /** "bob is typing…" under the list, for the open conversation. */
  function renderTyping() {
    const who = state.typing.get(state.active);
    const names = who ? [...who.keys()].sort() : [];
    let text = '';
    if (names.length === 1) text = names[0] + ' is typing…';
    else if (names.length === 2) text = names[0] + ' and ' + names[1] + ' are typing…';
    else if (names.length > 2) text = 'Several people are typing…';
    if (ui.typing.textContent !== text) ui.typing.textContent = text;
  }

  function renderHeader() {
    const conv = state.convs.get(state.active);
    ui.roomLeave.hidden = conv.kind !== 'room';
    if (conv.kind === 'public') {
      ui.convTitle.textContent = 'Public';
      ui.convSub.textContent = 'Everyone online';
      ui.messages.setAttribute('aria-label', 'Messages in Public');
    } else if (conv.kind === 'room') {
      const n = state.roomOnline[conv.room];
      ui.convTitle.textContent = conv.room;
      ui.convSub.textContent = 'Room' + (typeof n === 'number' ? ' · ' + n + ' online' : '');
      ui.roomLeave.setAttribute('aria-label', 'Leave room ' + conv.room);
      ui.messages.setAttribute('aria-label', 'Messages in room ' + conv.room);
    } else {
      ui.convTitle.textContent = conv.peer;
      ui.convSub.textContent = 'Private conversation';
      ui.messages.setAttribute('aria-label', 'Messages with ' + conv.peer);
    }
  }

  function renderTitle() {
    let total = 0;
    for (const c of state.convs.values()) total += c.unread;
    document.title = (total ? '(' + total + ') ' : '') + 'Chat' + (state.me ? ' · ' + state.me : '');
  }

  /**
   * Re-render the message list of the open conversation from its cached nodes. `keepScroll`:
   * the same conversation changed; keep the reader at the bottom if they were, else keep the
   * message at the top of the view where it was (messages prepended above it do not move it).
   */
  function renderMessages(keepScroll) {
    const conv = state.convs.get(state.active);
    const list = ui.messages;
    const anchor = keepScroll ? captureAnchor() : null;
    // Do not let a screen reader re-read the whole list on a conversation switch.
    list.setAttribute('aria-live', 'off');
    const nodes = [ui.topRow];
    let prev = null;
    let afterMarker = false;
    for (const m of conv.messages) {
      if (!m.el) buildItemNode(m, prev, afterMarker);
      if (m.sepEl) nodes.push(m.sepEl);
      nodes.push(m.el);
      if (m.marker) afterMarker = true;
      else { prev = m; afterMarker = false; }
    }
    // Move, add and remove only what changed: nodes that stay keep their place (and focus).
    const children = list.children;
    for (let k = 0; k < nodes.length; k++) {
      if (children[k] !== nodes[k]) list.insertBefore(nodes[k], children[k] || null);
    }
    while (children.length > nodes.length) list.lastElementChild.remove();
    requestAnimationFrame(() => list.setAttribute('aria-live', 'polite'));
    renderTopRow();
    renderEmpty();
    if (keepScroll) {
      restoreAnchor(anchor);
    } else {
      ui.newPill.hidden = true;
      if (conv.scroll === null || conv.scroll === undefined) scrollToBottom();
      else list.scrollTop = conv.scroll;
    }
  }

  /** The conversation item (message or marker) each node of the list shows. */
  const itemOf = new WeakMap();

  /**
   * Where the reader is: at the bottom, or the first item in view and where its bottom edge
   * is. An item, not a node: its node may be rebuilt when its neighbours change (it may lose
   * its name header or day separator, which is why its bottom edge, not its top, is kept).
   */
  function captureAnchor() {
    const list = ui.messages;
    if (isAtBottom()) return { bottom: true };
    const top = list.getBoundingClientRect().top;
    for (const node of list.children) {
      if (node === ui.topRow || node.getBoundingClientRect().bottom <= top) continue;
      // A day separator belongs to the message after it, which may lose it when rebuilt.
      const shown = itemOf.has(node) ? node : node.nextElementSibling;
      const item = shown ? itemOf.get(shown) : undefined;
      if (!item) break;
      return { item, delta: shown.getBoundingClientRect().bottom - top, scrollTop: list.scrollTop };
    }
    return { scrollTop: list.scrollTop };
  }

  function restoreAnchor(anchor) {
    const list = ui.messages;
    if (!anchor || anchor.bottom) { scrollToBottom(); return; }
    const node = anchor.item ? anchor.item.el : null;
    if (node && node.isConnected) {
      list.scrollTop += node.getBoundingClientRect().bottom - list.getBoundingClientRect().top - anchor.delta;
    } else {
      list.scrollTop = anchor.scrollTop;
    }
  }

  /** The first row of the list: older messages loading, or the start of the channel reached. */
  function renderTopRow() {
    const conv = state.convs.get(state.active);
    let text = '';
    let mode = '';
    if (conv && state.me) {
      const ch = channelOfConv(conv);
      if (state.loadingOlder[ch]) { text = 'Loading earlier messages…'; mode = 'loading'; }
      else if (state.atStart[ch] && conv.messages.some((m) => !m.marker)) { text = 'Beginning of conversation'; mode = 'start'; }
    }
    // Always there, with a fixed height: its text changing never moves the messages.
    ui.topRow.textContent = text;
    ui.topRow.dataset.state = mode;
  }

  function renderEmpty() {
    const conv = state.convs.get(state.active);
    const empty = conv.messages.length === 0 && !state.loadingOlder[channelOfConv(conv)];
    ui.empty.hidden = !empty;
    if (!empty) return;
    if (conv.kind === 'public') {
      ui.emptyTitle.textContent = 'Welcome to Public';
      ui.emptyText.textContent = 'Messages here reach everyone who is online. Say hello!';
    } else if (conv.kind === 'room') {
      ui.emptyTitle.textContent = 'Welcome to ' + conv.room;
      ui.emptyText.textContent = 'Only the members of this room read what is written here.';
    } else {
      ui.emptyTitle.textContent = 'You and ' + conv.peer;
      ui.emptyText.textContent = 'Only the two of you can read this conversation.';
    }
  }

  /**
   * Build the DOM of one item of a conversation: a message (and the day separator before it,
   * if any), or a marker where messages could not be recovered. `prev`: the previous message;
   * `afterMarker`: a marker is between them.
   * Grouping: a message follows the previous one without a header when it is
   * from the same sender, on the same day, within GROUP_WINDOW_MS, with no marker between.
   */
  function buildItemNode(m, prev, afterMarker) {
    if (m.system) {
      m.sepEl = null;
      m.el = el('div', { class: 'sys-line', text: m.text });
    } else if (m.marker) {
      m.sepEl = null;
      m.el = el('div', { class: 'day-sep gap-sep', role: 'status' }, [el('span', { text: GAP_TEXT })]);
    } else {
      buildMessageNode(m, prev, afterMarker);
    }
    itemOf.set(m.el, m);
    return m.el;
  }

  function buildMessageNode(m, prev, afterMarker) {
    const newDay = !prev || dayStamp(prev.ts) !== dayStamp(m.ts);
    const grouped = !newDay && !afterMarker && prev && prev.from === m.from && m.ts - prev.ts < GROUP_WINDOW_MS;
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
        const name = conv && (conv.kind === 'public' || conv.kind === 'room')
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
    const textEl = el('div', { class: 'msg-text' });
    const edited = el('span', { class: 'msg-edited', text: 'edited' });
    // Own messages: edit and delete, as buttons (keyboard reachable), shown once the server has them.
    const editBtn = el('button', { type: 'button', class: 'link-btn msg-edit', text: 'Edit', 'aria-label': 'Edit message' });
    const delBtn = el('button', { type: 'button', class: 'link-btn msg-delete', text: 'Delete', 'aria-label': 'Delete message' });
    editBtn.addEventListener('click', () => startEdit(m));
    delBtn.addEventListener('click', () => { if (sendChange(m, 'delete')) delBtn.disabled = true; });
    const actions = m.own ? el('div', { class: 'msg-actions' }, [editBtn, ' ', delBtn]) : null;

    const body = el('div', { class: 'bubble' }, [
      // The sender, for screen readers, on grouped messages that have no visible header.
      grouped || m.own ? el('span', { class: 'sr-only', text: (m.own ? 'You' : m.from) + ': ' }) : null,
      textEl,
    ]);

    m.el = el('div', { class: 'msg' }, [
      head,
      el('div', { class: 'msg-row' }, [body, el('div', { class: 'msg-meta' }, [edited, time, status])]),
      actions,
      error,
    ]);
    m.editor = null;
    m.refs = { time, status, error, errText, retry, textEl, edited, editBtn, delBtn, actions };
    m.grouped = !!grouped;
    updateMessageNode(m);
    return m.el;
  }

  const STATUS_TEXT = {
    queued: 'waiting for connection…', pending: 'sending…', retrying: 'server busy, retrying…', sent: '', failed: 'not sent',
  };

  /** Refresh what can change on a message: status, time, error. */
  function updateMessageNode(m) {
    if (!m.el) return;
    const { time, status, error, errText, retry, textEl, edited, actions } = m.refs;
    m.el.className = 'msg' + (m.own ? ' is-own' : '') + (m.grouped ? ' is-grouped' : '') + ' is-' + m.status
      + (m.deleted ? ' is-deleted' : '') + (m.edited && !m.deleted ? ' is-edited' : '');
    // Text nodes only: a message's text never becomes markup.
    textEl.textContent = m.deleted ? 'message deleted' : m.text;
    edited.hidden = !m.edited || !!m.deleted;
    if (actions) actions.hidden = !(m.own && m.id && m.status === 'sent' && !m.deleted && !m.editor);
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
    if (m.status === 'sent' && m.own && m.receipt) {
      const read = m.receipt === 'read';
      status.textContent = read ? '✓✓ read' : '✓✓';
      status.hidden = false;
      status.title = (read ? 'Read by ' : 'Delivered to ') + (m.to || 'them');
      status.setAttribute('aria-label', read ? 'read' : 'delivered');
      m.el.classList.add(read ? 'is-read' : 'is-delivered');
    } else if (m.status === 'sent' && m.own) {
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
    let label = 'Message ' + conv.peer;
    if (conv.kind === 'public') label = 'Message everyone';
    else if (conv.kind === 'room') label = 'Message room ' + conv.room;
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
      const current = ui.sidebar.querySelector('.conv-list .conv.is-active') || ui.convList.querySelector('.conv');
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

    ui.roomForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const name = ui.roomName.value.trim();
      const problem = name ? joinRoom(name) : 'Type a room name.';
      ui.roomError.textContent = problem || '';
      ui.roomError.hidden = !problem;
      ui.roomName.setAttribute('aria-invalid', problem ? 'true' : 'false');
      if (problem) ui.roomName.focus();
      else if (state.rooms.includes(name)) ui.roomName.value = '';
    });
    ui.roomName.addEventListener('input', () => {
      ui.roomError.hidden = true;
      ui.roomName.setAttribute('aria-invalid', 'false');
    });
    ui.roomLeave.addEventListener('click', () => {
      const conv = state.convs.get(state.active);
      if (conv && conv.kind === 'room') leaveRoom(conv.room);
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
      sendTyping();
    });

    ui.messages.addEventListener('scroll', () => {
      if (isAtBottom()) ui.newPill.hidden = true;
      if (ui.messages.scrollTop <= LOAD_OLDER_PX) loadOlder(0);
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
      readActive();
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

/** The one `state` object the whole page reads and changes, and client ids (cid). */

/**
 * The whole client state. Render functions read it; event handlers change it
 * and then call the render functions of the regions they touched.
 */
export const state = {
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
  whoAsked: null,           // {cid, since: Map user -> status}: presence seen while `who` is unanswered
  roomOnline: {},           // room -> number of its members online (from `who` with room)
  typingSent: {},           // conversation key -> when we last sent a typing hint for it
  typing: new Map(),        // conversation key -> Map(user -> until when they are shown typing)
  active: 'public',         // key of the open conversation
  seen: new Map(),          // message id -> message shown (drop duplicates, learn offsets)
  readSent: new Set(),      // ids of private messages whose read receipt was sent
  earlyReceipts: new Map(), // message id -> receipt status that came before the message's ack
  changes: new Map(),       // message id -> latest edit/delete of it ({kind, text, ts}), kept for reloads
  changeSends: new Map(),   // cid -> our own edit/delete/react on the wire ({ref, kind, text} or {ref, kind, emoji, on})
  muted: new Set(),         // keys of the conversations the user muted (notify.js; saved per user)
  roomMembers: {},          // room -> all its members (from `who` with room; directory.js, @mentions)
  roomOnlineUsers: {},      // room -> Set of its members online (from the same `who`)
  directory: [],            // [{room, members}] from the `rooms` frame          // room -> its members online (from `who` with room), offered as @mentions
  reactions: new Map(),     // message id -> Map(emoji -> Map(user -> {on, ts})), see reactions.js
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

export function newCid() {
  state.cidSeq += 1;
  return 'c' + state.cidSeq + Math.random().toString(36).slice(2, 10);
}

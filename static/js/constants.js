/** Every constant of the page: limits, timings, storage keys. No imports. */

export const USERNAME_RE = /^[A-Za-z0-9_.-]{1,32}$/;
export const MAX_TEXT = 4000;               // characters (code points), as the server counts them
export const COUNT_SHOW_FROM = 3500;        // show the character counter from this length on
export const PING_MS = 25000;               // ping interval while the socket is open
export const IDLE_MS = 65000;               // no frame at all for this long: the socket is dead
export const ACK_TIMEOUT_MS = 20000;        // a message with no ack after this is shown as failed
export const LIMITED_RETRIES = 3;           // a message refused with rate_limited is sent again this often,
export const LIMITED_RETRY_MS = 1000;       // ... after about 1, 2 and 4 s (same cid: never stored twice)
export const BACKOFF_MIN_MS = 500;
export const BACKOFF_MAX_MS = 15000;
export const MAX_FAILED_OPENS = 3;          // closes before open in a row -> ask /readyz why (see socketGone)
export const READY_CHECK_MS = 5000;         // give up on a /readyz request after this long
export const CLOSE_AUTH = 4001;             // close code meaning "token no longer valid"
export const MAX_MESSAGES_PER_CONV = 1000;
export const GROUP_WINDOW_MS = 5 * 60 * 1000;
export const AT_BOTTOM_PX = 48;
export const PUBLIC = 'public';
export const RECENT_PUBLIC = 50;            // history loaded for Public on a first sign-in
export const RECENT_DMS = 100;              // ... and for user:<me>, which fills the DM conversations
export const OLDER_PAGE = 50;               // history loaded per scroll to the top
export const HISTORY_MAX = 200;             // the server's largest `limit`
export const LOAD_OLDER_PX = 60;            // this close to the top of the list: load older messages
export const AUTO_OLDER_ROUNDS = 10;        // older pages loaded in a row without the user scrolling
export const GAP_TEXT = 'Some messages could not be recovered';
export const RECENT_ROOM = 50;              // history loaded for a room this page has not shown yet
export const MAX_ONLINE = 1000;             // the server's largest `who` answer
export const TYPING_SEND_MS = 2000;         // at most one typing hint per conversation this often
export const TYPING_SHOW_MS = 3000;         // "bob is typing…" lasts this long after a hint
export const ROOM_PREFIX = 'room:';

export const STORE = {
  token: 'chat.token',
  user: 'chat.username',
  convs: 'chat.convs',
  active: 'chat.active',
};
// localStorage (shared by the tabs of this browser, kept after sign-out): 'chat.positions.<user>'.
export const POSITIONS_PREFIX = 'chat.positions.';
export const EPOCHS_PREFIX = 'chat.epochs.';      // the epoch of each saved position (protocol v2)
// localStorage: 'chat.rooms.<user>', the rooms this browser joined for the user (no frame lists them).
export const ROOMS_PREFIX = 'chat.rooms.';

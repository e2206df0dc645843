"""Frames of the chat protocol (docs/PROTOCOL.md): names, error codes, client frames and their validation.

Pure code: no sockets, no I/O libraries. ``decode_frame`` turns the bytes of one WebSocket
frame into a typed client frame or raises ``ProtocolError`` whose ``code`` is one of the
protocol's error codes. The codecs (JSON, msgpack) and the server's ``OutFrame`` live in
``codec.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Protocol

# \A and \Z, never ^ and $: "$" also matches before a final newline, and "alice\n" is not a name.
# Use fullmatch() all the same.
USERNAME_RE: Final = re.compile(r"\A[A-Za-z0-9_.-]{1,32}\Z")
ROOM_RE: Final = USERNAME_RE
CHANNEL_RE: Final = re.compile(r"\A(?:public|(?:user|room):[A-Za-z0-9_.-]{1,32})\Z")
PUBLIC: Final = "public"
HISTORY_DEFAULT: Final = 50
HISTORY_MAX: Final = 200
MAX_RESUME_CHANNELS: Final = 100
MAX_TEXT_CHARS: Final = 4000
MAX_CID_CHARS: Final = 64
MAX_FRAME_BYTES: Final = 64 * 1024

# Error codes of the protocol.
BAD_FRAME: Final = "bad_frame"
UNKNOWN_TYPE: Final = "unknown_type"
TOO_LARGE: Final = "too_large"
RATE_LIMITED: Final = "rate_limited"
NOT_MEMBER: Final = "not_member"
FORBIDDEN: Final = "forbidden"
INTERNAL: Final = "internal"
UNAUTHORIZED: Final = "unauthorized"  # an addition: a ``refresh`` whose token is not valid
#: The longest token a ``refresh`` may carry (a JWT of a few claims is a few hundred bytes).
MAX_TOKEN_CHARS: Final = 4096

#: The most names a ``who`` answer holds.
MAX_WHO: Final = 1000
#: The largest rooms directory a ``rooms`` frame answers.
MAX_ROOMS: Final = 200


def user_channel(user: str) -> str:
    """The channel of the private messages to or from ``user``."""
    return f"user:{user}"


def session_id(server: str, number: int) -> str:
    """A session's id, unique across the cluster: it names the server that holds the session."""
    return f"{server}#{number}"


def server_of_session(session: str) -> str:
    """The server named in a ``session_id`` ("" for anything else)."""
    server, mark, _ = session.rpartition("#")
    return server if mark else ""


def room_channel(room: str) -> str:
    """The channel of the messages of ``room``."""
    return f"room:{room}"


class ProtocolError(Exception):
    """A client frame the server refuses; becomes an ``error`` frame, never a disconnect."""

    def __init__(self, code: str, message: str, cid: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.cid = cid


class Decoder(Protocol):
    """What ``decode_frame`` needs of a codec (``codec.JSON`` or ``codec.MSGPACK``)."""

    def loads(self, raw: str | bytes) -> Any: ...


# ---------------------------------------------------------------------------- client frames


@dataclass(frozen=True, slots=True)
class PublicFrame:
    text: str
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class PrivateFrame:
    to: str
    text: str
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class PingFrame:
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryFrame:
    channel: str
    before: int | None = None
    limit: int = HISTORY_DEFAULT
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class ResumeFrame:
    positions: tuple[tuple[str, int], ...]
    cid: str | None = None
    epochs: tuple[tuple[str, str], ...] = ()  # version 2: the epoch the client knows per channel


@dataclass(frozen=True, slots=True)
class JoinFrame:
    room: str
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class LeaveFrame:
    room: str
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class RoomFrame:
    room: str
    text: str
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class EditFrame:
    """Version 2: the author replaces the text of message ``id`` of ``channel``."""

    channel: str
    id: str
    text: str
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteFrame:
    """Version 2: the author deletes message ``id`` of ``channel``."""

    channel: str
    id: str
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class ReactFrame:
    """This server's addition: ``user`` reacts to message ``id`` of ``channel`` with ``emoji``
    (one of ``REACTIONS``), or takes that reaction back (``remove``)."""

    channel: str
    id: str
    emoji: str
    remove: bool = False
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class TypingFrame:
    to: str | None = None
    room: str | None = None
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class WhoFrame:
    room: str | None = None
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class RoomsFrame:
    """This server's addition: the rooms directory, the rooms with the most members first."""

    cid: str | None = None


@dataclass(frozen=True, slots=True)
class ReceiptFrame:
    """An addition to the protocol: tell the sender of private message ``id`` it was read."""

    to: str
    id: str
    status: str
    cid: str | None = None


RECEIPT_STATUSES: Final = frozenset({"delivered", "read"})
#: The reactions a ``react`` frame may carry: a small set, the same on every page.
REACTIONS: Final = ("\U0001f44d", "\u2764\ufe0f", "\U0001f602", "\U0001f62e", "\U0001f622", "\U0001f389")


@dataclass(frozen=True, slots=True)
class RefreshFrame:
    """An addition to the protocol: a new token for the open session, before its own expires."""

    token: str
    cid: str | None = None


ClientFrame = (
    PublicFrame
    | PrivateFrame
    | PingFrame
    | HistoryFrame
    | ResumeFrame
    | JoinFrame
    | LeaveFrame
    | RoomFrame
    | TypingFrame
    | WhoFrame
    | ReceiptFrame
    | EditFrame
    | DeleteFrame
    | RefreshFrame
    | ReactFrame
    | RoomsFrame
)


def decode_frame(raw: str | bytes, codec: Decoder) -> ClientFrame:
    """Decode and validate one client frame; raise ``ProtocolError`` on anything wrong."""
    obj = codec.loads(raw)
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_FRAME, "a frame must be an object with a 'type'")
    cid = _cid(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_FRAME, "field 'type' must be a string", cid)
    if kind == "public":
        return PublicFrame(text=_text(obj, cid), cid=cid)
    if kind == "private":
        return PrivateFrame(to=_name(obj, "to", cid), text=_text(obj, cid), cid=cid)
    if kind == "ping":
        return PingFrame(cid=cid)
    if kind == "history":
        return HistoryFrame(
            channel=_channel(obj.get("channel"), cid),
            before=_offset(obj, "before", cid, minimum=1),
            limit=_limit(obj, cid),
            cid=cid,
        )
    if kind == "resume":
        return ResumeFrame(positions=_positions(obj, cid), cid=cid, epochs=_epochs(obj, cid))
    if kind == "join":
        return JoinFrame(room=_name(obj, "room", cid), cid=cid)
    if kind == "leave":
        return LeaveFrame(room=_name(obj, "room", cid), cid=cid)
    if kind == "room":
        return RoomFrame(room=_name(obj, "room", cid), text=_text(obj, cid), cid=cid)
    if kind == "typing":
        if (obj.get("to") is None) == (obj.get("room") is None):
            raise ProtocolError(BAD_FRAME, "a typing hint names either 'to' or 'room'", cid)
        if obj.get("to") is not None:
            return TypingFrame(to=_name(obj, "to", cid), cid=cid)
        return TypingFrame(room=_name(obj, "room", cid), cid=cid)
    if kind == "receipt":
        message_id, status = _message_id(obj, cid), obj.get("status")
        if status not in RECEIPT_STATUSES:
            raise ProtocolError(BAD_FRAME, "field 'status' must be 'delivered' or 'read'", cid)
        return ReceiptFrame(to=_name(obj, "to", cid), id=message_id, status=status, cid=cid)
    if kind in ("edit", "delete"):
        channel, message_id = _channel(obj.get("channel"), cid), _message_id(obj, cid)
        if kind == "delete":
            return DeleteFrame(channel=channel, id=message_id, cid=cid)
        return EditFrame(channel=channel, id=message_id, text=_text(obj, cid), cid=cid)
    if kind == "refresh":
        token = obj.get("token")
        if not isinstance(token, str) or not 1 <= len(token) <= MAX_TOKEN_CHARS:
            raise ProtocolError(BAD_FRAME, f"field 'token' must be a string of 1 to {MAX_TOKEN_CHARS} characters", cid)
        return RefreshFrame(token=token, cid=cid)
    if kind == "react":
        channel, message_id, emoji, remove = (
            _channel(obj.get("channel"), cid),
            _message_id(obj, cid),
            obj.get("emoji"),
            obj.get("remove", False),
        )
        if emoji not in REACTIONS:
            raise ProtocolError(BAD_FRAME, f"field 'emoji' must be one of {' '.join(REACTIONS)}", cid)
        if not isinstance(remove, bool):
            raise ProtocolError(BAD_FRAME, "field 'remove' must be true or false", cid)
        return ReactFrame(channel=channel, id=message_id, emoji=emoji, remove=remove, cid=cid)
    if kind == "rooms":
        return RoomsFrame(cid=cid)
    if kind == "who":
        return WhoFrame(room=None if obj.get("room") is None else _name(obj, "room", cid), cid=cid)
    raise ProtocolError(UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}", cid)


def _cid(obj: dict[Any, Any]) -> str | None:
    cid = obj.get("cid")
    if cid is None:
        return None
    if not isinstance(cid, str) or len(cid) > MAX_CID_CHARS:
        raise ProtocolError(BAD_FRAME, f"field 'cid' must be a string of at most {MAX_CID_CHARS} characters")
    return cid


def _message_id(obj: dict[Any, Any], cid: str | None) -> str:
    message_id = obj.get("id")
    if not isinstance(message_id, str) or not 1 <= len(message_id) <= MAX_CID_CHARS:
        raise ProtocolError(BAD_FRAME, "field 'id' must be the id of a message", cid)
    return message_id


def _text(obj: dict[Any, Any], cid: str | None) -> str:
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        raise ProtocolError(BAD_FRAME, "field 'text' must be a non-empty string", cid)
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError(TOO_LARGE, f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}", cid)
    return text


def _name(obj: dict[Any, Any], key: str, cid: str | None) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not USERNAME_RE.fullmatch(value):
        raise ProtocolError(BAD_FRAME, f"field {key!r} must be a name of 1-32 of A-Z a-z 0-9 _ . -", cid)
    return value


def _channel(value: Any, cid: str | None) -> str:
    if not isinstance(value, str) or not CHANNEL_RE.fullmatch(value):
        raise ProtocolError(BAD_FRAME, "a channel is 'public', 'user:<name>' or 'room:<name>'", cid)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _offset(obj: dict[Any, Any], key: str, cid: str | None, minimum: int = 0) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not _is_int(value) or not minimum <= value < 2**53:
        raise ProtocolError(BAD_FRAME, f"field {key!r} must be a whole number of at least {minimum}", cid)
    return int(value)


def _limit(obj: dict[Any, Any], cid: str | None) -> int:
    value = obj.get("limit", HISTORY_DEFAULT)
    if not _is_int(value) or not 1 <= value <= HISTORY_MAX:
        raise ProtocolError(BAD_FRAME, f"field 'limit' must be a whole number from 1 to {HISTORY_MAX}", cid)
    return int(value)


def _positions(obj: dict[Any, Any], cid: str | None) -> tuple[tuple[str, int], ...]:
    positions = obj.get("positions")
    if not isinstance(positions, dict) or len(positions) > MAX_RESUME_CHANNELS:
        raise ProtocolError(
            BAD_FRAME, f"field 'positions' must map at most {MAX_RESUME_CHANNELS} channels to offsets", cid
        )
    pairs = []
    for channel, offset in positions.items():
        _channel(channel, cid)
        if not _is_int(offset) or not 0 <= offset < 2**53:
            raise ProtocolError(BAD_FRAME, f"the offset of {channel!r} must be a whole number >= 0", cid)
        pairs.append((channel, int(offset)))
    return tuple(sorted(pairs))


MAX_EPOCH_CHARS: Final = 64


def _epochs(obj: dict[Any, Any], cid: str | None) -> tuple[tuple[str, str], ...]:
    epochs = obj.get("epochs")
    if epochs is None:
        return ()
    if not isinstance(epochs, dict) or len(epochs) > MAX_RESUME_CHANNELS:
        raise ProtocolError(
            BAD_FRAME, f"field 'epochs' must map at most {MAX_RESUME_CHANNELS} channels to strings", cid
        )
    pairs = []
    for channel, epoch in epochs.items():
        _channel(channel, cid)
        if not isinstance(epoch, str) or len(epoch) > MAX_EPOCH_CHARS:
            raise ProtocolError(BAD_FRAME, f"the epoch of {channel!r} must be a string from 'welcome'", cid)
        pairs.append((channel, epoch))
    return tuple(sorted(pairs))

"""A message as it travels between servers over the bus: the envelope, msgpack on the wire.

Versioned (``ENVELOPE_VERSION``); fields a server does not know are ignored, so a newer server's
envelopes stay readable by an older one of the same version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import msgpack

from chatserver.codec import OutFrame
from chatserver.protocol import PUBLIC, room_channel, user_channel

MessageKind = Literal["public", "private", "room", "edit", "delete", "react", "unreact", "event"]
#: Kinds that change an earlier message (``ref``), stored and delivered where it was.
CHANGES: Final = ("edit", "delete", "react", "unreact")
#: Kinds whose ``text`` is a reaction, sent to clients as ``emoji``.
REACTS: Final = ("react", "unreact")


class EnvelopeError(ValueError):
    """Bytes from the bus that are not an envelope this server understands."""


ENVELOPE_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message as it travels between servers over the bus (msgpack on the wire).

    ``recipients`` are the users whose local sessions get the message (empty for public:
    every local session). ``origin`` is the sending session, which is acked instead.
    ``offsets`` is the message's offset in each channel that stores it.
    """

    kind: MessageKind
    id: str
    sender: str
    text: str
    ts: int
    to: str | None = None
    recipients: tuple[str, ...] = ()
    origin: str = ""
    offsets: tuple[tuple[str, int], ...] = ()
    room: str | None = None
    event: dict[str, Any] | None = None  # kind "event": a transient frame (presence, typing)
    receipt: bool = False  # the sending session asked for "delivered" receipts
    epochs: tuple[tuple[str, str], ...] = ()  # the epoch of each offset (empty from older servers)
    ref: str | None = None  # kind "edit"/"delete": the id of the message it changes

    def placed(
        self, id: str, ts: int, offsets: tuple[tuple[str, int], ...], epochs: tuple[tuple[str, str], ...]
    ) -> Envelope:
        """This message as its store placed it (``dataclasses.replace``, without its cost)."""
        return Envelope(
            self.kind,
            id,
            self.sender,
            self.text,
            ts,
            self.to,
            self.recipients,
            self.origin,
            offsets,
            self.room,
            self.event,
            self.receipt,
            epochs,
            self.ref,
        )

    def channels(self) -> tuple[str, ...]:
        """The channels that store this message: ``public``, the room's, or both users'. An
        edit or a delete is stored where its message was (its ``room``, or its two users)."""
        if self.kind == "event":
            return ()
        if self.room is not None:
            return (room_channel(self.room),)
        if self.kind == "private" or (self.kind in CHANGES and self.to is not None):
            return tuple(dict.fromkeys(user_channel(u) for u in self.recipients))
        return (PUBLIC,)

    def to_bytes(self) -> bytes:
        data: bytes = msgpack.packb(
            {
                "v": ENVELOPE_VERSION,
                "k": self.kind,
                "i": self.id,
                "f": self.sender,
                "x": self.text,
                "s": self.ts,
                "t": self.to,
                "r": list(self.recipients),
                "o": self.origin,
                "c": dict(self.offsets),
                "m": self.room,
                "e": self.event,
                "d": self.receipt,
                "p": dict(self.epochs),
                "ref": self.ref,
            },
            use_bin_type=True,
        )
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        try:
            obj = msgpack.unpackb(data, raw=False)
            if not isinstance(obj, dict) or obj.get("v") != ENVELOPE_VERSION:
                raise EnvelopeError("not a version-1 envelope")
            kind = obj["k"]
            if kind not in ("public", "private", "room", "event", *CHANGES):
                raise EnvelopeError(f"unknown envelope kind {kind!r}")
            return cls(
                kind=kind,
                id=str(obj["i"]),
                sender=str(obj["f"]),
                text=str(obj["x"]),
                ts=int(obj["s"]),
                to=None if obj.get("t") is None else str(obj["t"]),
                recipients=tuple(str(r) for r in obj.get("r") or ()),
                origin=str(obj.get("o") or ""),
                offsets=tuple((str(c), int(o)) for c, o in (obj.get("c") or {}).items()),
                room=None if obj.get("m") is None else str(obj["m"]),
                event=obj.get("e") if isinstance(obj.get("e"), dict) else None,
                receipt=obj.get("d") is True,
                epochs=tuple((str(c), str(e)) for c, e in (obj.get("p") or {}).items()),
                ref=None if obj.get("ref") is None else str(obj["ref"]),
            )
        except (KeyError, TypeError, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            if isinstance(exc, EnvelopeError):
                raise
            raise EnvelopeError(f"malformed envelope: {exc}") from None

    def message_body(self, channel: str) -> dict[str, Any]:
        """The ``message`` frame as stored in ``channel``'s history, without its offset."""
        body: dict[str, Any] = {
            "type": "message",
            "id": self.id,
            "channel": channel,
            "kind": self.kind,
            "from": self.sender,
            "text": self.text,
            "ts": self.ts,
        }
        if self.to is not None:
            body["to"] = self.to
        if self.room is not None:
            body["room"] = self.room
        if self.ref is not None:
            body["ref"] = self.ref
            if self.kind == "delete":
                del body["text"]
            elif self.kind in REACTS:
                body["emoji"] = body.pop("text")
        return body

    def message_frame(self, channel: str) -> OutFrame:
        """The ``message`` frame sessions reading ``channel`` get, with its offset there."""
        body = self.message_body(channel)
        body["offset"] = dict(self.offsets).get(channel, 0)
        return OutFrame(body)

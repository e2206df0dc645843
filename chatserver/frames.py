"""Server frames: one builder per frame type the server writes to clients (docs/PROTOCOL.md).

Each returns an ``OutFrame``, encoded at most once per codec however many sockets it reaches;
the transient bodies (presence, typing, receipt) are plain dicts that travel as events first.
"""

from __future__ import annotations

from typing import Any

from chatserver.codec import OutFrame


def welcome(
    user: str,
    server: str,
    positions: dict[str, int],
    rooms: list[str] | None = None,
    epochs: dict[str, str] | None = None,
) -> OutFrame:
    """``rooms`` (an addition): the rooms the user is in; ``positions`` then covers their channels
    too. ``epochs`` (version 2): each channel's epoch, for ``resume``."""
    body: dict[str, Any] = {"type": "welcome", "user": user, "server": server, "positions": positions}
    if epochs is not None:
        body["epochs"] = epochs
    if rooms:
        body["rooms"] = rooms
    return OutFrame(body)


def ack(cid: str | None, message_id: str, ts: int, channel: str, offset: int) -> OutFrame:
    """``channel`` and ``offset`` (an addition to the protocol): where the sender's own copy is
    stored, since the sending session gets no echo of a private message."""
    return OutFrame({"type": "ack", "cid": cid, "id": message_id, "ts": ts, "channel": channel, "offset": offset})


def membership_ack(cid: str, room: str) -> OutFrame:
    """Version 2: a ``join`` or ``leave`` with a ``cid`` is answered once the membership is stored."""
    return OutFrame({"type": "ack", "cid": cid, "room": room})


def refreshed(user: str, exp: int, cid: str | None) -> OutFrame:
    """An addition: the session now lives on the token of a ``refresh``, until ``exp`` (seconds
    since the epoch, the token's own; the server allows its clock leeway past it)."""
    body: dict[str, Any] = {"type": "refreshed", "user": user, "exp": exp}
    if cid is not None:
        body["cid"] = cid
    return OutFrame(body)


def error(code: str, message: str, cid: str | None = None) -> OutFrame:
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if cid is not None:
        body["cid"] = cid
    return OutFrame(body)


def history(channel: str, messages: list[dict[str, Any]], cid: str | None) -> OutFrame:
    body: dict[str, Any] = {"type": "history", "channel": channel, "messages": messages}
    if cid is not None:
        body["cid"] = cid
    return OutFrame(body)


def resumed(
    recovered: bool,
    cid: str | None,
    gaps: list[str],
    positions: dict[str, int] | None = None,
    epochs: dict[str, str] | None = None,
) -> OutFrame:
    """``gaps``: the channels whose gap history no longer covers (or whose epoch changed);
    ``positions`` and ``epochs`` (version 2): where each resumed channel now stands."""
    body: dict[str, Any] = {"type": "resumed", "recovered": recovered}
    if gaps:
        body["gaps"] = gaps
    if positions is not None:
        body["positions"] = positions
    if epochs is not None:
        body["epochs"] = epochs
    if cid is not None:
        body["cid"] = cid
    return OutFrame(body)


def presence(user: str, status: str, room: str | None = None, cid: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "presence", "user": user, "status": status}
    if room is not None:
        body["room"] = room
    if cid is not None:
        body["cid"] = cid
    return body


def typing(sender: str, to: str | None, room: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "typing", "from": sender}
    if to is not None:
        body["to"] = to
    if room is not None:
        body["room"] = room
    return body


def receipt(message_id: str, reader: str, status: str) -> dict[str, Any]:
    return {"type": "receipt", "id": message_id, "from": reader, "status": status}


def who(users: list[str], room: str | None, cid: str | None, members: list[str] | None = None) -> OutFrame:
    """``users`` online; for a room, also its ``members`` (this server's addition), all of them."""
    body: dict[str, Any] = {"type": "who", "users": users}
    if room is not None:
        body["room"] = room
    if members is not None:
        body["members"] = members
    if cid is not None:
        body["cid"] = cid
    return OutFrame(body)


def rooms(directory: list[tuple[str, int]], cid: str | None) -> OutFrame:
    """The rooms directory: ``[{"room", "members"}]``, the rooms with the most members first."""
    body: dict[str, Any] = {"type": "rooms", "rooms": [{"room": r, "members": n} for r, n in directory]}
    if cid is not None:
        body["cid"] = cid
    return OutFrame(body)


def pong(cid: str | None) -> OutFrame:
    body: dict[str, Any] = {"type": "pong"}
    if cid is not None:
        body["cid"] = cid
    return OutFrame(body)

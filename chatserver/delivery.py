"""Delivery of what comes off this server's topic: messages in order to the local sessions that
read their channels, transient events (presence, typing, receipts) to whom they are for.

A message passes the ``Sequencer`` (each channel in offset order; a copy dropped; a hole read
from history after ``gap_wait_s``), then the hub (each session only above what it has). Other
jobs open a channel here before a session reads it (``open``), place it at the position the
session was told (``place``), and close it when nobody here reads it (``close``). When what a
channel's readers were told no longer holds (its offsets started over, or history lost a hole),
they are closed with ``CLOSE_RESET``: they reconnect, resume, and are told of the gap.
"""

from __future__ import annotations

import functools
import logging

from chatserver import frames
from chatserver import protocol as p
from chatserver.codec import OutFrame
from chatserver.envelope import Envelope, EnvelopeError
from chatserver.history import Head, HistoryError
from chatserver.parts import CLOSE_RESET, ClientSession, Parts, ignore_failure
from chatserver.sequencer import Deliver, Sequencer

log = logging.getLogger(__name__)


class Delivery:
    def __init__(self, parts: Parts, gap_wait_s: float = 0.25) -> None:
        self._parts = parts
        self._hub = parts.hub
        self._sequencer = Sequencer(self._fill, self.reset, self._renew_epoch, gap_wait_s)

    # ------------------------------------------------------------------ channels read here

    def open(self, channel: str) -> None:
        """A session is about to read ``channel``: hold its messages until ``place``."""
        self._sequencer.expect(channel)

    def place(self, channel: str, head: Head, spare: ClientSession | None = None) -> None:
        """A session was told ``channel`` stands at ``head``. A newer epoch than this server
        knew resets the channel's other readers (but ``spare``, told in ``resumed``)."""
        if self._sequencer.start(channel, head.epoch, head.offset):
            self.reset(channel, spare)

    def abandon(self, channel: str) -> None:
        """The session that opened ``channel`` was not placed in it (a store was down)."""
        self._sequencer.abandon(channel)

    def close(self, channel: str) -> None:
        """Nobody here reads ``channel`` any more."""
        self._sequencer.forget(channel)

    def reset(self, channel: str, spare: ClientSession | None = None) -> None:
        """What ``channel``'s readers here (but ``spare``) were told no longer holds."""
        self._parts.metrics.channel_resets.inc()
        for session in self._hub.readers(channel):
            if session is not spare:
                session.close(CLOSE_RESET, f"{channel} was reset; reconnect and resume")

    # ------------------------------------------------------------------ messages

    def on_bus_message(self, payload: bytes) -> None:
        """Deliver one envelope from this server's topic to the local sessions it is for."""
        try:
            envelope = Envelope.from_bytes(payload)
        except EnvelopeError as exc:
            log.error("dropped an undecodable message from the bus: %s", exc)
            return
        if envelope.kind == "event":
            self._deliver_event(envelope)
        elif envelope.offsets:
            self.sequence(envelope)
        else:  # from a server that stores nothing (none of this version): as it comes
            for channel in envelope.channels():
                self._deliver(envelope, channel)

    def sequence(self, envelope: Envelope) -> None:
        """Each of a stored message's channels, in its place in the channel's order: from the
        bus, or straight from the sender's server when no copy of it comes back here."""
        epochs = dict(envelope.epochs)
        for channel, offset in envelope.offsets:
            deliver = functools.partial(self._deliver, envelope, channel)
            self._sequencer.offer(channel, epochs.get(channel, ""), offset, envelope.id, deliver)

    def _deliver(self, envelope: Envelope, channel: str) -> None:
        """``envelope``'s message as stored in ``channel``, to the local sessions reading it there."""
        hub = self._hub
        # The frame is made only for a channel somebody here reads: of a private message's two
        # channels, the recipient's server reads one and the sender's server often none (the
        # sending session gets an ack instead).
        if channel == p.PUBLIC:
            delivered = hub.broadcast(envelope.message_frame(channel))
        elif channel.startswith("room:"):
            here = [user for user in envelope.recipients if hub.has_user(user)]
            if not here:
                return
            frame = envelope.message_frame(channel)  # every member, the sender included
            delivered = sum(hub.deliver(user, frame) for user in here)
        else:
            user = channel[len("user:") :]
            if not hub.reaches(user, skip=envelope.origin):
                return
            delivered = hub.deliver(user, envelope.message_frame(channel), skip=envelope.origin)
            if delivered and envelope.receipt and user == envelope.to and user != envelope.sender:
                self._receipt_delivered(envelope)
        if delivered:
            metrics = self._parts.metrics
            metrics.deliveries.labels(envelope.kind).inc(delivered)
            metrics.delivery_seconds.observe(max(0.0, self._parts.clock() - envelope.ts / 1000))

    async def _fill(self, channel: str, after: int, upto: int) -> list[tuple[int, str, Deliver]]:
        """Deliveries of ``channel``'s stored messages in ``(after, upto]``, for the sequencer
        to put in a hole that the bus left (a message stored and never published)."""
        messages, _ = await self._parts.history.after(channel, after, max(1, upto - after))
        members: set[str] = set()
        if channel.startswith("room:"):
            members = set(await self._parts.rooms.members(channel[len("room:") :]))
        deliveries: list[tuple[int, str, Deliver]] = []
        for message in messages:
            if message["offset"] > upto:
                break
            deliver = functools.partial(self._deliver_stored, channel, OutFrame(message), members)
            deliveries.append((message["offset"], str(message["id"]), deliver))
        return deliveries

    def _deliver_stored(self, channel: str, frame: OutFrame, members: set[str]) -> None:
        if channel == p.PUBLIC:
            self._hub.broadcast(frame)
        elif channel.startswith("room:"):
            for user in members:
                self._hub.deliver(user, frame)
        else:
            self._hub.deliver(channel[len("user:") :], frame)

    def _renew_epoch(self, channel: str, stale: str) -> None:
        """``channel``'s store handed out offsets of epoch ``stale`` a second time: give it a new
        epoch, so every server and client learns that those offsets no longer mean one thing."""

        async def renew() -> None:
            try:
                await self._parts.history.renew_epoch(channel, stale)
            except HistoryError as exc:  # the next reused offset tries again
                log.warning("could not renew the epoch of %s: %s", channel, exc)

        self._parts.spawn(renew())

    # ------------------------------------------------------------------ events and receipts

    def _receipt_delivered(self, envelope: Envelope) -> None:
        """Tell the sender a session of the recipient got the message (an addition to the protocol,
        for sessions that asked: it doubles the frames and bus traffic of a private message).

        The receipt goes to the server of the sending session (named in its id), for the sender's
        sessions there: no registry look-up, one small publish, and none when that is this server."""
        body = frames.receipt(envelope.id, envelope.to or "", "delivered")
        server = p.server_of_session(envelope.origin)
        if server == self._parts.server_id:
            self._hub.deliver(envelope.sender, OutFrame(body))
        elif server:
            event = Envelope(
                kind="event", id="", sender="", text="", ts=envelope.ts, recipients=(envelope.sender,), event=body
            )
            self._parts.bus.publish(server, event.to_bytes()).add_done_callback(ignore_failure)

    def _deliver_event(self, envelope: Envelope) -> None:
        if envelope.event is None:
            return
        frame = OutFrame(envelope.event)
        if not envelope.recipients:
            self._hub.broadcast(frame, skip=envelope.origin)
            return
        for user in envelope.recipients:
            if self._hub.has_user(user):
                self._hub.deliver(user, frame, skip=envelope.origin)

"""Recovery: what a session is told of its channels, and what it missed.

``greet`` tells a new session where each of its channels stands (``welcome``: offset and epoch)
and then holds the live messages of those channels until the client sends ``resume`` (or a
message, or ``resume_wait_s`` passes): so the replay of what it missed and what comes live form
one increasing sequence per channel, with nothing twice. ``resume`` replays from the client's
offsets what the session was not sent, and answers ``resumed``: a channel whose epoch changed,
or whose history no longer reaches back to the client's offset, is named as a gap with where it
stands now. ``history`` pages through a channel the user may read.
"""

from __future__ import annotations

import asyncio
import logging

from chatserver import frames
from chatserver import protocol as p
from chatserver.codec import OutFrame
from chatserver.delivery import Delivery
from chatserver.history import Head, HistoryError
from chatserver.parts import CLOSE_TRY_AGAIN, ClientSession, Parts

log = logging.getLogger(__name__)


class Recovery:
    REPLAY_PAGE = 500  # messages per history read while resuming
    MAX_EXTENSION_S = 5.0  # how much longer a loop running late may make a session wait for resume

    def __init__(self, parts: Parts, delivery: Delivery, resume_wait_s: float = 0.0) -> None:
        self._parts = parts
        self._hub = parts.hub
        self._delivery = delivery
        self._resume_wait_s = resume_wait_s
        self._waiting: dict[str, asyncio.TimerHandle] = {}  # greeted sessions that may resume
        self._resumed: set[str] = set()  # sessions that sent a resume: a later one repeats nothing

    async def greet(self, session: ClientSession, channels: list[str], rooms: list[str]) -> None:
        """``welcome`` with the positions of ``channels``, then their live messages wait for the
        client's resume. The session was registered before: every message stored after the
        positions were read is routed here too. One whose positions cannot be read is asked to
        come back shortly."""
        try:
            heads = await self._parts.history.heads(channels)
        except HistoryError as exc:
            log.warning("positions of %s unknown: %s", session.user, exc)
            for channel in channels:
                self._delivery.abandon(channel)
            session.close(CLOSE_TRY_AGAIN, "the message store is unavailable; reconnect shortly")
            return
        if not self._hub.has_session(session):
            return  # closed while it was being greeted
        for channel, head in heads.items():
            self._delivery.place(channel, head)
        positions = {c: h.offset for c, h in heads.items()}
        self._hub.place(session, positions)
        epochs = {c: h.epoch for c, h in heads.items()}
        session.send(frames.welcome(session.user, self._parts.server_id, positions, rooms, epochs))
        self._hub.release(session, [])  # events go out; the channels wait for resume
        if self._resume_wait_s > 0:
            self._wait(session, self._resume_wait_s, 0.0)
        else:
            self._hub.release(session)

    def _wait(self, session: ClientSession, seconds: float, extended: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + seconds
        self._waiting[session.id] = loop.call_later(seconds, self._waited, session, due, extended)

    def _waited(self, session: ClientSession, due: float, extended: float) -> None:
        """The wait is over, unless the loop ran late: then a resume sent in time may still be
        being read, and the session waits as long again (at most ``MAX_EXTENSION_S`` in all)."""
        late = asyncio.get_running_loop().time() - due
        if late > 0.01 and extended + late <= self.MAX_EXTENSION_S:
            self._wait(session, late, extended + late)
            return
        self.stop_waiting(session)

    def stop_waiting(self, session: ClientSession) -> bool:
        """The session's channels go live from where ``welcome`` put them (it did not resume in
        time, or it sent a message first); False when they were not waiting."""
        timer = self._waiting.pop(session.id, None)
        if timer is None:
            return False
        timer.cancel()
        self._hub.release(session)
        return True

    def forget(self, session: ClientSession) -> None:
        self._resumed.discard(session.id)
        timer = self._waiting.pop(session.id, None)
        if timer is not None:
            timer.cancel()

    async def history(self, session: ClientSession, frame: p.HistoryFrame) -> None:
        if not await self._parts.may_read(session.user, frame.channel):
            self._parts.refuse(session, p.FORBIDDEN, f"you may not read {frame.channel!r}", frame.cid)
            return
        messages = await self._parts.history.before(frame.channel, frame.before, frame.limit)
        session.send(frames.history(frame.channel, messages, frame.cid))

    async def resume(self, session: ClientSession, frame: p.ResumeFrame) -> None:
        """Replay every stored message after the given offsets, in order, then ``resumed``.

        Live frames of those channels are held while the replay runs and go out after it,
        minus those it sent: the session sees one increasing sequence per channel. The first
        resume after ``welcome`` ends the wait for it: every other channel goes live after it.
        A session's first resume replays everything after its offsets, also what went out live
        before it (it came after the wait, or after a message of its own): the contract's seam
        is the sequence after the resume. A later resume on the same socket repeats nothing."""
        greeted = session.id in self._waiting
        if greeted:
            self._waiting.pop(session.id).cancel()
        first = session.id not in self._resumed
        self._resumed.add(session.id)
        # Held from now, not from when the channels are known to be readable: a live message
        # meanwhile would go out ahead of the replay of older ones.
        self._hub.hold(session, [c for c, _ in frame.positions])
        readable = {c: await self._parts.may_read(session.user, c) for c, _ in frame.positions}
        wanted = [(c, o) for c, o in frame.positions if readable[c]]
        refused = [c for c, _ in frame.positions if not readable[c]]
        if refused:
            self._parts.refuse(session, p.FORBIDDEN, f"you may not read {', '.join(refused)}", frame.cid)
            self._hub.release(session, refused)
        try:
            heads, gaps, replayed = await self._recover(session, wanted, dict(frame.epochs), first)
        except HistoryError as exc:  # its live messages stay held: it resumes on a new connection
            log.warning("resume of %s failed: %s", session.user, exc)
            session.close(CLOSE_TRY_AGAIN, "the message store is unavailable; reconnect and resume shortly")
            return
        self._hub.release(session, None if greeted else [c for c, _ in wanted])
        self._parts.metrics.replayed.inc(replayed)
        positions = {c: max(heads[c].offset, self._hub.sent(session, c)[1]) for c, _ in wanted}
        epochs = {c: heads[c].epoch for c, _ in wanted}
        session.send(frames.resumed(not gaps, frame.cid, gaps, positions, epochs))

    async def _recover(
        self, session: ClientSession, wanted: list[tuple[str, int]], known: dict[str, str], first: bool
    ) -> tuple[dict[str, Head], list[str], int]:
        """Replay each wanted channel from the client's offset, or name it as a gap: its epoch
        is not the client's, or history no longer reaches back to the offset. Returns the heads,
        the gaps, and how many messages were replayed."""
        history = self._parts.history
        heads = await history.heads([c for c, _ in wanted])
        gaps, replayed = [], 0
        for channel, offset in wanted:
            head = heads[channel]
            self._delivery.open(channel)
            if known.get(channel) == head.epoch and offset > head.offset and channel == p.user_channel(session.user):
                # The client saw offsets its store no longer has (it lost its newest writes):
                # they would be handed out again for other messages. A new epoch says so. (Only
                # for one's own channel: anyone could claim this of public or a room.)
                head = heads[channel] = Head(head.offset, await history.renew_epoch(channel, head.epoch))
            self._delivery.place(channel, head, spare=session)  # this one hears of it in resumed
            if known.get(channel, head.epoch) != head.epoch or offset > head.offset:
                gaps.append(channel)  # its offsets started over: the client's mean nothing here
                self._hub.rebase(session, channel, head.offset)
                continue
            floor, top = self._hub.sent(session, channel)
            if first:
                floor = top  # what went out live before it comes again, in its place
            done, lost = await self._replay(session, channel, offset, floor, top)
            replayed += done
            if lost:
                gaps.append(channel)
        return heads, gaps, replayed

    async def _replay(
        self, session: ClientSession, channel: str, offset: int, floor: int, top: int
    ) -> tuple[int, bool]:
        """Send ``session`` the stored messages of ``channel`` after ``offset`` that it was not
        sent live (those in ``(floor, top]``); how many, and whether history had lost some."""
        sent, lost, after = 0, False, offset
        while True:
            messages, first = await self._parts.history.after(channel, after, self.REPLAY_PAGE)
            if after == offset and first > offset + 1:
                lost = True  # trimmed before the client could read it
            for message in messages:
                if not floor < message["offset"] <= top:
                    session.send(OutFrame(message))
                    sent += 1
            if messages:
                self._hub.replayed(session, channel, offset, messages[-1]["offset"])
                after = messages[-1]["offset"]
            if len(messages) < self.REPLAY_PAGE:
                return sent, lost

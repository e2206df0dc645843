"""Live messages of each channel in offset order, with no hole and no copy: the step between the
bus and the hub.

Kafka keeps the order in which one server produced, but two servers' messages to one channel
can reach a third in either order, a retried publish brings a second copy, and a message that
was stored and never published (its server died between the two) leaves a hole. A ``Sequencer``
keeps, per channel that local sessions read, the next offset it may hand on:

- the next offset: handed on at once, then whatever waited behind it;
- a later one: held until the missing ones arrive, or for ``gap_wait_s``; then the missing ones
  are read from history (``fill``) and handed on in their place;
- an earlier one: a copy of what was handed on already, dropped.

An offset means something only with its epoch (see ``chatserver.history``): a message of a newer
epoch means the channel's storage lost data and its offsets started over. Nothing a session was
told still holds, so ``on_reset`` is called and the stream starts again from that message.
A storage that lost only its newest writes (a crash before they reached disk) hands out those
offsets again in the same epoch: an offset that comes back with another message's id says so,
and ``on_reuse`` is called, to give the channel a new epoch.

A channel's stream starts when a session begins to read it (``expect``, before the server
registers the session), is placed by the position that session was given (``start``), and ends
when no session here reads it any more (``forget``). Until placed it holds everything. Messages of
a channel without a stream go straight through. No I/O here but ``fill``; nothing blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Deliver = Callable[[], None]
#: ``fill(channel, after, upto)``: the stored messages with offsets in ``(after, upto]``, oldest
#: first, each as (offset, message id, delivery) (fewer when history lost some).
Fill = Callable[[str, int, int], Awaitable[list[tuple[int, str, Deliver]]]]

#: How many handed-on offsets a stream remembers the message ids of, to tell a copy from a reuse.
REMEMBERED = 256


class _Stream:
    __slots__ = ("epoch", "filling", "ids", "next", "timer", "waiting")

    def __init__(self, epoch: str, next_offset: int | None) -> None:
        self.epoch = epoch
        self.next = next_offset  # None: not placed yet, hold everything
        self.waiting: dict[int, tuple[str, Deliver]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.filling = False
        self.ids: dict[int, str] = {}  # the newest handed-on offsets -> their message ids

    def hand_on(self, message_id: str, deliver: Deliver) -> None:
        assert self.next is not None
        deliver()
        ids = self.ids
        ids[self.next] = message_id
        ids.pop(self.next - REMEMBERED, None)
        self.next += 1


class Sequencer:
    def __init__(
        self,
        fill: Fill,
        on_reset: Callable[[str], None],
        on_reuse: Callable[[str, str], None],
        gap_wait_s: float = 0.25,
        max_waiting: int = 10_000,
    ) -> None:
        self._fill = fill
        self._on_reset = on_reset
        self._on_reuse = on_reuse
        self._gap_wait_s = gap_wait_s
        self._max_waiting = max_waiting
        self._streams: dict[str, _Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0  # copies dropped (for tests and metrics)
        self.filled = 0  # messages read from history into a hole

    def expect(self, channel: str) -> None:
        """A session begins to read ``channel``: hold its messages until ``start`` places it."""
        if channel not in self._streams:
            self._streams[channel] = _Stream("", None)

    def start(self, channel: str, epoch: str, position: int) -> bool:
        """A session was told ``channel`` stands at ``position`` of ``epoch``: a stream not yet
        placed goes on from there; one of an older epoch starts over, and True says so (what
        the channel's other readers were told no longer holds: the caller tells them)."""
        stream = self._streams.get(channel)
        if stream is None or (stream.next is not None and stream.epoch and epoch > stream.epoch):
            if stream is not None and stream.timer is not None:
                stream.timer.cancel()
            self._streams[channel] = _Stream(epoch, position + 1)
            return stream is not None
        if not stream.epoch:
            stream.epoch = epoch
        if stream.next is None:
            stream.epoch, stream.next = epoch, position + 1
            for offset in [o for o in stream.waiting if o <= position]:
                del stream.waiting[offset]
            self._drain(channel, stream)
        return False

    def forget(self, channel: str) -> None:
        """No session here reads ``channel`` any more."""
        stream = self._streams.pop(channel, None)
        if stream is not None and stream.timer is not None:
            stream.timer.cancel()

    def abandon(self, channel: str) -> None:
        """The session that ``expect``ed ``channel`` could not be placed in it: forget the stream
        unless another session placed it."""
        stream = self._streams.get(channel)
        if stream is not None and stream.next is None:
            self.forget(channel)

    def offer(self, channel: str, epoch: str, offset: int, message_id: str, deliver: Deliver) -> None:
        """A live message of ``channel``: delivered now, later in order, or never (a copy)."""
        stream = self._streams.get(channel)
        if stream is None:
            deliver()
            return
        if epoch and stream.epoch and epoch != stream.epoch:
            if epoch < stream.epoch:  # a late message of the offsets before the reset
                self.dropped += 1
                return
            self._reset(channel, stream)
            stream = self._streams[channel] = _Stream(epoch, offset)
        elif epoch and not stream.epoch:
            stream.epoch = epoch
        if stream.next is None or offset > stream.next:
            if offset not in stream.waiting:
                stream.waiting[offset] = (message_id, deliver)
            if stream.next is not None:
                self._wait_for_gap(channel, stream)
            return
        if offset < stream.next:
            known = stream.ids.get(offset)
            if known is not None and message_id and known != message_id:
                log.warning(
                    "channel %s: offset %d came back with another message: its store lost writes", channel, offset
                )
                self._on_reuse(channel, stream.epoch)
                self.forget(channel)
                self._on_reset(channel)
                return
            self.dropped += 1
            return
        stream.hand_on(message_id, deliver)
        if stream.waiting:
            self._drain(channel, stream)

    def _drain(self, channel: str, stream: _Stream) -> None:
        assert stream.next is not None
        while stream.waiting:
            waiting = stream.waiting.pop(stream.next, None)
            if waiting is None:
                break
            stream.hand_on(*waiting)
        if stream.waiting:
            self._wait_for_gap(channel, stream)
        elif stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None

    def _wait_for_gap(self, channel: str, stream: _Stream) -> None:
        if len(stream.waiting) > self._max_waiting:
            log.warning(
                "channel %s: %d messages wait behind a hole; its readers must resume", channel, len(stream.waiting)
            )
            self._reset(channel, stream)
            del self._streams[channel]
            return
        if stream.timer is None and not stream.filling:
            loop = asyncio.get_running_loop()
            stream.timer = loop.call_later(self._gap_wait_s, self._gap_timed_out, channel, stream)

    def _gap_timed_out(self, channel: str, stream: _Stream) -> None:
        stream.timer = None
        if self._streams.get(channel) is not stream or not stream.waiting:
            return
        stream.filling = True
        task = asyncio.create_task(self._fill_gap(channel, stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill_gap(self, channel: str, stream: _Stream) -> None:
        """Read the hole from history. A hole history cannot fill (it lost those messages) is
        a reset: the channel's readers resume and are told what is missing."""
        assert stream.next is not None
        if not stream.waiting:  # the hole filled live between the timer and this task
            stream.filling = False
            return
        first_waiting = min(stream.waiting)
        try:
            found = await self._fill(channel, stream.next - 1, first_waiting - 1)
        except Exception as exc:  # noqa: BLE001 - the store is down: try again later
            log.warning(
                "channel %s: could not read a hole of offsets %d-%d: %s", channel, stream.next, first_waiting - 1, exc
            )
            found = None
        finally:
            stream.filling = False
        if self._streams.get(channel) is not stream or stream.next is None:
            return
        if found is None:
            self._wait_for_gap(channel, stream)
            return
        for offset, message_id, deliver in found:
            if offset == stream.next:
                self.filled += 1
                stream.hand_on(message_id, deliver)
        if stream.next < first_waiting and not stream.waiting.get(stream.next):
            log.warning(
                "channel %s: offsets %d-%d are not in history; its readers must resume",
                channel,
                stream.next,
                first_waiting - 1,
            )
            self._reset(channel, stream)
            del self._streams[channel]
            return
        self._drain(channel, stream)

    def _reset(self, channel: str, stream: _Stream) -> None:
        if stream.timer is not None:
            stream.timer.cancel()
        stream.waiting.clear()
        self._on_reset(channel)

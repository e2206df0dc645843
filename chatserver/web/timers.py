"""Timers every socket shares: one for the keepalive pings of all sockets, one for the token
deadlines of all sockets. A timer per socket would be an entry per connection in the loop's heap
of timers, and every other timer (the Kafka poll, 500 a second) would pay for that heap's depth
on each push and pop, in Python comparisons."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

#: Dropped entries a ``Deadlines`` heap may hold before it is rebuilt (when they are also most of it).
COMPACT_AFTER = 100


class Timed(Protocol):
    """What the shared timers need of a socket (``web.socket.ChatSocket``)."""

    @property
    def user(self) -> str: ...

    def keepalive(self) -> None:
        """Ping, or close when the previous ping is unanswered."""

    def abort(self) -> None:
        """Drop the connection without a close frame."""

    def expire(self) -> None:
        """Its token ended: close the session."""


class Keepalive:
    """Pings every open socket each ``interval_s`` from one timer, and closes a socket that did
    not answer the previous ping: dead peers go, and proxies see traffic. (Tornado's own
    keepalive is a Task per connection, about 1.5 KiB of memory each.)"""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._sockets: set[Timed] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, socket: Timed) -> None:
        self._sockets.add(socket)
        if self._timer is None and self.interval_s > 0:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._sweep)

    def discard(self, socket: Timed) -> None:
        self._sockets.discard(socket)

    def _sweep(self) -> None:
        self._timer = None
        failed: set[str] = set()
        for socket in list(self._sockets):
            try:
                socket.keepalive()
            except Exception as exc:  # one bad socket must not stop the pings of all the others
                kind = type(exc).__name__
                if kind not in failed:  # once per kind and sweep: thousands of sockets may fail alike
                    failed.add(kind)
                    log.exception("keepalive of %s failed; dropping it", socket.user)
                self._sockets.discard(socket)
                socket.abort()
        if self._sockets:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._sweep)


class Deadlines:
    """Calls ``expire()`` on each socket at its deadline (seconds since the epoch, ``time.time``),
    from one timer armed for the earliest of them. A socket has one deadline at a time: ``set``
    replaces it, ``discard`` drops it (and the reference to the socket at once). Entries whose
    socket was dropped wait in the heap until they come up, unless they become most of it: then
    the heap is rebuilt without them (as asyncio does with cancelled timers), so sessions that
    come and go within their tokens' lifetime cannot grow it without bound."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # (deadline, order, [socket]); the socket is None once its deadline was replaced or
        # dropped: the entry waits in the heap until its time, the socket does not.
        self._heap: list[tuple[float, int, list[Timed | None]]] = []
        self._holders: dict[Timed, list[Timed | None]] = {}
        self._order = itertools.count()
        self._stale = 0  # entries in the heap whose socket was dropped
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def set(self, socket: Timed, deadline: float) -> None:
        self.discard(socket)
        if math.isinf(deadline):
            return
        holder: list[Timed | None] = [socket]
        self._holders[socket] = holder
        heapq.heappush(self._heap, (deadline, next(self._order), holder))
        if deadline < self._armed_for:
            self._arm(deadline)

    def discard(self, socket: Timed) -> None:
        holder = self._holders.pop(socket, None)
        if holder is None:
            return
        holder[0] = None
        self._stale += 1
        if self._stale > COMPACT_AFTER and self._stale > len(self._heap) // 2:
            self._heap = [entry for entry in self._heap if entry[2][0] is not None]
            heapq.heapify(self._heap)
            self._stale = 0

    def __len__(self) -> int:
        return len(self._holders)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = deadline
        self._timer = asyncio.get_running_loop().call_later(max(0.0, deadline - self._clock()), self._fire)

    def _fire(self) -> None:
        self._timer, self._armed_for = None, math.inf
        now, heap = self._clock(), self._heap
        while heap and (heap[0][0] <= now or heap[0][2][0] is None):
            _, _, (socket,) = heapq.heappop(heap)
            if socket is None:
                self._stale -= 1  # replaced or dropped
                continue
            del self._holders[socket]
            try:
                socket.expire()
            except Exception:  # one bad socket must not stop the others' deadlines
                log.exception("closing the expired session of %s failed", socket.user)
        if heap:
            self._arm(heap[0][0])

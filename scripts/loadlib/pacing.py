"""A worker's sends in one step: one timer (a pulse) for all its senders, on an absolute schedule.

Message k of a worker is due at ``start + (k + offset) / rate`` (``time.perf_counter``), so the
pace neither bursts nor drifts; a worker that falls behind catches up and reports how late its
sends were (``lag``). Each pulse first reads what arrived (``Poller.poll``: the arrival times are
the kernel's, so reading on pulses changes no latency), then sends every message due, each
stamped with ``time.time_ns()`` as it goes out. The next pulse is at the next message's due
time, but at least ``PULSE_MIN_S`` and at most ``PULSE_MAX_S`` after this one: above 500
messages per second (per worker) a pulse sends those that fell due since the last one, each
less than 2 ms late (counted in the send lag; asyncio's timers, which paced the sends before,
have a granularity of 1 ms). After the window, pulses every ``PULSE_MAX_S`` read what is still
arriving until every send is answered and every delivery is in, or the grace period ends.

Why pulses: on a machine shared with the cluster, a wakeup of the generator costs more CPU than
the frames it handles (the code and data it touches are cold after every sleep: a message's
work took 14 µs warm and 120 µs after the caches were evicted), and asyncio woke for every ack
and every delivery, two or three times per message. Pulses wake once per message at most, and
once for several above 500/s. Between pulses the worker sleeps in ``time.sleep``, not in
asyncio's loop: one turn of that loop after a sleep cost 160 µs of CPU here, a bare sleep 30.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .client import ConnectionClosed
from .link import Poller
from .scenarios import Script
from .stats import Tally
from .users import Conn

PULSE_MIN_S = 0.002
PULSE_MAX_S = 0.01
BURST = 50  # sends per pulse at most when far behind schedule: reads come between


class Pacer:
    def __init__(
        self,
        senders: list[Conn],
        script: Script,
        tally: Tally,
        poller: Poller,
        command: dict[str, Any],
        complete: Callable[[], bool],
    ) -> None:
        self.senders = senders
        self.script = script
        self.tally = tally
        self.poller = poller
        self.complete = complete
        self.step: int = command["step"]
        self.rate: float = command["rate"]
        self.offset: float = command["offset"]
        self.start: float = time.perf_counter() + (command["start"] - time.time())
        self.t_measure: float = self.start + command["warmup"]
        self.t_end: float = self.t_measure + command["duration"]
        self.grace: float = command["grace"]
        self.deadline = 0.0  # of the grace period, once the window is over
        self.k = 0  # the next message's number
        self.sending = self.rate > 0 and bool(senders)

    def run(self, tick: Callable[[], None], tick_s: float) -> None:
        """The step, driven from this thread: sleep until a pulse is due, pulse, and call
        ``tick`` every ``tick_s``. asyncio does not run meanwhile: a wakeup of its loop cost four
        times a bare sleep here (its code, cold after each sleep)."""
        self.poller.disarm()
        try:
            next_tick = time.perf_counter() + tick_s
            wake = self.first()
            while True:
                now = time.perf_counter()
                if now >= next_tick:
                    tick()
                    next_tick = now + tick_s
                if wake > now:
                    time.sleep(min(wake, next_tick) - now)
                    if time.perf_counter() < wake:
                        continue
                found = self.pulse()
                if found is None:
                    return
                wake = found
        finally:
            self.done()

    async def run_async(self) -> None:
        """The step, driven by asyncio's loop (connections on asyncio's transports need it)."""
        self.poller.disarm()
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def pulse() -> None:
            wake = self.pulse()
            if wake is None:
                finished.set_result(None)
            else:
                loop.call_later(wake - time.perf_counter(), pulse)

        try:
            loop.call_later(self.first() - time.perf_counter(), pulse)
            await finished
        finally:
            self.done()

    def first(self) -> float:
        return self.start + self.offset / self.rate if self.sending else self.t_end

    def done(self) -> None:
        self.poller.arm()
        for conn in self.senders:  # the next step starts its sequence numbers again
            conn.next_seq = 0

    def pulse(self) -> float | None:
        """Read what arrived and send what is due; when to pulse next (perf_counter), or None
        when the step is over."""
        now = time.perf_counter()
        self.poller.poll()
        if self.sending:
            due = self.send(now)
            if due is not None:
                return min(max(due, now + PULSE_MIN_S), now + PULSE_MAX_S) if due > now else now
            self.sending = False
        if not self.deadline:
            self.deadline = max(now, self.t_end) + self.grace
        if now >= self.deadline or (now >= self.t_end and self.complete()):
            return None
        return now + min(self.t_end - now if now < self.t_end else PULSE_MAX_S, PULSE_MAX_S)

    def send(self, now: float) -> float | None:
        """Send every message due by ``now`` (at most ``BURST``); the next one's due time, or
        None when the window has no more."""
        senders, n = self.senders, len(self.senders)
        start, rate, offset, t_measure, t_end = self.start, self.rate, self.offset, self.t_measure, self.t_end
        step, message, tally = self.step, self.script.message, self.tally
        stats = tally.stats
        k = self.k
        sent = 0
        while True:
            due: float = start + (k + offset) / rate
            if due >= t_end:
                self.k = k
                return None
            if due > now:
                break
            if sent == BURST:  # far behind schedule: read, then go on at once
                break
            sent += 1
            conn = senders[k % n]
            k += 1
            measured = due >= t_measure
            seq = conn.next_seq
            conn.next_seq = seq + 1
            link = conn.link
            if link is None or not conn.connected:
                tally.error("send_failed")
                continue
            t_ns = time.time_ns()
            conn.pending[seq] = (t_ns, measured)
            try:
                link.send(message(conn.gid, conn.peer, step, seq, measured, t_ns))
            except ConnectionClosed:
                del conn.pending[seq]
                tally.error("send_failed")
                continue
            tally.c_sent += 1
            if measured:
                stats.sent += 1
                stats.lag.append((now - due) * 1000)
            else:
                stats.sent_warmup += 1
        self.k = k
        return due

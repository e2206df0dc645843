"""Every limit of a server, built in one place (``Limits.from_settings``): a token bucket per
connection (``Flows``), a per-user limit across the cluster, the count of connections, and the
backlog that sheds load.

The per-connection bucket bounds every frame a client sends (bad ones too). The per-user
limit bounds the messages one user sends from all sessions on all servers together, with a
one-second window in Redis. A limit of 0 turns that limit off (benchmarks, trusted clients).
The backlog refuses new messages while an accepted one waits too long for its ack.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import redis.asyncio as aioredis

from chatserver.config import Settings
from chatserver.names import Names
from chatserver.redisbatch import RedisBatch
from chatserver.redisroute import Client

Clock = Callable[[], float]


class LimitError(Exception):
    """The limit store could not be reached."""


class TokenBucket:
    """``rate`` events per second on average, bursts of up to ``burst``; ``rate`` 0 is unlimited."""

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._clock = clock
        self._tokens = self._burst
        self._stamp = clock()

    def take(self) -> bool:
        if self._rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class UserLimiter(Protocol):
    async def allow(self, user: str) -> bool:
        """True while ``user`` has sent fewer than the limit this second, cluster-wide."""
        ...


# KEYS: a user's counter of this second. Answers the count, this message included.
_COUNT_LUA = """
local count = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], 2000)
return count
"""


class RedisUserLimiter:
    """A one-second window per user in Redis. The two commands of a check join the pipeline of
    the loop turn (``batch``, shared with the other Redis parts): under load, one round trip for
    many senders' checks."""

    def __init__(
        self,
        client: Client,
        names: Names,
        per_second: int,
        clock: Clock = time.time,
        batch: RedisBatch | None = None,
    ) -> None:
        self._names = names
        self._limit = per_second
        self._clock = clock
        self._batch = batch or RedisBatch(client)

    async def allow(self, user: str) -> bool:
        if self._limit <= 0:
            return True
        key = self._names.user_rate(user, int(self._clock()))
        try:
            count = await self._batch.group("user_rate", _COUNT_LUA, [key], [])
        except aioredis.RedisError as exc:
            raise LimitError(f"redis: {exc}") from exc
        return int(count) <= self._limit


class MemoryUserLimiter:
    def __init__(self, per_second: int, clock: Clock = time.time) -> None:
        self._limit = per_second
        self._clock = clock
        self._window = -1
        self._counts: dict[str, int] = {}

    async def allow(self, user: str) -> bool:
        if self._limit <= 0:
            return True
        window = int(self._clock())
        if window != self._window:
            self._window, self._counts = window, {}
        self._counts[user] = self._counts.get(user, 0) + 1
        return self._counts[user] <= self._limit


class ConnectionCounter:
    """Open connections on this server, by user and by client address, against two limits."""

    def __init__(self, max_per_user: int, max_per_ip: int) -> None:
        self._max_user = max_per_user
        self._max_ip = max_per_ip
        self._users: dict[str, int] = {}
        self._ips: dict[str, int] = {}

    def refusal(self, user: str, ip: str) -> str | None:
        """Why a new connection of ``user`` from ``ip`` must be refused, or None."""
        if self._users.get(user, 0) >= self._max_user:
            return f"too many connections for {user} on this server (limit {self._max_user}): close some"
        if self._ips.get(ip, 0) >= self._max_ip:
            return f"too many connections from your address (limit {self._max_ip})"
        return None

    def opened(self, user: str, ip: str) -> None:
        self._users[user] = self._users.get(user, 0) + 1
        self._ips[ip] = self._ips.get(ip, 0) + 1

    def closed(self, user: str, ip: str) -> None:
        for table, key in ((self._users, user), (self._ips, ip)):
            left = table.get(key, 0) - 1
            if left > 0:
                table[key] = left
            else:
                table.pop(key, None)


class Ticket:
    """One accepted message until it is answered (acked or refused)."""

    __slots__ = ("answered", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.answered = False

    def answer(self, *_: object) -> None:
        """Mark it answered (usable as a future's done callback)."""
        self.answered = True


class Backlog:
    """The messages this server accepted and has not answered yet, oldest first.

    When Kafka or Redis answers slowly (a stalled broker, a slow disk), acks fall behind and
    the oldest unanswered message ages. ``overloaded()`` is true while it is older
    than ``shed_after_s`` (0: never), and the router then refuses new messages at once instead
    of queueing them behind the backlog: the sender gets a clear, retryable ``rate_limited``
    in milliseconds rather than an ack seconds late (or none before its own timeout), and what
    was accepted drains in bounded time. (A process short of CPU is another matter: a
    connection's frames are handled one at a time, so its excess waits in the socket, unseen
    here; the rate limits above bound that.) Tickets answered out of order stay until those
    before them are answered, at most the bus's send timeout.
    """

    def __init__(self, shed_after_s: float, clock: Clock = time.monotonic) -> None:
        self._shed_after_s = shed_after_s
        self._clock = clock
        self._open: collections.deque[Ticket] = collections.deque()

    def open(self) -> Ticket:
        self._prune()  # here too: with shedding off, nothing else may ever look
        ticket = Ticket(self._clock())
        self._open.append(ticket)
        return ticket

    def held(self) -> int:
        """Tickets held: the unanswered ones, and answered ones behind an older unanswered one.
        (A method, not ``__len__``: an empty backlog must not be falsy where one is optional.)"""
        return len(self._open)

    def oldest_age_s(self) -> float:
        """Seconds since the oldest unanswered message was accepted (0 with none)."""
        self._prune()
        return self._clock() - self._open[0].since if self._open else 0.0

    def _prune(self) -> None:
        backlog = self._open
        while backlog and backlog[0].answered:  # answered ones leave from the front
            backlog.popleft()

    def overloaded(self) -> bool:
        return self._shed_after_s > 0 and self.oldest_age_s() > self._shed_after_s


class Verdict(Enum):
    """What to do with one frame of a connection: handle it, refuse it, or refuse it and close."""

    ACCEPT = 0
    REFUSE = 1
    CLOSE = 2


class _Flow:
    """One connection's rate: its bucket, and its refusals (less one per accepted frame)."""

    __slots__ = ("bucket", "strikes")

    def __init__(self, rate: float, burst: float) -> None:
        self.bucket = TokenBucket(rate, burst)
        self.strikes = 0


class Flows:
    """The frames of each connection: ``rate_per_s`` on average, bursts of ``burst``, and a
    connection that keeps flooding (``strikes`` net refusals: an accepted frame forgives one, so a
    steady flood still adds up) is to be closed."""

    def __init__(self, rate_per_s: float = 0.0, burst: int = 100, strikes: int = 200) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._strikes = strikes
        self._flows: dict[str, _Flow] = {}

    def open(self, connection: str) -> None:
        self._flows[connection] = _Flow(self._rate, self._burst)

    def close(self, connection: str) -> None:
        self._flows.pop(connection, None)

    def admit(self, connection: str) -> Verdict:
        flow = self._flows.get(connection)
        if flow is None:
            return Verdict.ACCEPT
        if not flow.bucket.take():
            flow.strikes += 1
            return Verdict.CLOSE if flow.strikes >= self._strikes else Verdict.REFUSE
        if flow.strikes:
            flow.strikes -= 1
        return Verdict.ACCEPT


@dataclass
class Limits:
    """How much one connection and one user may send, how many connections a user and an
    address may open, and when the server sheds load."""

    flows: Flows = field(default_factory=Flows)
    user: UserLimiter | None = None
    backlog: Backlog = field(default_factory=lambda: Backlog(0))
    connections: ConnectionCounter = field(default_factory=lambda: ConnectionCounter(1 << 30, 1 << 30))

    @classmethod
    def from_settings(cls, settings: Settings, user: UserLimiter | None) -> Limits:
        """Every limit, from its ``CHAT_*`` setting; ``user``: the per-user limiter of the
        server's store (Redis, or memory), whose rate is ``CHAT_USER_RATE_PER_S``."""
        return cls(
            flows=Flows(settings.conn_rate_per_s, settings.conn_burst, settings.flood_strikes),
            user=user,
            backlog=Backlog(settings.shed_after_ms / 1000),
            connections=ConnectionCounter(settings.max_sessions_per_user, settings.max_conns_per_ip),
        )

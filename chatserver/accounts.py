"""Built-in accounts for a standalone deployment (``CHAT_ACCOUNTS=1``; off by default).

Sign up with a name and a password, sign in with both: the answer is the same token that dev login
or the operator's own application issues. Passwords are hashed with Argon2id (``argon2-cffi``), in
a worker thread so that the IOLoop never waits for the hash; only the hash is stored (Redis, or
memory for the single-process backend) and nothing about a password is ever logged. Attempts are
limited per client address and per account across the cluster (counted where the accounts are:
Redis), and a wrong password and an unknown name get the same answer after the same work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import Enum
from typing import Protocol

import redis.asyncio as aioredis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from chatserver.names import Names
from chatserver.redisroute import Client

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024  # a hash of megabytes is work an attacker should not get for free
ATTEMPTS_PER_MINUTE = 10  # sign-ins and sign-ups, per client address and per account, cluster-wide
ATTEMPT_WINDOW_S = 60


class AccountsError(Exception):
    """The account store could not be reached."""


class AccountStore(Protocol):
    async def create(self, user: str, password_hash: str) -> bool:
        """Store a new account; False when the name is taken."""
        ...

    async def password_hash(self, user: str) -> str | None:
        """The stored hash of ``user``'s password, or None when there is no such account."""
        ...

    async def attempt(self, who: str) -> int:
        """Count one more attempt of ``who``: the attempts since the first of its window (which
        lasts ``ATTEMPT_WINDOW_S`` from that first one), this one included."""
        ...


class RedisAccountStore:
    def __init__(self, client: Client, names: Names) -> None:
        self._redis = client
        self._names = names

    async def create(self, user: str, password_hash: str) -> bool:
        try:
            return bool(await self._redis.set(self._names.account(user), password_hash, nx=True))
        except aioredis.RedisError as exc:
            raise AccountsError(f"redis: {exc}") from exc

    async def password_hash(self, user: str) -> str | None:
        try:
            value = await self._redis.get(self._names.account(user))
        except aioredis.RedisError as exc:
            raise AccountsError(f"redis: {exc}") from exc
        return None if value is None else value.decode() if isinstance(value, bytes) else str(value)

    async def attempt(self, who: str) -> int:
        key = self._names.attempts(who)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:  # one key: fine on a cluster
                pipe.incr(key)
                pipe.expire(key, ATTEMPT_WINDOW_S, nx=True)  # from the first attempt on (Redis 7)
                count, _ = await pipe.execute()
        except aioredis.RedisError as exc:
            raise AccountsError(f"redis: {exc}") from exc
        return int(count)


class MemoryAccountStore:
    """Accounts in this process: the single-node default and the test fake."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._hashes: dict[str, str] = {}
        self._clock = clock
        self._attempts: dict[str, tuple[int, float]] = {}  # who -> (count, end of its window)

    async def create(self, user: str, password_hash: str) -> bool:
        if user in self._hashes:
            return False
        self._hashes[user] = password_hash
        return True

    async def password_hash(self, user: str) -> str | None:
        return self._hashes.get(user)

    async def attempt(self, who: str) -> int:
        now = self._clock()
        if len(self._attempts) > 100_000:  # forget ended windows rather than grow without bound
            self._attempts = {k: v for k, v in self._attempts.items() if v[1] > now}
        count, end = self._attempts.get(who, (0, 0.0))
        if end <= now:
            count, end = 0, now + ATTEMPT_WINDOW_S
        self._attempts[who] = (count + 1, end)
        return count + 1


class Outcome(Enum):
    OK = "ok"
    TAKEN = "taken"  # sign-up: the name has an account
    WEAK = "weak"  # sign-up: the password is too short (or too long)
    WRONG = "wrong"  # sign-in: wrong password or no such account (one answer for both)
    LIMITED = "limited"  # too many attempts from this address or for this account


class Accounts:
    def __init__(self, store: AccountStore, hasher: PasswordHasher | None = None) -> None:
        self._store = store
        self._hasher = hasher or PasswordHasher()  # Argon2id with the library's current defaults
        self._dummy_hash = self._hasher.hash("no such account: same work as a real one")

    async def sign_up(self, user: str, password: str, address: str) -> Outcome:
        if not await self._allowed(address, user):
            return Outcome.LIMITED
        if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
            return Outcome.WEAK
        password_hash = await asyncio.get_running_loop().run_in_executor(None, self._hasher.hash, password)
        return Outcome.OK if await self._store.create(user, password_hash) else Outcome.TAKEN

    async def sign_in(self, user: str, password: str, address: str) -> Outcome:
        if not await self._allowed(address, user):
            return Outcome.LIMITED
        stored = await self._store.password_hash(user)
        good = await asyncio.get_running_loop().run_in_executor(
            None, self._verify, stored or self._dummy_hash, password[:MAX_PASSWORD_CHARS]
        )
        return Outcome.OK if good and stored is not None else Outcome.WRONG

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def _allowed(self, address: str, user: str) -> bool:
        """Counts one attempt for the client address and one for the account, in the store (all
        servers together): each may make ``ATTEMPTS_PER_MINUTE`` in a minute from its first."""
        counts = [await self._store.attempt(who) for who in (f"ip:{address}", f"user:{user}")]
        return all(count <= ATTEMPTS_PER_MINUTE for count in counts)

"""Built-in accounts for a standalone deployment (``CHAT_ACCOUNTS=1``; off by default).

Sign up with a name and a password, sign in with both: the answer is the same token that dev login
or the operator's own application issues. Passwords are hashed with Argon2id (``argon2-cffi``), in
a worker thread so that the IOLoop never waits for the hash; only the hash is stored (Redis, or
memory for the single-process backend) and nothing about a password is ever logged. Attempts are
limited per client address and per account on this server, and a wrong password and an unknown
name get the same answer after the same work.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Protocol

import redis.asyncio as aioredis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from chatserver.limits import TokenBucket
from chatserver.names import Names

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024  # a hash of megabytes is work an attacker should not get for free
ATTEMPTS_PER_MINUTE = 10  # sign-ins and sign-ups, per client address and per account


class AccountsError(Exception):
    """The account store could not be reached."""


class AccountStore(Protocol):
    async def create(self, user: str, password_hash: str) -> bool:
        """Store a new account; False when the name is taken."""
        ...

    async def password_hash(self, user: str) -> str | None:
        """The stored hash of ``user``'s password, or None when there is no such account."""
        ...


class RedisAccountStore:
    def __init__(self, client: aioredis.Redis, names: Names) -> None:
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


class MemoryAccountStore:
    """Accounts in this process: the single-node default and the test fake."""

    def __init__(self) -> None:
        self._hashes: dict[str, str] = {}

    async def create(self, user: str, password_hash: str) -> bool:
        if user in self._hashes:
            return False
        self._hashes[user] = password_hash
        return True

    async def password_hash(self, user: str) -> str | None:
        return self._hashes.get(user)


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
        self._buckets: dict[str, TokenBucket] = {}

    async def sign_up(self, user: str, password: str, address: str) -> Outcome:
        if not self._allowed(address, user):
            return Outcome.LIMITED
        if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
            return Outcome.WEAK
        password_hash = await asyncio.get_running_loop().run_in_executor(None, self._hasher.hash, password)
        return Outcome.OK if await self._store.create(user, password_hash) else Outcome.TAKEN

    async def sign_in(self, user: str, password: str, address: str) -> Outcome:
        if not self._allowed(address, user):
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

    def _allowed(self, address: str, user: str) -> bool:
        """One attempt from each bucket: the client address's and the account's."""
        if len(self._buckets) > 100_000:  # forget idle buckets rather than grow without bound
            self._buckets.clear()
        allowed = True
        for key in (f"ip:{address}", f"user:{user}"):
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(ATTEMPTS_PER_MINUTE / 60, ATTEMPTS_PER_MINUTE)
            allowed = bucket.take() and allowed
        return allowed

"""Tokens: HS256 JWTs whose ``sub`` is the username (docs/PROTOCOL.md).

Any application that has its own users can issue the same tokens with the same secret.
Only HS256 is accepted (no ``none``, no algorithm confusion); ``exp`` and ``sub`` are
required; clock skew is tolerated up to ``leeway_s``, at the handshake and for a session
that lives on the token (it ends at ``Grant.deadline`` unless a new token renews it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from chatserver.protocol import USERNAME_RE

ALGORITHM = "HS256"


class AuthError(Exception):
    """The token is missing, forged, expired or names no valid user."""


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: ``user``, until ``exp`` (the token's, seconds since the epoch);
    ``deadline`` is ``exp`` plus the clock leeway, when a session on it ends."""

    user: str
    exp: int
    deadline: float


class TokenAuthority:
    def __init__(self, secret: str, ttl_s: int, leeway_s: float = 0.0) -> None:
        self._secret = secret
        self._ttl_s = ttl_s
        self._leeway_s = leeway_s

    def issue(self, username: str, now: float | None = None) -> str:
        """A token for ``username``, valid for the configured TTL."""
        if not USERNAME_RE.fullmatch(username):
            raise ValueError(f"invalid username {username!r}")
        issued = int(time.time() if now is None else now)
        claims = {"sub": username, "iat": issued, "exp": issued + self._ttl_s}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> str:
        """The username a valid token names; ``AuthError`` otherwise."""
        return self.check(token).user

    def check(self, token: str) -> Grant:
        """What a valid token allows; ``AuthError`` otherwise."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "sub"]},
                leeway=self._leeway_s,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired: sign in again") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        sub, exp = claims.get("sub"), claims.get("exp")
        if not isinstance(sub, str) or not USERNAME_RE.fullmatch(sub):
            raise AuthError("invalid token: 'sub' is not a valid username")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthError("invalid token: 'exp' is not a number")
        return Grant(sub, int(exp), exp + self._leeway_s)

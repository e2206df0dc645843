"""Signing in: ``POST /api/login`` (dev login, or a built-in account) and ``POST /api/signup``."""

from __future__ import annotations

import json
from collections.abc import Awaitable

from chatserver.accounts import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, Accounts, AccountsError, Outcome
from chatserver.auth import TokenAuthority
from chatserver.protocol import USERNAME_RE
from chatserver.web.endpoints import JsonHandler, TrustedProxies, client_address

#: What an account attempt that failed answers: status, error code, message.
_REFUSALS: dict[Outcome, tuple[int, str, str]] = {
    Outcome.LIMITED: (429, "rate_limited", "too many attempts: wait a minute"),
    Outcome.WRONG: (401, "bad_credentials", "wrong name or password"),
    Outcome.WEAK: (400, "weak_password", f"a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"),
    Outcome.TAKEN: (409, "username_taken", "{username} is taken: choose another name"),
}


class LoginHandler(JsonHandler):
    """``POST /api/login``: a name alone (dev login, on in development mode) or, with built-in
    accounts on, a name and its password. ``POST /api/signup`` (accounts): a new account."""

    def initialize(
        self, auth: TokenAuthority, dev_login: bool, accounts: Accounts | None, trusted_proxies: TrustedProxies
    ) -> None:
        self.auth = auth
        self.dev_login = dev_login
        self.accounts = accounts
        self.trusted_proxies = trusted_proxies

    def _credentials(self, want_password: bool) -> tuple[str, str | None] | None:
        """(username, password) from the JSON body; None when it answered with an error."""
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            self.fail(400, "bad_request", 'body must be JSON like {"username": "alice", "password": "..."}')
            return None
        username = body.get("username") if isinstance(body, dict) else None
        if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
            self.fail(400, "bad_username", "username must be 1-32 of A-Z a-z 0-9 _ . -")
            return None
        password = body.get("password")
        if password is not None and not isinstance(password, str):
            self.fail(400, "bad_request", "password must be a string")
            return None
        if want_password and password is None:
            self.fail(404, "not_found", "sign-in by name alone is off on this server: sign in with your password")
            return None
        return username, password

    def _signed_in(self, username: str, status: int = 200) -> None:
        self.set_status(status)
        self.finish({"token": self.auth.issue(username), "username": username})

    async def post(self) -> None:
        credentials = self._credentials(want_password=self.accounts is not None and not self.dev_login)
        if credentials is None:
            return
        username, password = credentials
        if password is None or self.accounts is None:  # a name alone: dev login
            if not self.dev_login:
                return self.fail(404, "not_found", "sign-in by name alone is off on this server")
            return self._signed_in(username)
        await self._answer(self.accounts.sign_in(username, password, self._address()), username, 200)

    async def _answer(self, attempt: Awaitable[Outcome], username: str, status: int) -> None:
        """A token for ``username`` with ``status``, or the error that the outcome names."""
        try:
            outcome = await attempt
        except AccountsError as exc:
            return self.fail(503, "not_ready", f"the account store does not answer: {exc}; retry")
        if outcome is Outcome.OK:
            return self._signed_in(username, status)
        status, code, message = _REFUSALS[outcome]
        self.fail(status, code, message.format(username=username))

    def _address(self) -> str:
        return client_address(self.request, self.trusted_proxies)


class SignupHandler(LoginHandler):
    async def post(self) -> None:
        credentials = self._credentials(want_password=True)
        if credentials is None or self.accounts is None:
            return
        username, password = credentials
        assert password is not None
        await self._answer(self.accounts.sign_up(username, password, self._address()), username, 201)

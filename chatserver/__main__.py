"""``python -m chatserver``: read settings, serve, stop gracefully on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from chatserver import logs
from chatserver.app import build_node, make_app
from chatserver.config import DEV_SECRET, ConfigError, Settings

log = logging.getLogger("chatserver")


class StartError(Exception):
    """The server cannot start for a reason the operator can fix; the message says how."""


async def serve(settings: Settings) -> None:
    # 1. wire the parts and start consuming (readiness follows on its own);
    node = build_node(settings)
    await node.start()
    # 2. listen; /healthz answers at once, /readyz once Kafka and Redis do;
    # No xheaders: the socket handler trusts X-Real-IP only from CHAT_TRUSTED_PROXIES.
    try:
        server = make_app(node).listen(settings.port, settings.host)
    except OSError as exc:
        await node.stop()
        raise StartError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; "
            "set PORT (or CHAT_HOST) to a free one"
        ) from None
    log.info("%s listening on http://%s:%d", settings.server_id, settings.host, settings.port)
    # 3. wait for a signal, then drain: sessions are told to reconnect elsewhere.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("%s stopping: draining sessions", settings.server_id)
    server.stop()
    await node.stop()
    log.info("%s stopped", settings.server_id)


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"chatserver: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format, settings.server_id)
    if settings.dev and settings.secret == DEV_SECRET:
        log.warning("CHAT_DEV=1 without CHAT_SECRET: tokens use a public development secret")
    try:
        asyncio.run(serve(settings))
    except StartError as exc:
        print(f"chatserver: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

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


async def serve(settings: Settings) -> None:
    # 1. wire the parts and start consuming (readiness follows on its own);
    node = build_node(settings)
    await node.start()
    # 2. listen; /healthz answers at once, /readyz once Kafka and Redis do;
    # No xheaders: the socket handler trusts X-Real-IP only from CHAT_TRUSTED_PROXIES.
    server = make_app(node).listen(settings.port, settings.host)
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
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

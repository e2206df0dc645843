"""The transport layer: HTTP and WebSocket handlers.

Each handler receives its collaborators through ``initialize(**kwargs)`` from the URL spec
(``app.make_app``). What a frame means is the router's business; the handlers authenticate,
pick the codec, and pass frames in and out.

- ``endpoints``: the JSON error shape, the page, health, readiness, metrics and the admin API.
- ``signin``: ``POST /api/login`` and ``/api/signup``.
- ``socket``: ``/ws``, one ``ChatSocket`` per client connection.
- ``outbox``: one write per socket per loop turn.
- ``timers``: one keepalive timer and one token-deadline timer for all sockets.
"""

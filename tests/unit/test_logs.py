"""JSON logs: one object a line, with the server id and any extra fields."""

from __future__ import annotations

import json
import logging

from chatserver.logs import JsonFormatter


def test_a_json_log_line_is_one_object_with_server_and_extras() -> None:
    record = logging.makeLogRecord(
        {"name": "chatserver.router", "levelno": logging.WARNING, "levelname": "WARNING",
         "msg": "dropped %s", "args": ("ann",), "user": "ann", "message_id": "m1"}
    )  # fmt: skip
    line = JsonFormatter("ws-3").format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert (entry["level"], entry["server"], entry["logger"], entry["msg"]) == (
        "warning",
        "ws-3",
        "chatserver.router",
        "dropped ann",
    )
    assert (entry["user"], entry["message_id"]) == ("ann", "m1")
    assert entry["ts"].endswith("Z")

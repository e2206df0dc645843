"""How frames travel: the JSON and msgpack codecs, and ``OutFrame``, a server frame encoded at
most once per codec however many sockets it is written to.

Pure code: no sockets, no I/O libraries. A codec's ``loads`` raises ``ProtocolError``
(``bad_frame``) for bytes that are not a frame of its kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import orjson

from chatserver.protocol import BAD_FRAME, MAX_FRAME_BYTES, ProtocolError


class Codec:
    """How frames travel on one WebSocket: JSON text (default) or the ``msgpack`` subprotocol."""

    name: str = "json"
    binary: bool = False

    def loads(self, raw: str | bytes) -> Any:
        if isinstance(raw, bytes):
            raise ProtocolError(BAD_FRAME, "binary frames need the 'msgpack' subprotocol")
        try:
            return orjson.loads(raw)
        except (ValueError, RecursionError):
            raise ProtocolError(BAD_FRAME, "frame is not valid JSON") from None

    def dumps(self, frame: dict[str, Any]) -> bytes:
        return orjson.dumps(frame)  # compact UTF-8, as json.dumps(ensure_ascii=False) but faster


class MsgpackCodec(Codec):
    """Binary frames holding the same maps as the JSON ones, decoded with strict limits."""

    name = "msgpack"
    binary = True

    def loads(self, raw: str | bytes) -> Any:
        if isinstance(raw, str):
            raise ProtocolError(BAD_FRAME, "this connection speaks msgpack: send binary frames")
        try:
            return msgpack.unpackb(
                raw,
                raw=False,
                strict_map_key=True,
                max_str_len=MAX_FRAME_BYTES,
                max_bin_len=0,
                max_ext_len=0,
                max_array_len=1024,
                max_map_len=256,
            )
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError):
            raise ProtocolError(BAD_FRAME, "frame is not valid msgpack") from None

    def dumps(self, frame: dict[str, Any]) -> bytes:
        data: bytes = msgpack.packb(frame, use_bin_type=True)
        return data


JSON: Final = Codec()
MSGPACK: Final = MsgpackCodec()
CODECS: Final = {"json": JSON, "msgpack": MSGPACK}


@dataclass(slots=True)
class OutFrame:
    """A server frame, encoded lazily and at most once per codec."""

    body: dict[str, Any]
    _encoded: dict[str, bytes] = field(default_factory=dict)

    def encoded(self, codec: Codec) -> bytes:
        data = self._encoded.get(codec.name)
        if data is None:
            data = self._encoded[codec.name] = codec.dumps(self.body)
        return data

    def framed(self, codec: Codec, frame: Callable[[bytes, bool], bytes]) -> bytes:
        """``frame(encoded, binary)``, the bytes on the wire, also made once per codec: a frame
        written to a thousand sockets is encoded and framed once."""
        key = "wire:" + codec.name
        data = self._encoded.get(key)
        if data is None:
            data = self._encoded[key] = frame(self.encoded(codec), codec.binary)
        return data

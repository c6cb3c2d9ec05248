"""A grpclib codec that passes raw bytes through: the floor for any message encoding."""

from __future__ import annotations

from typing import Any

from grpclib.encoding.base import CodecBase


class RawCodec(CodecBase):
    """Messages are `bytes` on both sides; no serialisation at all."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        if not isinstance(message, bytes | bytearray | memoryview):
            raise TypeError(f"RawCodec encodes bytes, not {type(message).__name__}")
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return bytes(data)

"""A cheap ``repr`` for HTTP/2 DATA frames.

h2 (under grpclib) formats every frame it receives with ``repr()`` for a trace log that is
normally off, and hyperframe's ``DataFrame`` has no repr of its own: the generic one
re-serializes the frame body and hex-encodes all of it, then keeps 20 characters. That is
about 95 ms of CPU per 64 MiB received on a 2-core VM, on the client and the server alike
(py-spy, `make bench` payloads section). This replaces it with one that names the size.
It only changes the text of a DATA frame's repr, and only while hyperframe still uses the
generic fallback.
"""

from __future__ import annotations

from hyperframe.frame import DataFrame, Frame


def _data_frame_body_repr(self: DataFrame) -> str:
    return f"<{len(self.data)} bytes of data, padding {self.pad_length}>"


def use_cheap_data_frame_repr() -> None:
    if DataFrame._body_repr is Frame._body_repr:
        setattr(DataFrame, "_body_repr", _data_frame_body_repr)  # noqa: B010 (mypy: method)

"""The wire contract: what the SDK, the server and the worker agree on, byte for byte.

Public to the project (the server and the worker import it; applications need not). It
runs in every process, so importing it stays light: no grpclib and no betterproto here
(``pb`` and ``h2_repr``, which need them, are imported by name only where used).

- ``constants``: protocol version, method paths, metadata keys, call kinds.
- ``codec``: the value codec, Python values <-> bytes, with its decode ``Limits``.
- ``messages``: the hand-encoded hot-path protobuf messages (``CallRequestWire`` ...).
- ``trailer``: the error trailer, both halves (the server packs it, the SDK unpacks it).
- ``text``: ``clip``, the one cut every error text goes through.
- ``pb``: the betterproto messages generated from ``protos/`` (off the hot path).
- ``h2_repr``: the size-only repr of h2 DATA frames that both transports install.

docs/wire.md specifies all of it; docs/architecture.md shows where each piece is used.
"""

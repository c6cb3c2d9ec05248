"""TLS for the gRPC listener: ``--tls-cert``, ``--tls-key`` and, for mTLS, ``--tls-client-ca``.

The context speaks TLS 1.2 or newer and offers only ``h2`` by ALPN, as gRPC requires. With a
client CA, a client must present a certificate that chains to it, or its handshake fails.
"""

from __future__ import annotations

import ssl

from .config import ConfigError, ServerConfig


def server_ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The listener's ``SSLContext``, or None without ``tls_cert``. Raises ``ConfigError``
    naming the key when a file is missing or does not load."""
    if not config.tls_cert:
        return None
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(config, key)
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(
                    f"invalid config {key}: cannot read {path!r}: {exc.strerror}"
                ) from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # no client certificates asked for
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"invalid config tls_cert: cannot load {config.tls_cert!r} with key "
            f"{config.tls_key!r}: {exc}"
        ) from None
    if config.tls_client_ca:
        try:
            ctx.load_verify_locations(cafile=config.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"invalid config tls_client_ca: cannot load {config.tls_client_ca!r}: {exc}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx

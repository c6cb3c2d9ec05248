"""The server's side of its worker processes: everything here runs in the server.

``handle`` (one worker: spawn, READY handshake, channel, cancellation, death), ``router``
(the sans-IO bookkeeping of the replies a worker owes), ``spawn`` (the worker's argv and
the runtime probe), ``pool`` (a named pool of workers: routing, replacement, crash-loop
breaker, recycling). The frames it speaks are ``snakebridge_server.frames``, shared with
the worker child (``snakebridge_server.worker``).
"""

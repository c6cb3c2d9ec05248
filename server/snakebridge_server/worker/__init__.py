"""The worker child process: everything here runs in the process the server spawns with
``python -m snakebridge_server.worker``, never in the server.

``main`` (argv, the frame loop and its dispatch table), ``refs`` (the ref table), ``names``
(name resolution and what names reach), ``streams`` (batched iteration), ``helpers`` (the
operator's helper callables), ``output`` (stdout, stderr and logging as records the server
reads). The frames it speaks are ``snakebridge_server.frames``, shared with the server.
Import-light on purpose: no grpclib, betterproto or anyio
(``tests/unit/snakebridge/test_public_api.py`` checks it).
"""

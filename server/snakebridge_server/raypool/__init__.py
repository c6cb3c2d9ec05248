"""Ray-backed pools (``backend = "ray"``): each worker of the pool is a Ray actor that runs
the same worker runtime and speaks the same frames as a worker process.

Which process each module runs in:

- ``actor``: in a Ray worker process, on whichever node Ray placed the actor. It starts
  ``python -m snakebridge_server.worker`` as its child on that node and relays the
  child's channel bytes; it imports neither ``ray`` nor the server.
- ``runtime``: in the server process: connecting to Ray (``ray_address``), the actor
  options of a pool (pure), the actor class.
- ``handle``: in the server process: ``RayWorkerHandle``, a ``WorkerHandle`` whose far end
  of the channel is a relay to the actor instead of a child process, so calls, refs,
  sessions, streams, deadlines, retries and death handling are the handle's own code.

``ray`` is an optional dependency (``pip install snakebridge[ray]``): it is imported only
when a Ray pool starts.
"""

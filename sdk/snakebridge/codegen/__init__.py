"""Typed bindings generated from a pool's libraries (``snakebridge generate``).

Runs in the client process. Three layers, each usable alone:

- ``model``: the description of a remote module (what the ``Introspect`` RPC returns);
- ``render``: pure, descriptions in, source text out (``package_files``);
- ``cli``: the command-line shell that connects, asks, renders and writes.

The generated code calls ``snakebridge.bindings`` at run time. See docs/codegen.md.
"""

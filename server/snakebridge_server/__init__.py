"""bridge-server."""

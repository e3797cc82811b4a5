"""Benchmarks: WebSocket fan-out, a Flask-SocketIO peer, and the REST API, each a `python -m bench.X`."""

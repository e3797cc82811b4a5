"""Peer benchmark: our gateway against Flask-SocketIO (gevent, Redis queue) on the same fan-out."""

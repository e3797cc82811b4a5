"""The WebSocket gateway: protocol, hub, connections, relay and the server that ties them."""

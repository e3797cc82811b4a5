"""Code shared by the REST API and the WebSocket gateway: config, logging, auth, database, events."""

"""The REST API: a thin Flask app where every write enters the system."""

"""The relay: PostgreSQL outbox -> Redis pub/sub, one leader at a time; `python -m relay` runs it alone."""

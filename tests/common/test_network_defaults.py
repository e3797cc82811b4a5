"""Every connection carries TCP keepalives, tcp_user_timeout and a connect timeout unless the URL sets its own."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict

from common.db import NETWORK_DEFAULTS, connect, make_pool, with_network_defaults
from tests.fix_infra import Infra


def test_connections_and_pools_get_the_failover_network_settings(infra: Infra) -> None:
    with connect(infra.database_url) as conn:
        settings = conninfo_to_dict(conn.info.dsn)
    assert {key: settings.get(key) for key in NETWORK_DEFAULTS} == NETWORK_DEFAULTS
    pool = make_pool(infra.database_url, name="net", min_size=1, max_size=1)
    pool.open(wait=True)
    try:
        with pool.connection() as pooled:
            assert conninfo_to_dict(pooled.info.dsn)["tcp_user_timeout"] == "15000"
    finally:
        pool.close()


def test_the_url_wins_and_multi_host_urls_keep_their_hosts() -> None:
    url = "postgresql://u@h1:5432,h2:5433/dms?target_session_attrs=read-write&connect_timeout=2"
    settings = conninfo_to_dict(with_network_defaults(url))
    assert settings["connect_timeout"] == "2" and settings["keepalives_idle"] == "10"
    assert settings["host"] == "h1,h2" and settings["port"] == "5432,5433"
    assert settings["target_session_attrs"] == "read-write" and settings["dbname"] == "dms"

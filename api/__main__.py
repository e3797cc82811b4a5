"""`python -m api`: the REST API under gevent's WSGI server."""

from gevent import monkey

monkey.patch_all()  # first, before psycopg, redis or ssl are imported

import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from loguru import logger  # noqa: E402

from api.app import create_app  # noqa: E402
from api.performance import run_sampler  # noqa: E402
from common.config import Config, ConfigError  # noqa: E402
from common.logging import setup_logging  # noqa: E402
from common.sentry import init_sentry  # noqa: E402


def main() -> int:
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"api: {exc}", file=sys.stderr)
        return 2
    setup_logging(level=config.log_level, fmt=config.log_format, service="api")
    init_sentry(config, service="api")
    app = create_app(config)
    server = WSGIServer((config.api_host, config.api_port), app, log=None, error_log=None)

    def stop() -> None:
        logger.info("api stopping")
        server.stop(timeout=5)

    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, lambda: gevent.spawn(stop))
    logger.bind(settings=config.public_summary()).info(
        "api listening on http://{}:{}", config.api_host, config.api_port
    )
    sampler = gevent.spawn(run_sampler, app)  # history rows and alert checks, once a minute
    server.serve_forever()
    sampler.kill(block=True, timeout=2)
    app.extensions["dms"].close()
    logger.info("api stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

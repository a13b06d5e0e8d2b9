"""``hpo serve``: the API and, in the same command, a pool of worker processes."""

from __future__ import annotations

import ipaddress
import signal
import sys
import threading
from typing import Any

import uvicorn

from hpo.db import upgrade
from hpo.settings import Settings
from service.app import create_app
from service.keys import active_key_count

GRACEFUL_SHUTDOWN_S = 5


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings | None = None, *, workers: int = 1, insecure: bool = False, log_level: str = "info",
          **fields: Any) -> None:
    """Apply migrations, start ``workers`` worker processes, serve the API until stopped, stop the workers.

    Args:
        settings: where to listen (``host``, ``port``), the database shared by the API and
            the workers, the data folder, the workers' heartbeat, the limits; ``None``:
            ``Settings(**fields)``.
        workers: embedded worker processes (0: API only; run ``hpo worker`` elsewhere).
        insecure: allow a non-loopback ``host`` although the database holds no API key (the
            service then runs open: anyone who can reach it can use it).
        log_level: uvicorn's log level.
        **fields: :class:`hpo.settings.Settings` fields, when ``settings`` is not given.

    Raises:
        ValueError: for a non-loopback host without an API key nor ``insecure``, or a negative
            ``workers``.
    """
    if workers < 0:
        raise ValueError(f"--workers must be >= 0; got {workers}")
    config = settings or Settings(**fields)
    host, port = config.host, config.port
    n_keys = active_key_count(config.database_url)  # reads only: nothing is created before the checks pass
    if not is_loopback(host) and not insecure and n_keys == 0:
        raise ValueError(
            f"refusing to serve on {host} without API keys: anyone who can reach it could submit or delete "
            f"studies. Create a key first (hpo keys create --name NAME --admin --database URL), "
            "or pass --insecure to serve open anyway"
        )
    upgrade(config.database_url)
    app = create_app(config)
    pool = None
    stop_supervising = threading.Event()
    if workers:
        from hpo.worker import WorkerOptions, WorkerPool

        pool = WorkerPool(workers, WorkerOptions(
            database_url=config.database_url, data_dir=config.data_dir,
            heartbeat_interval=config.heartbeat_interval, grace_period=config.grace_period,
        ))
        pool.run_supervisor(stop_supervising)
    app.state.worker_pool = pool  # /readyz reports not ready while none of them is alive
    try:
        access = f"API keys required ({n_keys} active)" if n_keys else "no active API key (open if none was ever made)"
        print(f"hpo: serving http://{host}:{port}/ (API docs at /docs) with {workers} worker(s) "
              f"on {config.database_url}; {access}", flush=True)
        # uvicorn re-raises SIGTERM once it has stopped; make that an exit so the workers are stopped below.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        # Open event streams never end by themselves; give them a few seconds, then close them.
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    finally:
        stop_supervising.set()
        if pool is not None:
            pool.stop()

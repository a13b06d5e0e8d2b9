"""``hpo serve``: the API and, in the same command, a pool of worker processes."""

from __future__ import annotations

import ipaddress
import signal
import sys
from typing import Any

import uvicorn

from service.app import create_app
from service.config import Settings
from hpo.db import upgrade
from service.keys import active_key_count

GRACEFUL_SHUTDOWN_S = 5


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(host: str = "127.0.0.1", port: int = 8000, database_url: str = "sqlite:///hpo.db", workers: int = 1,
          data_dir: str = "hpo-data", *, insecure: bool = False, log_level: str = "info", **settings: Any) -> None:
    """Apply migrations, start ``workers`` worker processes, serve the API until stopped, stop the workers.

    Args:
        host: address to listen on.
        port: port to listen on.
        database_url: the database shared by the API and the workers.
        workers: embedded worker processes (0: API only; run ``hpo worker`` elsewhere).
        data_dir: where uploaded datasets are kept (the workers read them from there).
        insecure: allow a non-loopback ``host`` although the database holds no API key (the
            service then runs open: anyone who can reach it can use it).
        log_level: uvicorn's log level.
        **settings: further :class:`service.config.Settings` fields (limits, page sizes).

    Raises:
        ValueError: for a non-loopback host without an API key nor ``insecure``, or a negative
            ``workers``.
    """
    if workers < 0:
        raise ValueError(f"--workers must be >= 0; got {workers}")
    n_keys = active_key_count(database_url)  # reads only: nothing is created before the checks pass
    if not is_loopback(host) and not insecure and n_keys == 0:
        raise ValueError(
            f"refusing to serve on {host} without API keys: anyone who can reach it could submit or delete "
            f"studies. Create a key first (hpo keys create --name NAME --admin --database URL), "
            "or pass --insecure to serve open anyway"
        )
    config = Settings(database_url=database_url, data_dir=data_dir, **settings)
    upgrade(config.database_url)
    app = create_app(config)
    procs: list = []
    if workers:
        from hpo.worker import start_worker_processes, stop_worker_processes

        procs = start_worker_processes(workers, config.database_url, data_dir=config.data_dir)
    try:
        access = f"API keys required ({n_keys} active)" if n_keys else "no active API key (open if none was ever made)"
        print(f"hpo: serving http://{host}:{port}/ (API docs at /docs) with {workers} worker(s) "
              f"on {config.database_url}; {access}", flush=True)
        # uvicorn re-raises SIGTERM once it has stopped; make that an exit so the workers are stopped below.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        # Open event streams never end by themselves; give them a few seconds, then close them.
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    finally:
        if procs:
            stop_worker_processes(procs)

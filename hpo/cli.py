"""The ``hpo`` command line: tune locally, serve the API, run workers, talk to a server.

Every command exits non-zero with a one-line reason (never a traceback) on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hpo.console import best_table, results
from hpo.dataset_commands import add_dataset_commands  # hpo datasets upload | list | show | delete
from hpo.export.commands import add_model_commands  # hpo model fit | status | download | predict
from hpo.settings import add_database_flags, add_remote_flags, setting_default, settings_of
from hpo.spec import SpecError, load_spec


class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _database(args: argparse.Namespace) -> str:
    return settings_of(args).database_url


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _spec_or_exit(path: str):
    try:
        return load_spec(path)
    except SpecError as exc:
        for err in exc.errors:
            print(f"{path}: {err['field']}: {err['message']}", file=sys.stderr)
        raise SystemExit(2) from None


# ---- local tuning ------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> None:
    spec = _spec_or_exit(args.spec)
    if spec.dataset.path is not None:  # a file on this machine: load it as hpo run would
        from hpo.data import DataError, load_dataset

        try:
            load_dataset(spec)
        except DataError as exc:
            print(f"{args.spec}: dataset.path: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    spec = spec.with_trial_cap(settings_of(args).max_n_trials)
    repeats = f" x {spec.cv.repeats} repeats" if spec.cv.repeats > 1 else ""
    print(f"{args.spec}: ok ({spec.task}, {spec.sampler.name} sampler, {spec.n_trials} trials, "
          f"{spec.cv.folds}-fold {spec.cv.strategy} CV{repeats}, {spec.direction} {spec.training.metric})")


def cmd_run(args: argparse.Namespace) -> None:
    from hpo import local

    spec = _spec_or_exit(args.spec)
    if args.n_trials is not None:
        if args.n_trials < 1:
            raise UsageError(f"--n-trials must be >= 1; got {args.n_trials}")
        spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"n_trials": args.n_trials})})
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1; got {args.jobs}")
    settings = settings_of(args)
    spec = spec.with_trial_cap(settings.max_n_trials)
    best = local.run(spec, storage_url=settings.database_url, jobs=args.jobs, data_dir=settings.data_dir,
                     show_progress=not args.quiet)
    if best is None:
        raise UsageError("no trial completed (each failed trial's reason is above)")
    if args.json:
        _print_json(best)
    elif args.quiet:
        print(f"best {best['metric']} {best['value']:.6g} (trial {best['number']})")
    else:
        results.print(best_table(best, best["metric"]))


def cmd_best(args: argparse.Namespace) -> None:
    if args.storage or args.database:  # a database, by the study's name
        from hpo import local

        try:
            best, metric = local.best(args.study, _database(args))
        except KeyError as exc:
            raise KeyError(f"{exc.args[0]}; to ask a server by study id instead, leave out --storage "
                           f"(server: --url or $HPO_URL, now {settings_of(args).url})") from None
    else:  # the server, by the study's id
        from hpo.client import APIError

        try:
            best = _client(args).best(args.study)
        except APIError as exc:
            if exc.status != 404:
                raise
            raise LookupError(f"{exc}; to read a database by study name instead: hpo best NAME --storage URL "
                              f"(e.g. --storage {setting_default('database_url')})") from None
        metric = best.get("metric", "value")
    if args.json:
        _print_json(best)
    else:
        results.print(best_table(best, metric))


# ---- service -----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> None:
    from service.server import serve  # the one place the engine's CLI starts the HTTP face

    serve(settings_of(args), workers=args.workers, insecure=args.insecure)


def cmd_worker(args: argparse.Namespace) -> None:
    from hpo.storage import PROXY_SCHEME, open_storage
    from hpo.worker import WorkerOptions, run_worker

    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1; got {args.concurrency}")
    settings = settings_of(args)
    options = WorkerOptions(
        database_url=settings.database_url, data_dir=settings.data_dir,
        heartbeat_interval=settings.heartbeat_interval, grace_period=settings.grace_period,
    )
    if options.database_url.startswith(PROXY_SCHEME):  # refuse a bad URL or an absent proxy here, in one line
        open_storage(options.database_url).close()
    print(f"hpo worker: {args.concurrency} process(es) on {options.database_url}", file=sys.stderr)
    run_worker(options, concurrency=args.concurrency)


def cmd_storage_proxy(args: argparse.Namespace) -> None:
    import signal
    import threading

    from hpo.storage import PROXY_SCHEME, serve_proxy

    settings = settings_of(args)
    if settings.database_url.startswith(PROXY_SCHEME):
        raise UsageError(f"--database must be the database itself, not another proxy ({settings.database_url})")
    server = serve_proxy(settings.database_url, settings.proxy_host, settings.proxy_port,
                         heartbeat_interval=settings.heartbeat_interval, grace_period=settings.grace_period,
                         threads=settings.proxy_threads)
    print(f"hpo storage-proxy: {settings.database_url} at grpc://{settings.proxy_host}:{settings.proxy_port}",
          file=sys.stderr, flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(grace=5).wait()  # answers in flight are finished; new calls are refused


def cmd_db_upgrade(args: argparse.Namespace) -> None:
    from hpo.db import upgrade

    upgrade(_database(args))
    print("database is up to date", file=sys.stderr)


def cmd_keys(args: argparse.Namespace) -> None:
    from service import keys  # API keys live in the service's tables

    if args.action == "create":
        if not args.name:
            raise UsageError("keys create needs --name NAME (the owner of what the key creates)")
        record, token = keys.create_key(_database(args), args.name, admin=args.admin)
        print(token)  # the only time the token is shown
        print(f"created {'admin ' if record.admin else ''}key {record.id} for {record.name}; "
              "keep the line above secret, it cannot be shown again", file=sys.stderr)
    elif args.action == "list":
        _print_json([keys.key_view(k) for k in keys.list_keys(_database(args))])
    else:
        if not args.key_id:
            raise UsageError("keys revoke needs the key's id (hpo keys list shows them)")
        record = keys.revoke_key(_database(args), args.key_id)
        print(f"revoked key {record.id} ({record.name})", file=sys.stderr)


# ---- remote ------------------------------------------------------------------------------


def _client(args: argparse.Namespace):
    from hpo.client import Client

    settings = settings_of(args)
    return Client(settings.url, api_key=settings.api_key)


def cmd_submit(args: argparse.Namespace) -> None:
    _spec_or_exit(args.spec)  # refuse locally first, with the same messages the server gives
    study = _client(args).submit(args.spec)
    if args.json:
        _print_json(study)
    else:
        print(study["id"])
        print(f"watch: hpo watch {study['id']} --url {settings_of(args).url}", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> None:
    _print_json(_client(args).get(args.study))


def cmd_watch(args: argparse.Namespace) -> None:
    from hpo.console import follow

    client = _client(args)
    final = follow(lambda: client.get(args.study))
    print(final["state"])


def cmd_cancel(args: argparse.Namespace) -> None:
    study = _client(args).cancel(args.study)
    if args.json:
        _print_json(study)
    else:
        print(f"{study['id']} {study['state']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpo", description="Hyperparameter optimization for RNNs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    def remote(p: argparse.ArgumentParser) -> None:
        add_remote_flags(p)

    p = add("run", cmd_run, "Tune locally: run a spec's study to the end with a live progress bar.")
    p.add_argument("spec", help="study spec (YAML or JSON)")
    p.add_argument("--storage", help="Optuna storage URL (same as --database)")
    p.add_argument("--n-trials", type=int, help="override budget.n_trials")
    p.add_argument("--jobs", type=int, help="trials in parallel processes (default: one per CPU core)")
    p.add_argument("--json", action="store_true", help="print the best trial as JSON at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_database_flags(p)

    p = add("validate", cmd_validate, "Check a spec; exit non-zero naming each bad field.")
    p.add_argument("spec")

    p = add("best", cmd_best, "Print a study's best parameters: from the server by study id, or from a "
                              "database by study name (--storage).")
    p.add_argument("study", help="the study's id (from hpo submit), or its name with --storage")
    p.add_argument("--storage", help="read this database (Optuna storage URL) by study name instead of asking "
                                     "the server")
    remote(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--database", help=argparse.SUPPRESS)

    p = add("serve", cmd_serve, "Serve the REST API and browser pages, with embedded workers.")
    p.add_argument("--host", help=f"address to listen on (default: $HPO_HOST or {setting_default('host')})")
    p.add_argument("--port", type=int, help=f"port to listen on (default: $HPO_PORT or {setting_default('port')})")
    p.add_argument("--workers", type=int, default=1, help="embedded worker processes (0: API only)")
    p.add_argument("--insecure", action="store_true", help="allow serving a non-loopback address without API keys")
    add_database_flags(p)

    p = add("worker", cmd_worker, "Run trials of any runnable study in the database, until stopped.")
    p.add_argument("--concurrency", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--heartbeat-interval", type=int, help="seconds between heartbeats (default: "
                   f"$HPO_HEARTBEAT_INTERVAL or {setting_default('heartbeat_interval')})")
    p.add_argument("--grace-period", type=int, help="seconds of silence before a trial is failed (default: "
                   f"$HPO_GRACE_PERIOD or {setting_default('grace_period')})")
    add_database_flags(p)

    p = add("storage-proxy", cmd_storage_proxy, "Serve the database to workers over gRPC (Optuna's storage "
            "proxy, with this project's claim and stale-trial rules): workers use --database grpc://HOST:PORT.")
    p.add_argument("--host", dest="proxy_host", help="address to listen on (default: $HPO_PROXY_HOST or "
                   f"{setting_default('proxy_host')})")
    p.add_argument("--port", dest="proxy_port", type=int, help="port to listen on (default: $HPO_PROXY_PORT or "
                   f"{setting_default('proxy_port')})")
    p.add_argument("--threads", dest="proxy_threads", type=int, help="requests served at once, each holding at "
                   f"most one database connection (default: $HPO_PROXY_THREADS or {setting_default('proxy_threads')})")
    p.add_argument("--heartbeat-interval", type=int, help="the workers' seconds between heartbeats (default: "
                   f"$HPO_HEARTBEAT_INTERVAL or {setting_default('heartbeat_interval')})")
    p.add_argument("--grace-period", type=int, help="seconds of silence before a trial is failed (default: "
                   f"$HPO_GRACE_PERIOD or {setting_default('grace_period')})")
    add_database_flags(p, data_dir=False)

    p = add("db", cmd_db_upgrade, "Database maintenance.")
    p.add_argument("action", choices=["upgrade"], help="upgrade: apply migrations")
    add_database_flags(p, data_dir=False)

    p = add("keys", cmd_keys, "API keys: create (printed once), list, revoke.")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("key_id", nargs="?", help="revoke: the key's id")
    p.add_argument("--name", help="create: the owner of the studies and datasets the key creates")
    p.add_argument("--admin", action="store_true", help="create: the key sees and manages everything")
    add_database_flags(p, data_dir=False)

    for name, func, help in (
        ("submit", cmd_submit, "Submit a spec to a server; print the study id."),
        ("status", cmd_status, "Show a study's state and counts (JSON)."),
        ("watch", cmd_watch, "Follow a study with a live progress bar until it ends."),
        ("cancel", cmd_cancel, "Cancel a study on a server."),
    ):
        p = add(name, func, help)
        p.add_argument("spec" if name == "submit" else "study")
        remote(p)
        if name in ("submit", "cancel"):
            p.add_argument("--json", action="store_true", help="the study as JSON")

    add_model_commands(sub)
    add_dataset_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UsageError as exc:
        print(f"hpo {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:  # refusals from a server or a storage: one line, no traceback
        import httpx

        from hpo.client import APIError

        if isinstance(exc, httpx.TransportError):
            url = getattr(args, "url", None) or settings_of(args).url
            other = ", or read a database by study name with --storage URL" if hasattr(args, "storage") else ""
            print(f"hpo {args.command}: cannot reach the server at {url} ({exc}); start it with hpo serve, "
                  f"or name another with --url or $HPO_URL{other}", file=sys.stderr)
            raise SystemExit(1) from None
        if not isinstance(exc, (APIError, ValueError, LookupError, OSError)):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"hpo {args.command}: {message}", file=sys.stderr)
        raise SystemExit(1) from None

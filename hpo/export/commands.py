"""``hpo model fit | status | download | predict``: the final model from the command line.

Registered by ``hpo.cli`` through :func:`add_model_commands`; heavy imports (PyTorch)
happen only when a command runs. Refusals raise ``ValueError`` (one line, exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.settings import add_database_flags, add_remote_flags, settings_of

if TYPE_CHECKING:
    from hpo.client import Client


def add_model_commands(sub: Any) -> None:
    """Add ``model`` and its subcommands to the ``hpo`` parser's subcommands."""
    model = sub.add_parser("model", help="Fit the best configuration, download the model, predict with it.",
                           description="Fit the best configuration, download the model, predict with it.")
    actions = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    p = actions.add_parser("fit", help="Refit a study's best trial on all its data, --seeds times averaged: here "
                                       "(from a storage, into an archive file) or by the server's workers (--url; "
                                       "the study serves it once ready). A study queues its own 3-seed refit when "
                                       "it ends unless its spec says final_model: {kind: ensemble}.")
    p.add_argument("study", help="study name (local) or id (with --url)")
    p.add_argument("--trial", type=int, help="fit this complete trial instead of the best one")
    p.add_argument("--holdout", type=float, default=0.0, help="share of rows held out and scored (default 0)")
    p.add_argument("--seeds", type=int, default=1, help="networks trained, one per seed, and averaged (default 1)")
    p.add_argument("--out", help="archive to write (local; default: <study>.hpo.zip)")
    p.add_argument("--storage", help="Optuna storage URL (same as --database)")
    add_database_flags(p)
    p.add_argument("--wait", action="store_true", help="with --url: wait until the model is ready or failed")
    _remote(p, required=False)
    p.set_defaults(func=cmd_model_fit)

    p = actions.add_parser("status", help="The model a study serves (fold ensemble or refit) and its refit's "
                                          "state, from a server (--url) or a storage (--database); prints JSON.")
    p.add_argument("study", help="study id (server) or name (storage)")
    p.add_argument("--storage", help="Optuna storage URL (same as --database)")
    add_database_flags(p, data_dir=False)
    _remote(p, required=True)
    p.set_defaults(func=cmd_model_status)

    p = actions.add_parser("download", help="Write a study's model archive (the one it serves, or --kind) from a "
                                            "server (--url) or a storage (--database: after `hpo run`).")
    p.add_argument("study", help="study id (server) or name (storage)")
    p.add_argument("--kind", choices=["ensemble", "refit"], help="this kind, while it is ready (default: the "
                                                                 "model served: the refit once ready, else the ensemble)")
    p.add_argument("--out", help="where to write it (default: <study name>.hpo.zip)")
    p.add_argument("--storage", help="Optuna storage URL (same as --database)")
    add_database_flags(p, data_dir=False)
    _remote(p, required=True)
    p.set_defaults(func=cmd_model_download)

    p = actions.add_parser("predict", help="Predict with a model archive, offline; prints JSON.")
    p.add_argument("archive", help="a .hpo.zip archive")
    p.add_argument("input", help="new data: .npz (numeric), .csv/.tsv (texts or a series), or .json "
                                 '({"x": ...}, {"texts": [...]} or {"series": [[...]]})')
    p.add_argument("--format", choices=["npz", "csv", "tsv", "json"], help="default: from the input's suffix")
    p.add_argument("--text-column", help="the csv/tsv column holding the texts (default: text)")
    p.add_argument("--rolling", action="store_true",
                   help="forecasting: a forecast from every window of the series, not only after its end")
    p.set_defaults(func=cmd_model_predict)


def _remote(p: argparse.ArgumentParser, required: bool) -> None:
    if not required:
        p.add_argument("--url", help="ask this server's workers to fit it (the study is then its id)")
    add_remote_flags(p, url=required)


def _client(args: argparse.Namespace) -> Client:
    from hpo.client import Client

    settings = settings_of(args)
    return Client(settings.url, api_key=settings.api_key)


def cmd_model_fit(args: argparse.Namespace) -> None:
    if args.url:
        with _client(args) as client:
            status = client.fit_model(args.study, trial_number=args.trial, holdout=args.holdout, seeds=args.seeds)
            if args.wait:
                status = client.wait_model(args.study, progress=True)
        print(json.dumps(status, indent=2))
        refit = status.get("refit") or {}
        if refit.get("state") == "failed":
            raise ValueError(f"the fit failed: {refit.get('reason')}")
        return

    from hpo.data import DatasetStore
    from hpo.export.fit import fit_study_model
    from hpo.export.jobs import model_summary
    from hpo.storage import open_storage

    settings = settings_of(args)
    storage = open_storage(settings.database_url)

    def progress(epoch: int, epochs: int, score: float) -> None:
        print(f"epoch {epoch}/{epochs}: {score:.4g}", file=sys.stderr)

    datasets = DatasetStore(storage.engine, settings.data_dir)
    model = fit_study_model(storage, args.study, datasets, trial_number=args.trial, holdout=args.holdout,
                            seeds=args.seeds, on_epoch=progress)
    out = Path(args.out or f"{args.study}.hpo.zip")
    archive = model.save(out)
    print(json.dumps({"archive": str(out), **archive, "model": model_summary(model.manifest)}, indent=2))


def _local_status(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The storage (``--database``) and the model status of a study in it, as
    ``hpo.export.model_status`` gives it.

    Raises:
        ValueError: no such study, or it has no model.
    """
    from hpo.export.jobs import model_status
    from hpo.storage import open_storage

    storage = open_storage(settings_of(args).database_url)
    try:
        storage.get_study_id_from_name(args.study)
    except KeyError:
        raise ValueError(f"no study {args.study!r} in the storage") from None
    status = model_status(storage, args.study)
    if status is None:
        raise ValueError(f"study {args.study!r} has no model (none is kept until a trial completes)")
    return storage, {"study": args.study, **status}


def describe(status: dict[str, Any]) -> str:
    """One line: the model served and what its refit is doing."""
    refit = status.get("refit")
    if status.get("state") != "ready":
        return f"no model served yet; refit {status.get('state')}"
    model = status.get("model") or {}
    served = (f"refit of trial {status.get('trial_number')} ({model.get('members')} seeds)" if status["kind"] == "refit"
              else f"fold ensemble of trial {status.get('trial_number')} ({model.get('members')} fold models)")
    line = f"serving: {served}" + (", did not learn" if model.get("learned") is False else "")
    if status["kind"] == "ensemble" and refit is not None:
        meanwhile = "" if refit["state"] == "failed" else ", serving the ensemble meanwhile"
        line += f"; refit {refit['state']}{meanwhile}" + (f": {refit['reason']}" if refit.get("reason") else "")
    return line


def cmd_model_status(args: argparse.Namespace) -> None:
    if args.database or args.storage:
        _, status = _local_status(args)
    else:
        with _client(args) as client:
            status = client.model(args.study)
    print(describe(status), file=sys.stderr)
    print(json.dumps(status, indent=2))


def cmd_model_download(args: argparse.Namespace) -> None:
    if args.database or args.storage:
        from hpo.export.jobs import model_archive

        storage, status = _local_status(args)
        kind = args.kind or status["kind"]
        if kind not in (status.get("archives") or {}):
            raise ValueError(f"study {args.study!r} has no {kind} model ready ({describe(status)})")
        found = model_archive(storage, args.study, kind)
        if found is None:
            raise ValueError(f"the {kind} model of study {args.study!r} was just replaced or deleted; try again")
        path = Path(args.out or f"{args.study}.hpo.zip")
        path.write_bytes(found[0])
    else:
        with _client(args) as client:
            path = client.download_model(args.study, args.out, kind=args.kind)
    with zipfile.ZipFile(path) as archive:  # which kind it is, without loading PyTorch
        manifest = json.loads(archive.read("manifest.json"))
    print(f"model kind: {manifest.get('kind')} ({len(manifest.get('members') or [])} network(s))", file=sys.stderr)
    print(path)


def cmd_model_predict(args: argparse.Namespace) -> None:
    from hpo.export import inputs_from_file, inputs_from_json, load_model

    model = load_model(args.archive)
    path = Path(args.input)
    fmt = args.format or path.suffix.lstrip(".").lower()
    content = path.read_bytes()
    if fmt == "json":
        try:
            body = json.loads(content)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if args.rolling and isinstance(body, dict):
            body = {**body, "rolling": True}
        data = inputs_from_json(model.preprocessing, body)
    else:
        data = inputs_from_file(model.preprocessing, path.name, content, format=fmt, column=args.text_column,
                                rolling=args.rolling)
    print(json.dumps(model.predict_dict(data), indent=2))

"""``hpo datasets upload | list | show | delete``: a server's uploaded datasets from the command line;
``hpo datasets import-folder DIR``: an old data folder's files into the database.

Registered by ``hpo.cli`` through :func:`add_dataset_commands`. Results go to stdout (the id,
a table, or JSON with ``--json``), notes to stderr; refusals raise the client's ``APIError``
(one line, exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hpo.settings import add_remote_flags, setting_default, settings_of

TASKS = ("classification", "regression", "forecasting")
UPLOAD_OPTIONS = ("format", "target_column", "text_column", "label_column", "max_length", "time_column",
                  "feature_columns")


def add_dataset_commands(sub: Any) -> None:
    """Add ``datasets`` and its subcommands to the ``hpo`` parser's subcommands."""
    datasets = sub.add_parser("datasets", help="Upload, list, show and delete a server's datasets.",
                              description="Upload, list, show and delete a server's datasets.")
    actions = datasets.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")

    p = actions.add_parser("upload", help="Upload a data file; print its id (put it in a spec as dataset: {id: ID}).")
    p.add_argument("file", help="an .npz, .csv or .tsv file")
    p.add_argument("--task", required=True, choices=TASKS, help="what the data is for")
    p.add_argument("--format", choices=["npz", "csv", "tsv"], help="default: from the file's suffix")
    p.add_argument("--target-column", help="regression / forecasting target column (csv)")
    p.add_argument("--text-column", help="column of texts to classify (csv; default: text)")
    p.add_argument("--label-column", help="column of class labels (csv; default: label)")
    p.add_argument("--max-length", type=int, help="tokens kept per text, 4..1024 (default: 64)")
    p.add_argument("--time-column", help="forecasting: the column that orders the rows (never an input)")
    p.add_argument("--feature-columns", metavar="A,B",
                   help="forecasting: the input columns besides the target (default: every numeric one)")
    p.set_defaults(func=cmd_upload)

    p = actions.add_parser("list", help="List the uploaded datasets.")
    p.set_defaults(func=cmd_list)

    p = actions.add_parser("show", help="Show one dataset: its task, format, options and summary.")
    p.add_argument("dataset", help="the dataset's id")
    p.set_defaults(func=cmd_show)

    p = actions.add_parser("delete", help="Delete a dataset (refused while an unfinished study uses it, or a "
                                          "finished one needs it for a model; --force for the latter).")
    p.add_argument("dataset", help="the dataset's id")
    p.add_argument("--force", action="store_true",
                   help="delete it although finished studies still need it for a model (no refit of them then)")
    p.set_defaults(func=cmd_delete)

    for action in actions.choices.values():
        add_remote_flags(action)
        action.add_argument("--json", action="store_true", help="the answer as JSON")

    p = actions.add_parser(
        "import-folder", help="Move the datasets an earlier version kept in a data folder into the database.",
        description="Move the files an earlier version kept in DIR/datasets/<id>/ into the database, where "
                    "every worker reads them (hpo serve does this for its own --data-dir at start). Datasets "
                    "already there are left alone; a folder whose dataset has no row (deleted) is skipped.")
    p.add_argument("folder", metavar="DIR", help="the old data folder (it holds datasets/)")
    p.add_argument("--database", help="storage URL (default: $HPO_DATABASE_URL or "
                   f"{setting_default('database_url')})")
    p.add_argument("--json", action="store_true", help="the answer as JSON")
    p.set_defaults(func=cmd_import_folder)


def _client(args: argparse.Namespace):
    from hpo.client import Client

    settings = settings_of(args)
    return Client(settings.url, api_key=settings.api_key)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def cmd_upload(args: argparse.Namespace) -> None:
    options = {name: getattr(args, name) for name in UPLOAD_OPTIONS}
    with _client(args) as client:
        dataset = client.upload_dataset(args.file, args.task, **options)
    if args.json:
        _print_json(dataset)
        return
    print(dataset["id"])
    print(f"uploaded {dataset['name']} ({dataset['task']}); in a spec: dataset: {{id: {dataset['id']}}}",
          file=sys.stderr)


def cmd_list(args: argparse.Namespace) -> None:
    with _client(args) as client:
        page = client.datasets()
    if args.json:
        _print_json(page)
        return
    # Plain columns, the name last: nothing is cut when the output is redirected.
    for d in page["items"]:
        print(f"{d['id']}  {d['task']:<14} {d['format']:<4} {d['size_bytes'] / 1024:>9.1f} KiB  "
              f"{d['created_at'][:19].replace('T', ' ')}  {d['name']}")
    if page["total"] > len(page["items"]):
        print(f"(the first {len(page['items'])} of {page['total']}; --json and the API page through them)",
              file=sys.stderr)


def cmd_show(args: argparse.Namespace) -> None:
    with _client(args) as client:
        dataset = client.dataset(args.dataset)
    if args.json:
        _print_json(dataset)
        return
    for key in ("id", "name", "task", "format", "size_bytes", "created_at"):
        print(f"{key}: {dataset[key]}")
    for key, value in {**dataset.get("options", {}), **dataset.get("summary", {})}.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


def cmd_delete(args: argparse.Namespace) -> None:
    with _client(args) as client:
        client.delete_dataset(args.dataset, force=args.force)
    print(json.dumps({"id": args.dataset, "deleted": True}) if args.json else f"{args.dataset} deleted")


def cmd_import_folder(args: argparse.Namespace) -> None:
    from pathlib import Path

    from hpo.data import DatasetStore
    from hpo.db import make_engine, upgrade

    if not (Path(args.folder) / "datasets").is_dir():
        raise FileNotFoundError(f"{args.folder}: no datasets/ folder in it (give the old --data-dir)")
    settings = settings_of(args)
    upgrade(settings.database_url)  # the import writes into the tables of migration 0005
    engine = make_engine(settings.database_url)
    try:
        report = DatasetStore(engine, settings.data_dir).import_folder(args.folder)
    finally:
        engine.dispose()
    if args.json:
        _print_json(report)
        return
    for dataset_id in report["imported"]:
        print(f"{dataset_id} imported")
    for dataset_id in report["present"]:
        print(f"{dataset_id} already in the database")
    for dataset_id, reason in report["skipped"].items():
        print(f"{dataset_id} skipped: {reason}")

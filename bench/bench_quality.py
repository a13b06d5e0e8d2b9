"""What a tuned model reaches on real data: the quality suite's official test splits.

For each dataset of ``../shared/data/quality/`` (its README has the protocol and the
reference scores; ``manifest.json`` the same, machine-readable) and each seed, only the
public path is used, as a user would: start ``hpo serve`` (temporary SQLite and data
folder, 2 embedded workers) on a free port, upload the TRAIN file over HTTP, submit a spec
giving only the task, the dataset and the wall-clock budget (plus the seed: ``sampler.seed``
and ``training.seed``), wait for the study, wait for its final model (by default the
3-seed refit the study queues as it ends; requested with ``POST .../model`` only when the
study has none), predict the TEST file over the predict API and score it; then score the
same study's fold ensemble too (``?kind=ensemble``), the model served until the refit was
ready. Forecasting is one step ahead with the true history: for each
test row t of ``NAME_full.csv`` the model forecasts from rows 0..t-1 (one rolling call). The test files are read
only here, for scoring; their labels never reach the server.

    .venv/bin/python -m bench.bench_quality --quick                    # one seed, all six datasets, ~25-30 min
    .venv/bin/python -m bench.bench_quality                            # 3 seeds, ~1 h 15
    .venv/bin/python -m bench.bench_quality --datasets Lynx --budget-s 60 --set pruner.name=none
    .venv/bin/python -m bench.bench_quality --quick --set final_model.kind=ensemble   # the ensemble alone
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.common import REPO, footer, header, repo_env
from hpo.client import Client
from hpo.data.forecast import parse_series
from tests.support.databases import sqlite_url
from tests.support.servers import ServeProcess

DATA = REPO.parent / "shared" / "data" / "quality"
WORKERS = 2
DEFAULT_BUDGET_S = 180
DEFAULT_SEEDS = 3
# Generous limits on the waits: a study past its budget still finishes its running trials.
STUDY_GRACE_S = 1800
MODEL_TIMEOUT_S = 1800
# A study's own refit is queued by the worker that sees it end, within moments of the end.
OWN_REFIT_WAIT_S = 60
DEEP_BASELINES = ("fcn", "resnet", "fcn_128", "resnet_128")
# The API refuses JSON bodies over 1 MiB; a number takes about 20 bytes of JSON.
PREDICT_VALUES_PER_CALL = 25_000


def parse_overlay(items: list[str]) -> dict[str, Any]:
    """``["pruner.name=none", "cv.folds=3"]`` as a nested dict (values read as YAML scalars).

    Raises:
        SystemExit: naming an item that is not ``dotted.path=value``.
    """
    overlay: dict[str, Any] = {}
    for item in items:
        path, sep, text = item.partition("=")
        if not sep or not path or any(not part for part in path.split(".")):
            raise SystemExit(f"--set {item!r}: expected dotted.path=value, e.g. pruner.name=none")
        *parents, leaf = path.split(".")
        node = overlay
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(text)
    return overlay


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` laid over it, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def study_spec(name: str, task: str, dataset_id: str, budget_s: float, seed: int,
               overlay: dict[str, Any]) -> dict[str, Any]:
    """What a user gives: task, dataset, wall-clock budget; the seed; the product's defaults do the rest."""
    spec = {"name": name, "task": task, "dataset": {"id": dataset_id}, "budget": {"timeout_s": budget_s},
            "sampler": {"seed": seed}, "training": {"seed": seed}}
    return merge(spec, overlay)


def classification_inputs(folder: Path, entry: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """A classification test file as the predict API's ``x`` (ragged for variable lengths) and its labels."""
    with np.load(folder / entry["files"]["test"]["file"], allow_pickle=False) as npz:
        y = npz["y"]
        if "lengths" in npz:
            ends = np.cumsum(npz["lengths"])
            x = [part.tolist() for part in np.split(npz["values"], ends[:-1])]
        else:
            x = npz["X"].tolist()
    return x, y


def chunks(sequences: list[Any], max_values: int) -> list[list[Any]]:
    """Consecutive runs of sequences holding at most ``max_values`` numbers each (at least one sequence)."""
    runs: list[list[Any]] = [[]]
    size = 0
    for seq in sequences:
        n = int(np.size(seq))
        if runs[-1] and size + n > max_values:
            runs.append([])
            size = 0
        runs[-1].append(seq)
        size += n
    return runs


def score_classification(client: Client, study_id: str, folder: Path, entry: dict[str, Any],
                         kind: str | None = None) -> dict[str, float]:
    """Accuracy on the test file, its sequences sent as JSON ``x`` (the labels stay here)."""
    x, y = classification_inputs(folder, entry)
    labels: list[Any] = []
    for chunk in chunks(x, PREDICT_VALUES_PER_CALL):
        labels += client.predict(study_id, {"x": chunk}, kind=kind)["labels"]
    # Labels may come back as strings ("3") or as the ints they were given.
    return {"accuracy": float(np.mean([str(label) == str(truth) for label, truth in zip(labels, y.tolist())]))}


def score_forecasting(client: Client, study_id: str, folder: Path, entry: dict[str, Any],
                      kind: str | None = None) -> dict[str, float]:
    """One step ahead over the test rows of ``NAME_full.csv``, each from the true rows before
    it: one rolling call over the whole series, of which the test rows' forecasts are scored."""
    full = parse_series((folder / entry["files"]["full"]).read_text(encoding="utf-8"), ",",
                        entry["target_column"])
    target = full.columns.index(entry["target_column"])
    answer = client.predict(study_id, {"series": full.values.tolist(), "rolling": True}, kind=kind)
    forecast_at = dict(zip(answer["positions"], answer["predictions"], strict=True))
    test_rows = range(entry["n_train"], len(full.values))
    errors = [float(forecast_at[t][0]) - float(full.values[t, target]) for t in test_rows]
    errors_array = np.asarray(errors)
    mse = float(np.mean(errors_array ** 2))
    return {"rmse": math.sqrt(mse), "mse": mse, "mae": float(np.mean(np.abs(errors_array)))}


def score(client: Client, study_id: str, folder: Path, entry: dict[str, Any],
          kind: str | None = None) -> dict[str, float]:
    """The study's model (the one it serves, or ``kind``) on the dataset's test split."""
    return (score_classification(client, study_id, folder, entry, kind) if entry["task"] == "classification"
            else score_forecasting(client, study_id, folder, entry, kind))


def wait_final_model(client: Client, study: dict[str, Any]) -> dict[str, Any]:
    """The study's final model once no fit is pending: with ``final_model.kind: refit`` (the
    default), its own refit, which a worker queues as the study ends, ready or failed."""
    if study["spec"]["final_model"]["kind"] == "refit":
        deadline = time.monotonic() + OWN_REFIT_WAIT_S
        while "refit" not in client.model(study["id"]) and time.monotonic() < deadline:
            time.sleep(1)
    return client.wait_model(study["id"], poll_s=2, timeout_s=MODEL_TIMEOUT_S)


def run_one(result: dict[str, Any], folder: Path, entry: dict[str, Any], budget_s: float,
            overlay: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """One dataset, one seed, on a fresh server, recorded into ``result`` as it goes (``error``
    when something refused; what was recorded before an exception stays): ``test`` scores the
    model the study serves at the end (its refit, by default), ``ensemble`` the same study's
    fold ensemble, when that is not what it serves."""
    name, seed, task = result["dataset"], result["seed"], entry["task"]
    train_file = folder / (entry["files"]["train"]["file"] if task == "classification" else entry["files"]["train"])
    result.update(task=task, load_avg_start=os.getloadavg()[0])
    start = time.monotonic()
    with ServeProcess(sqlite_url(workdir), workdir / "data", workdir / "serve.log",
                      workers=WORKERS, env=repo_env()) as server, Client(server.url, timeout=120) as client:
        dataset = client.upload_dataset(train_file, task)
        spec = study_spec(f"quality-{name}-seed{seed}", task, dataset["id"], budget_s, seed, overlay)
        study = client.submit(spec)
        result["spec"] = spec
        study = client.wait(study["id"], poll_s=2, timeout_s=budget_s + STUDY_GRACE_S)
        result["study_s"] = time.monotonic() - start
        result.update(study_state=study["state"], study_reason=study.get("reason"), trials=study["trials"])
        if study["state"] != "completed":
            result["error"] = f"study {study['state']}: {study.get('reason')}"
            return finish(result, start)
        result["best"] = client.best(study["id"])
        model = wait_final_model(client, study)
        result["model_requested"] = model["state"] == "none"
        if result["model_requested"]:  # no ensemble kept and no refit of its own: ask for one
            client.fit_model(study["id"])
            model = client.wait_model(study["id"], poll_s=2, timeout_s=MODEL_TIMEOUT_S)
        result["model"] = {k: model.get(k) for k in ("state", "kind", "trial_number", "cv_score", "reason", "model",
                                                     "refit")}
        # From the study's end to its final model (the refit's queue and fit, by default).
        result["model_s"] = time.monotonic() - start - result["study_s"]
        if model["state"] != "ready":
            result["error"] = f"model {model['state']}: {model.get('reason')}"
            return finish(result, start)
        result["test"] = score(client, study["id"], folder, entry)
        # The final trial's counts: trials still running when the budget ended have finished by now.
        result["trials"] = client.get(study["id"])["trials"]
        if model["kind"] != "ensemble" and "ensemble" in (model.get("archives") or {}):
            result["ensemble"] = {**model["archives"]["ensemble"],
                                  "test": score(client, study["id"], folder, entry, kind="ensemble")}
    return finish(result, start)


def finish(result: dict[str, Any], start: float) -> dict[str, Any]:
    result["wall_s"] = time.monotonic() - start
    result["load_avg_end"] = os.getloadavg()[0]
    return result


def references(entry: dict[str, Any]) -> dict[str, float | str]:
    """The suite's reference scores for one dataset: baseline, trivial predictor, best deep baseline."""
    computed = entry["computed"]
    if entry["task"] == "forecasting":
        return {"baseline": computed["ar_aic"]["rmse"], "baseline_name": f"AR({computed['ar_aic']['p']})",
                "trivial": computed["persistence"]["rmse"], "trivial_name": "persistence"}
    counts = entry["files"]["test"]["class_counts"]
    deep = [(v["acc"], key) for key, v in entry["published"].items() if key in DEEP_BASELINES and v]
    best_acc, best_key = max(deep)
    return {"baseline": computed["1nn_dtw_full"], "baseline_name": "1-NN DTW",
            "trivial": max(counts) / sum(counts), "trivial_name": "majority",
            "deep": best_acc, "deep_name": best_key}


def mean_sd(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summarize(name: str, entry: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset: test score, best CV score and their gap (positive: CV flattered) over the seeds."""
    metric = "accuracy" if entry["task"] == "classification" else "rmse"
    scored = [r for r in runs if "test" in r]
    tests = [r["test"][metric] for r in scored]
    cvs = [r["best"]["value"] for r in scored]
    gaps = [cv - test if metric == "accuracy" else test - cv for cv, test in zip(cvs, tests)]
    ensembles = [r["ensemble"]["test"][metric] for r in scored if "ensemble" in r]
    return {"dataset": name, "metric": metric, "runs": len(runs), "scored": len(scored),
            "kinds": sorted({r["model"]["kind"] for r in scored}),
            "test": tests, "ensemble": ensembles, "cv": cvs, "gap": gaps,
            "trials": [r["trials"]["complete"] + r["trials"]["pruned"] for r in runs if "trials" in r],
            "pruned": [r["trials"]["pruned"] for r in runs if "trials" in r],
            "wall_s": [r["wall_s"] for r in runs], "errors": [r["error"] for r in runs if "error" in r],
            "references": references(entry)}


def table(summaries: list[dict[str, Any]]) -> str:
    """The summaries as a Markdown table: the test score of the final model served (its kind
    in brackets) and, when it was not the ensemble, the same studies' ensemble's."""
    with_ensemble = any(s["ensemble"] for s in summaries)
    lines = ["| dataset | metric | test (mean ± sd) | " + ("ensemble test | " if with_ensemble else "")
             + "best CV | CV−test gap | baseline | trivial | best deep | trials (pruned) | wall s |",
             "|---|---|---|" + ("---|" if with_ensemble else "") + "---|---|---|---|---|---|---|"]
    for s in summaries:
        digits = 3 if s["metric"] == "accuracy" or s["references"]["baseline"] < 10 else 1
        ref = s["references"]
        deep = f"{ref['deep']:.3f} {ref['deep_name']}" if "deep" in ref else "–"
        trials = f"{statistics.mean(s['trials']):.0f} ({statistics.mean(s['pruned']):.0f})" if s["trials"] else "–"
        failed = f" ({len(s['errors'])} of {s['runs']} failed)" if s["errors"] else ""
        kinds = f" ({', '.join(s['kinds'])})" if s["kinds"] else ""
        lines.append(
            f"| {s['dataset']} | {s['metric']} | {mean_sd(s['test'], digits)}{kinds}{failed} | "
            + (f"{mean_sd(s['ensemble'], digits)} | " if with_ensemble else "") + f"{mean_sd(s['cv'], digits)} "
            f"| {mean_sd(s['gap'], digits)} | {ref['baseline_name']} {ref['baseline']:.{digits}f} "
            f"| {ref['trivial_name']} {ref['trivial']:.{digits}f} | {deep} | {trials} "
            f"| {statistics.mean(s['wall_s']):.0f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DATA, help=f"the suite's folder (default {DATA})")
    parser.add_argument("--datasets", nargs="+", help="these datasets only (default: every one in the manifest)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"budget.timeout_s of every study (default {DEFAULT_BUDGET_S})")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help=f"seeds 0..N-1 (default {DEFAULT_SEEDS})")
    parser.add_argument("--quick", action="store_true", help="one seed")
    parser.add_argument("--set", dest="overlay", action="append", default=[], metavar="PATH=VALUE",
                        help="lay this over every spec, e.g. pruner.name=none or final_model.seeds=5 (repeatable)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args(argv)

    manifest_path = args.data / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(f"no quality suite at {args.data} (manifest.json missing); give --data DIR")
    manifest = json.loads(manifest_path.read_text())["datasets"]
    names = args.datasets or list(manifest)
    unknown = [n for n in names if n not in manifest]
    if unknown:
        raise SystemExit(f"--datasets: unknown {', '.join(unknown)}; the suite has {', '.join(manifest)}")
    seeds = list(range(1 if args.quick else args.seeds))
    overlay = parse_overlay(args.overlay)

    header(f"quality suite: {len(names)} datasets x {len(seeds)} seeds, budget {args.budget_s:g} s, "
           f"{WORKERS} workers" + (f", overlay {json.dumps(overlay)}" if overlay else ""))
    started = dt.datetime.now().astimezone()
    runs = []
    for seed in seeds:
        for name in names:
            result: dict[str, Any] = {"dataset": name, "seed": seed}
            start = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="bench-quality-") as workdir:
                try:
                    run_one(result, args.data, manifest[name], args.budget_s, overlay, Path(workdir))
                except Exception as exc:  # one dataset's refusal or timeout is a result; the others still run
                    result["error"] = f"{type(exc).__name__}: {exc}"
                    finish(result, start)
            runs.append(result)
            scored = result.get("test") or {"error": result.get("error")}
            kind = (result.get("model") or {}).get("kind")
            ensemble = f" ensemble {json.dumps(result['ensemble']['test'])}" if "ensemble" in result else ""
            print(f"{name} seed {seed}: {kind} {json.dumps(scored)}{ensemble} cv {result.get('best', {}).get('value')} "
                  f"trials {result.get('trials')} wall {result['wall_s']:.0f} s", flush=True)

    summaries = [summarize(n, manifest[n], [r for r in runs if r["dataset"] == n]) for n in names]
    print(f"\n{table(summaries)}")
    loads = [r[k] for r in runs for k in ("load_avg_start", "load_avg_end") if k in r]
    print("\ngap: best CV score minus test accuracy, or test RMSE minus best CV RMSE (positive: CV flattered)"
          + (f"; load average {min(loads):.1f}-{max(loads):.1f} at the runs' starts and ends" if loads else ""))
    for s in summaries:
        for error in s["errors"]:
            print(f"{s['dataset']}: {error}")
    if args.json:
        args.json.write_text(json.dumps({"started": started.isoformat(), "argv": argv, "budget_s": args.budget_s,
                                         "seeds": seeds, "overlay": overlay, "runs": runs, "summaries": summaries},
                                        indent=1, default=str))
    footer("bench_quality", argv)


if __name__ == "__main__":
    main(sys.argv[1:])

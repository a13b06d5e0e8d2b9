"""The short soak (bench/bench_soak.py): two workers, 40 trials, 5 polling clients on SQLite.
No "database is locked", no API error, no trial lost or counted twice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.processes import REPO

pytestmark = [pytest.mark.slow, pytest.mark.service]


def test_short_soak_on_sqlite(tmp_path):
    figures = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-m", "bench.bench_soak", "--trials", "40", "--pollers", "5",
                          "--json", str(figures)], cwd=REPO, capture_output=True, text=True, timeout=300)

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(figures.read_text())
    assert result["state"] == "completed"
    assert result["finished"] == 40 and result["lost"] == 0 and result["duplicated"] == 0
    assert result["left_running"] == 0
    assert result["database_locked_lines"] == 0 and result["api_5xx"] == 0
    assert result["latency"]["all"]["n"] > 100  # the pollers did poll throughout

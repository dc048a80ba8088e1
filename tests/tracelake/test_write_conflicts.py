"""Two real processes write one Delta table at once: the idempotent replace is retried, else one line names
the other writer's run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("concurrent_writer.py")

pytestmark = pytest.mark.slow


def test_two_writers_conflict_then_retry(tmp_path):
    lake, sync = tmp_path / "lake", tmp_path / "sync"
    sync.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRACELAKE_CONFIG", None)
    # Round 0: no retries, the slow writer loses. Round 1: two retries, it wins after the fast one.
    writers = {
        role: subprocess.Popen(
            [sys.executable, str(WRITER), str(lake), role, str(sync), "0", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for role in ("slow", "fast")
    }
    results = {}
    for role, process in writers.items():
        out, err = process.communicate(timeout=1500)  # two JVMs on a busy machine
        assert process.returncode == 0, err[-3000:]
        results[role] = [
            json.loads(line[len("RESULT ") :]) for line in out.splitlines() if line.startswith("RESULT ")
        ]
    slow, fast = results["slow"], results["fast"]
    assert len(slow) == len(fast) == 2 and all("error" not in r for r in fast)

    error = slow[0]["error"]
    assert "\n" not in error and error.startswith("table monitoring_drift at ")
    assert "another writer committed while this run was writing (run fast-round0 (job writer-fast" in error
    assert "after 0 retries" in error

    assert "error" not in slow[1]
    table = DeltaTable(str(lake / "monitoring" / "drift"))
    assert table.to_pyarrow_table().column("feature").to_pylist() == ["slow1"]
    run_ids = [json.loads(h.get("userMetadata") or "{}").get("run_id") for h in table.history()]
    assert run_ids[0] == "slow-round1" and {"fast-round0", "fast-round1"} <= set(run_ids)
    assert "slow-round0" not in run_ids  # the losing commit left nothing

"""The benchmark script runs end to end on a tiny input (its mechanics, not its speed: nothing is timed here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def test_benchmark_runs_and_writes_its_result(tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--size", "4MiB", "--workdir", str(tmp_path),
                           "--tools", "zarrchive-compat,ceiling", "--repeat", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["tool"]: r for r in result["rows"]}
    assert set(rows) == {"zarrchive-compat", "ceiling"} and not any("error" in r for r in rows.values())
    ours = rows["zarrchive-compat"]
    assert ours["level0_exact"] and ours["valid"] is True and ours["anti_aliased"]
    assert ours["ratio"] > 1 and ours["files"] > 0 and ours["peak_rss_mib"] > 0 and ours["cpu_s"] > 0
    assert rows["ceiling"]["level0_exact"] and len(rows["ceiling"]["walls_s"]) == 2  # --repeat: every run kept
    assert any("bare-copy ceiling" in line for line in result["targets"])
    assert result["versions"]["zarr"].startswith("3.") and result["machine"]["cpus"] >= 1
    assert "zarrchive-compat" in done.stdout and "MB/s" in done.stdout

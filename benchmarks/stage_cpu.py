"""Benchmark: where a many-image ingest spends its CPU, stage by stage and process by process.

    .venv/bin/python benchmarks/stage_cpu.py [--images 2000] [--repeat 1] [--out FILE]

One ``zarrchive ingest`` of ``many.py``'s submission (256x256 uint16 crops of scikit-image's real samples),
from the command line with a Prefect database of its own. While it runs, the CPU seconds of every process of
its tree are read from ``/proc`` (psutil) four times a second and kept by kind: the flow's process (``main``:
the flow, its stage tasks and the local Dask scheduler), the temporary Prefect API (``api``) and the Dask
workers (``worker``). After it, each stage's span is read from the run's Prefect database (its task runs'
first start and last end), and the CPU each kind used within it is printed (to a quarter of a second: a stage
shorter than a second is too short to say): a stage whose CPU is near two seconds a second on two cores is bound
by the CPU, one well below it waits for something. It writes JSON
(default ``benchmarks/results/stage-cpu-<time>.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
KINDS = (("uvicorn", "api"), ("spawn_main", "worker"), ("zarrchive ingest", "main"))


def _kind(process) -> str:
    try:
        command = " ".join(process.cmdline())
    except Exception:
        return "gone"
    return next((kind for mark, kind in KINDS if mark in command), "other")


def measure(folder: Path, root: Path) -> dict:
    """One ingest of ``folder`` with its own Prefect home under ``root``: its wall time, the CPU seconds of each
    kind of process over the run and within each stage's span."""
    import os

    import psutil

    sys.path.insert(0, str(HERE))
    from many import config

    home = root / "prefect"
    home.mkdir(parents=True)
    env = {**os.environ, "PREFECT_HOME": str(home)}
    started = time.time()
    with open(root / "out.json", "w") as out, open(root / "err.txt", "w") as err:
        run = subprocess.Popen([str(BIN / "zarrchive"), "ingest", str(folder), "--archive", str(root / "archive"),
                                "--config", str(config(root / "config.yaml", root / "work")), "--json"],
                               env=env, stdout=out, stderr=err)
    top = psutil.Process(run.pid)
    kinds: dict[int, str] = {}
    last: dict[int, float] = {}
    samples: list[tuple[float, dict[str, float]]] = []
    while run.poll() is None:
        try:
            processes = [top] + top.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            kinds.setdefault(process.pid, _kind(process))
            last[process.pid] = times.user + times.system
        totals: dict[str, float] = {}
        for pid, seconds in last.items():
            totals[kinds[pid]] = totals.get(kinds[pid], 0.0) + seconds
        samples.append((time.time(), totals))
        time.sleep(0.25)
    wall = time.time() - started
    result = json.loads((root / "out.json").read_text().strip().splitlines()[-1])
    if run.returncode != 0 or result.get("status") != "published":
        errors = (root / "err.txt").read_text()[-3000:]
        raise SystemExit(f"zarrchive ingest did not publish ({run.returncode}): {errors}")

    def at(moment: float) -> dict[str, float]:
        before = [totals for when, totals in samples if when <= moment]
        return before[-1] if before else samples[0][1]

    def epoch(text: str) -> float:
        moment = dt.datetime.fromisoformat(text.replace(" ", "T"))
        return (moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)).timestamp()

    with sqlite3.connect(home / "prefect.db") as db:
        spans = db.execute("select substr(name, 1, instr(name || ':', ':') - 1), min(start_time), max(end_time) "
                           "from task_run group by 1 order by min(start_time)").fetchall()
    stages = []
    for name, first, end in spans:
        begun, ended = at(epoch(first)), at(epoch(end))
        stages.append({"stage": name.split("-")[0], "seconds": round(epoch(end) - epoch(first), 1),
                       "cpu_s": {kind: round(ended.get(kind, 0.0) - begun.get(kind, 0.0), 1) for kind in ended}})
    return {"wall_s": round(wall, 1), "cpu_s": {k: round(v, 1) for k, v in samples[-1][1].items()},
            "stages": stages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", help="JSON result (default: benchmarks/results/stage-cpu-<time>.json)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from many import submission
    from run import machine, write_result

    runs = []
    with tempfile.TemporaryDirectory(prefix="zarrchive-stage-cpu-") as tmp:
        folder = submission(Path(tmp) / "submission", args.images)
        for r in range(args.repeat):
            measured = measure(folder, Path(tmp) / f"run-{r}")
            runs.append(measured)
            print(f"{args.images} images: {measured['wall_s']} s, CPU {measured['cpu_s']} "
                  f"({sum(measured['cpu_s'].values()):.1f} s in all)")
            for stage in measured["stages"]:
                used = sum(stage["cpu_s"].values())
                rate = f"({used / stage['seconds']:.2f} a second)" if stage["seconds"] >= 1 else "(too short to say)"
                print(f"  {stage['stage']:<16} {stage['seconds']:6.1f} s  CPU {used:6.1f} s {rate}  {stage['cpu_s']}")
    write_result({"benchmark": "stage_cpu", "images": args.images, "machine": machine(), "runs": runs},
                 args.out, "stage-cpu-")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

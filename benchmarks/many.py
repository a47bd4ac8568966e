"""Benchmark: submissions of many small images, and scale-out on a cluster started as a facility runs one.

    .venv/bin/python benchmarks/many.py [--images 20,120] [--workers 1,2] [--edge 256] [--planes 1] [--repeat 1]
                                        [--out FILE]

Images: 256x256 uint16 tiles cut from the real microscopy images scikit-image ships (``cell``, ``ihc``; no
download), each tile a different crop, written as OME-TIFF; with ``--edge`` and ``--planes``, larger images
(z-stacks) made of such crops, for submissions whose pixel work outweighs their orchestration. For each submission size the same run measures:

- a bare loop: read each file with tifffile and write it as its own Zarr v3 array (zstd), one process;
- ``zarrchive ingest`` from the command line, a fresh process (its own temporary Prefect API and Dask
  cluster): the whole run, from which the cost of one more image (the slope between the two sizes) and the
  fixed cost of a run (the intercept) follow.

With ``--workers``, the largest submission is ingested again against a Dask scheduler and workers started as
separate processes in the environment ``zarrchive worker-env`` prints (``dask scheduler``, ``dask worker --nworkers K
--nthreads 1``; ``cluster.address``), once
per K, and the throughputs are compared, with the CPU of the run's own processes (the flow, its temporary
Prefect API) and of the scheduler and workers. It prints the figures and the issue's targets, and writes JSON
(default ``benchmarks/results/many-<time>.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def tiles(count: int, edge: int = 256, planes: int = 1) -> list[np.ndarray]:
    """``count`` different ``planes`` x ``edge`` x ``edge`` uint16 images (256x256 alone: 2-D) made of 256x256
    crops of scikit-image's real samples (8-bit scaled to 16-bit, with the shot noise a 16-bit camera adds),
    each crop a different one."""
    from skimage import data

    sources = [data.cell().astype(np.float64), data.immunohistochemistry().mean(axis=-1)]
    rng = np.random.default_rng(0)
    side = -(-edge // 256)
    out = []
    for i in range(count):
        image = sources[i % len(sources)]
        stack = np.empty((planes, side * 256, side * 256), np.uint16)
        for k in range(planes):
            for a in range(side):
                for b in range(side):
                    y = rng.integers(0, image.shape[0] - 256)
                    x = rng.integers(0, image.shape[1] - 256)
                    crop = image[y:y + 256, x:x + 256] * 64 + 100
                    stack[k, a * 256:(a + 1) * 256, b * 256:(b + 1) * 256] = np.clip(rng.poisson(crop), 0, 65535)
        stack = stack[:, :edge, :edge]
        out.append(stack[0] if planes == 1 else stack)
    return out


def submission(folder: Path, count: int, edge: int = 256, planes: int = 1) -> Path:
    import tifffile
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, tile in enumerate(tiles(count, edge, planes)):
        name = f"field_{i:05d}.ome.tif"
        tifffile.imwrite(folder / name, tile[None], ome=True, metadata={"axes": "CYX" if tile.ndim == 2 else "CZYX"},
                         resolution=(1 / 0.325, 1 / 0.325))
        files.append({"path": name})
    (folder / "submission.yaml").write_text(yaml.safe_dump({
        "title": f"Benchmark submission of {count} fields", "description": "benchmarks/many.py",
        "license": "CC0-1.0", "release_date": "2026-01-01",
        "authors": [{"name": "Benchmark Author", "email": "bench@example.org"}], "files": files,
        "imaging_method": {"name": "fluorescence microscopy"}}, sort_keys=False))
    return folder


def bare_loop(folder: Path, out: Path) -> float:
    """Seconds to read each image with tifffile and write it as its own Zarr array (zstd)."""
    import tifffile
    import zarr
    from zarr.codecs import ZstdCodec

    paths = sorted(folder.glob("*.ome.tif"))
    started = time.perf_counter()
    for path in paths:
        data = tifffile.imread(path)
        zarr.create_array(str(out / path.name.replace(".ome.tif", ".zarr")), shape=data.shape, dtype=data.dtype,
                          chunks=data.shape, compressors=[ZstdCodec(level=3)], zarr_format=3)[...] = data
    return time.perf_counter() - started


def ingest(folder: Path, archive: Path, config: Path) -> tuple[float, dict]:
    """Seconds of one ``zarrchive ingest`` and its JSON result, with the CPU seconds of its process tree (the flow,
    its temporary Prefect API, a LocalCluster's workers) as ``cpu_s``."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run = subprocess.run([str(BIN / "zarrchive"), "ingest", str(folder), "--archive", str(archive), "--config",
                          str(config), "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        result = json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise SystemExit(f"zarrchive ingest failed ({run.returncode}):\n{run.stderr[-3000:]}")
    if result.get("status") != "published":
        raise SystemExit(f"zarrchive ingest did not publish: {result.get('status')} {result.get('reasons')}")
    result["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, result


def config(path: Path, work: Path, address: str | None = None) -> Path:
    import yaml

    cluster = {"address": address} if address else {}
    path.write_text(yaml.safe_dump({"staging": {"work": str(work)}, "cluster": cluster,
                                    "publish": {"on_image_error": "skip_image"}}))
    return path


class Cluster:
    """A Dask scheduler and ``workers`` worker processes (one thread each), started as separate processes."""

    def __init__(self, folder: Path, workers: int, memory_limit: str = "4GiB"):
        import os

        folder.mkdir(parents=True, exist_ok=True)
        # started as README's "Running on a cluster" tells a facility: in the environment `zarrchive worker-env`
        # prints (the memory and allocator thresholds zarrchive gives the workers it starts itself)
        said = subprocess.run([str(BIN / "zarrchive"), "worker-env", "--memory-limit", memory_limit, "--json"],
                              capture_output=True, text=True, check=True)
        env = dict(os.environ, **json.loads(said.stdout)["environment"])
        self.file = folder / "scheduler.json"
        self.procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                        "--no-dashboard", "--scheduler-file", str(self.file)], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        deadline = time.monotonic() + 60
        while not self.file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]
        self.procs.append(subprocess.Popen([str(BIN / "dask"), "worker", "--scheduler-file", str(self.file),
                                            "--nworkers", str(workers), "--nthreads", "1", "--no-dashboard",
                                            "--memory-limit", memory_limit],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)

    def cpu_seconds(self) -> float:
        """CPU seconds the scheduler and workers (their whole process trees) have used so far."""
        import psutil

        total = 0.0
        for proc in self.procs:
            try:
                tree = psutil.Process(proc.pid)
                for p in [tree] + tree.children(recursive=True):
                    times = p.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="20,120", help="submission sizes, comma-separated (two or more)")
    parser.add_argument("--workers", default="", help="worker processes of a separate cluster, e.g. 1,2")
    parser.add_argument("--edge", type=int, default=256, help="image edge in pixels (256: the crops themselves)")
    parser.add_argument("--planes", type=int, default=1, help="z planes per image (1: 2-D images)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the median counts")
    parser.add_argument("--out", help="JSON result (default: benchmarks/results/many-<time>.json)")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.images.split(","))
    workers = [int(n) for n in args.workers.split(",") if n]
    root = Path(tempfile.mkdtemp(prefix="zarrchive-many-"))
    sys.path.insert(0, str(HERE))
    from run import machine, write_result

    result: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(), "machine": machine(),
                    "image": {"edge": args.edge, "planes": args.planes, "dtype": "uint16"}, "sizes": {},
                    "scale_out": {}}
    print(f"images: {args.planes} x {args.edge} x {args.edge} uint16 "
          f"({args.planes * args.edge * args.edge * 2 / 2**20:.2f} MiB each)", flush=True)
    try:
        for n in sizes:
            folder = submission(root / f"sub-{n}", n, args.edge, args.planes)
            bare = sorted(bare_loop(folder, root / f"bare-{n}-{r}") for r in range(args.repeat))[args.repeat // 2]
            runs = []
            for r in range(args.repeat):
                seconds, _ = ingest(folder, root / f"archive-{n}-{r}", config(root / f"c-{n}-{r}.yaml",
                                                                              root / f"work-{n}-{r}"))
                runs.append(seconds)
            result["sizes"][n] = {"bare_s": bare, "ingest_s": sorted(runs)[args.repeat // 2], "runs": runs}
            print(f"{n:>6} images: bare loop {bare:7.2f} s ({1000 * bare / n:6.1f} ms each); zarrchive ingest "
                  f"{result['sizes'][n]['ingest_s']:7.1f} s", flush=True)
        small, large = sizes[0], sizes[-1]
        slope = (result["sizes"][large]["ingest_s"] - result["sizes"][small]["ingest_s"]) / (large - small)
        fixed = result["sizes"][small]["ingest_s"] - slope * small
        bare_each = result["sizes"][large]["bare_s"] / large
        result.update(per_image_s=slope, fixed_s=fixed, bare_per_image_s=bare_each, ratio=slope / bare_each)
        print(f"one more image: {1000 * slope:.0f} ms, the bare loop {1000 * bare_each:.1f} ms: "
              f"{slope / bare_each:.1f}x -> {'PASS' if slope / bare_each <= 10 else 'FAIL'} (target: <= 10x)")
        print(f"fixed cost of a run (temporary Prefect API, Dask cluster, intake, QC, publish): {fixed:.1f} s")
        for k in workers:
            runs = []
            for r in range(args.repeat):  # a fresh cluster each run, as a facility's would be between runs
                cluster = Cluster(root / f"cluster-{k}-{r}", k)
                try:
                    folder = root / f"sub-{large}"
                    idle = cluster.cpu_seconds()
                    seconds, done = ingest(folder, root / f"archive-k{k}-{r}",
                                           config(root / f"ck{k}-{r}.yaml", root / f"wk{k}-{r}", cluster.address))
                    runs.append({"s": seconds, "run_cpu_s": done["cpu_s"], "cluster_cpu_s": cluster.cpu_seconds() - idle})
                finally:
                    cluster.close()
            median = sorted(runs, key=lambda run: run["s"])[args.repeat // 2]
            seconds = median["s"]
            result["scale_out"][k] = {"ingest_s": seconds, "images_per_s": large / seconds, "runs": runs}
            print(f"{k} worker process(es): {large} images in {seconds:.1f} s ({large / seconds:.2f} images/s; runs "
                  f"{', '.join(f'{t:.1f}' for t in (run['s'] for run in runs))}); CPU of the median run: the ingest's "
                  f"processes {median['run_cpu_s']:.1f} s, the scheduler and workers {median['cluster_cpu_s']:.1f} s",
                  flush=True)
        if len(workers) >= 2:
            gain = result["scale_out"][workers[-1]]["images_per_s"] / result["scale_out"][workers[0]]["images_per_s"]
            result["scale_out_gain"] = gain
            print(f"throughput {workers[-1]} vs {workers[0]} worker process(es): {gain:.2f}x -> "
                  f"{'PASS' if gain >= 1.8 else 'FAIL'} (target: >= 1.8x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_result(result, args.out, "many-")
    return 0


if __name__ == "__main__":
    sys.exit(main())

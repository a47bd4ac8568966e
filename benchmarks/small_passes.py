"""Benchmark: what the pixel work of one small image costs, in one process on one Dask cluster (no Prefect).

    .venv/bin/python benchmarks/small_passes.py [--images 30] [--repeat 2] [--out FILE]

Images: ``--images`` different 256x256 uint16 crops of scikit-image's real samples (``many.tiles``), written as
OME-TIFF, converted and planned once. Measured per image, in the same run:

- compress as a small image is compressed (its whole pass in one task, ``passes.whole_image``) and as a large
  one is (a codec trial, then the streaming pass region by region, then the small levels);
- QC's facts of a store (chunk statistics, the NGFF validator's findings) gathered one round trip per image, and
  for every image at once (``qc.store_facts_of``).

It prints the medians and writes JSON (default ``benchmarks/results/passes-<time>.json``). The end-to-end cost of
an image in a run (Prefect, intake, publish) is ``many.py``'s.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2, help="rounds of each measurement")
    parser.add_argument("--out", help="JSON result (default: benchmarks/results/passes-<time>.json)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import tifffile
    from many import tiles
    from run import machine, write_result

    from zarrchive.cluster import cluster_for_run
    from zarrchive.config import load_settings
    from zarrchive.records import FileRecord
    from zarrchive.tasks import compress, qc
    from zarrchive.tasks.convert import convert_file
    from zarrchive.tasks.pyramid import build_pyramid

    settings = load_settings()
    result: dict[str, list[float]] = {"compress_whole_ms": [], "compress_streamed_ms": [], "qc_each_ms": [],
                                      "qc_together_ms": []}
    with tempfile.TemporaryDirectory(prefix="zarrchive-passes-") as tmp, \
            cluster_for_run(settings.cluster) as address:
        work = Path(tmp)
        items = []
        for i, tile in enumerate(tiles(args.images)):
            path = work / f"tile{i:04d}.ome.tif"
            tifffile.imwrite(path, tile, ome=True)
            record = FileRecord(path=path.name, source_uri=str(path), staged_path=str(path),
                                size=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                                kind="image")
            [image] = convert_file(record, None, str(work / "convert"), settings.convert)
            items.append((build_pyramid(image, settings.pyramid), record))
        small = compress._level0_bytes
        for round_ in range(args.repeat):
            for kind, size_of in (("whole", small), ("streamed", lambda image: 1 << 62)):
                compress._level0_bytes = size_of  # what decides the pass: an image's level-0 bytes
                times = []
                for image, record in items:
                    started = time.perf_counter()
                    compress.compress_image(image, record, str(work / f"{kind}{round_}"), settings.compress, address)
                    times.append((time.perf_counter() - started) * 1000)
                result[f"compress_{kind}_ms"].append(statistics.median(times))
        compress._level0_bytes = small
        pairs = [(image, compress.compress_image(image, record, str(work / "qc"), settings.compress, address))
                 for image, record in items]
        for _round in range(args.repeat):
            started = time.perf_counter()
            for image, report in pairs:
                qc.store_facts(image, report, address)
            result["qc_each_ms"].append((time.perf_counter() - started) * 1000 / len(pairs))
            started = time.perf_counter()
            qc.store_facts_of(pairs, address)
            result["qc_together_ms"].append((time.perf_counter() - started) * 1000 / len(pairs))
    for name, values in result.items():
        print(f"{name:>22}: " + ", ".join(f"{v:.1f}" for v in values) + " (per image; median of each round)")
    def ratio(a: str, b: str) -> float:
        return statistics.median(result[a]) / statistics.median(result[b])

    print(f"compress, one task against streamed: {ratio('compress_whole_ms', 'compress_streamed_ms'):.2f}x; "
          f"QC facts together against one by one: {ratio('qc_together_ms', 'qc_each_ms'):.2f}x")
    write_result({"images": args.images, "repeat": args.repeat, "machine": machine(), **result}, args.out, "passes-")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Brute-force codec search: per image, every lossless codec and level against what the profiles choose.

    .venv/bin/python benchmarks/codec_search.py [--inputs DIR] [--chunks 16] [--quick] [--out FILE]
    .venv/bin/python benchmarks/run.py --brute-force [...]     # the same, from the main benchmark

Images: the real microscopy images scikit-image installs with itself (``cell``, 8-bit; ``ihc``, an 8-bit RGB
section as three planes), a 16-bit fluorescence-like z-stack (run.py's synthetic generator: blobs, shot and
read noise), a float32 image made from ``cell`` (normalised, with read noise), and every TIFF in ``--inputs``.
Each image is cut into zarrchive's chunks (one plane, 512 x 512) and ``--chunks`` whole chunks spread over it
are encoded, one after another on one thread, with every candidate:

- the standard Zarr v3 codecs: blosc (zstd, lz4, lz4hc, zlib, blosclz; levels 1, 3, 5, 7, 9; no shuffle, byte
  shuffle, bit shuffle) and zstd at every level 1-22;
- pcodec (numcodecs, levels 0-12), and imagecodecs' JPEG-XL (efforts 1-9), JPEG-LS and HTJ2K (lossless).

Every candidate's decoded chunks are compared bit for bit with the source (``choose_codec``'s round trip). The
table per image gives bytes, bytes against the best candidate, and encode and decode speed. Then what the
``compat`` and ``max`` profiles choose for the image (on their own sample, as compress does) is looked up in the
same table, and the issue's targets are printed: ``max`` within 3 % of the best candidate, ``compat`` within
5 % of the best standard codec, both never above ome-zarr-py's default (blosc zstd 5, byte shuffle), with the
profiles' throughput floor (``compress.min_encode_mbps``) stated beside.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CHUNK = (512, 512)
OME_ZARR_DEFAULT = {"codec": "blosc", "cname": "zstd", "clevel": 5, "shuffle": "shuffle"}


def standard_candidates(quick: bool = False) -> list[dict[str, Any]]:
    """Every blosc and zstd configuration tried: what any Zarr v3 reader reads."""
    levels = (1, 5, 9) if quick else (1, 3, 5, 7, 9)
    cnames = ("zstd", "lz4") if quick else ("zstd", "lz4", "lz4hc", "zlib", "blosclz")
    out = [{"codec": "blosc", "cname": c, "clevel": lv, "shuffle": s} for c in cnames for lv in levels
           for s in ("noshuffle", "shuffle", "bitshuffle")]
    return out + [{"codec": "zstd", "clevel": lv} for lv in ((1, 3, 9, 19, 22) if quick else range(1, 23))]


def other_candidates(quick: bool = False) -> list[dict[str, Any]]:
    """pcodec and imagecodecs' lossless image codecs."""
    efforts = (1, 5, 9) if quick else range(1, 10)
    return ([{"codec": "pcodec", "level": lv} for lv in ((0, 4, 8, 12) if quick else range(0, 13))]
            + [{"codec": "jpegxl", "level": e} for e in efforts]
            + [{"codec": "jpegls"}, {"codec": "htj2k"}])


def images(inputs: Path | None, workdir: Path) -> dict[str, Callable[[], np.ndarray]]:
    """The images measured, each made (or read) when it is measured, as (planes, y, x)."""
    import tifffile
    from skimage import data

    from run import synthetic

    def normalised_cell() -> np.ndarray:
        cell = data.cell().astype(np.float32) / 255.0
        return (cell + np.random.default_rng(1).normal(0, 0.01, cell.shape).astype(np.float32))[None]

    def read(path: Path) -> np.ndarray:
        array = tifffile.imread(path)
        return array.reshape(-1, *array.shape[-2:])

    out: dict[str, Callable[[], np.ndarray]] = {
        "cell (8-bit)": lambda: data.cell()[None],
        "ihc (8-bit RGB)": lambda: np.moveaxis(data.immunohistochemistry(), -1, 0),
        "fluorescence z-stack (16-bit)": lambda: tifffile.imread(
            synthetic(workdir / "codecs-uint16.tif", 16 * 2048 * 2048 * 2)),
        "cell, normalised (float32)": normalised_cell,
    }
    for path in sorted(inputs.glob("*.tif*")) if inputs else []:
        out[path.name] = lambda path=path: read(path)
    return out


def chunks_of(image: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` whole chunks spread evenly over the image (the whole image when it is smaller than a chunk)."""
    from zarrchive.pixels.codecs import sample_regions

    regions = sample_regions(image.shape, (1, *CHUNK), n)
    return [np.ascontiguousarray(image[r]) for r in regions]


def key(spec: dict[str, Any]) -> str:
    from zarrchive.config import CodecSpec

    return CodecSpec(**spec).label()


def measure(name: str, image: np.ndarray, n: int, quick: bool) -> dict[str, Any]:
    from zarrchive.config import CodecSpec, load_settings
    from zarrchive.pixels.codecs import choose_codec, sample_regions

    chunks = chunks_of(image, n)
    specs = standard_candidates(quick) + other_candidates(quick)
    trials = choose_codec(chunks, [CodecSpec(**s) for s in specs], 0.0, time_all=True).candidates
    rows = []
    for spec, trial in zip(specs, trials):
        if trial.skipped:
            continue
        rows.append({"codec": key(spec), "standard": spec["codec"] in ("blosc", "zstd"), "bytes": trial.stored_bytes, "encode_mbps": trial.encode_mbps,
            "decode_mbps": trial.decode_mbps})
    table = {r["codec"]: r for r in rows}
    for spec in (OME_ZARR_DEFAULT,):
        if key(spec) not in table:  # (the quick set may leave it out)
            [trial] = choose_codec(chunks, [CodecSpec(**spec)], 0.0, time_all=True).candidates
            table[key(spec)] = {"codec": key(spec), "standard": True, "bytes": trial.stored_bytes,
                                "encode_mbps": trial.encode_mbps, "decode_mbps": trial.decode_mbps}
    chosen, floors = {}, {}
    for profile in ("compat", "max"):
        settings = load_settings(overrides={"compress": {"profile": profile}}).compress
        floors[profile] = settings.floor()
        sample = [np.ascontiguousarray(image[r]) for r in
                  sample_regions(image.shape, (1, *CHUNK), settings.sample_chunks)]
        selection = choose_codec(sample, settings.candidates(), **settings.choice(image.nbytes))  # (the whole image)
        spec = settings.candidates()[selection.chosen].model_dump(exclude={"slow"})
        label = key(spec)
        if label not in table:
            [trial] = choose_codec(chunks, [CodecSpec(**spec)], 0.0, time_all=True).candidates
            table[label] = {"codec": label, "standard": spec["codec"] in ("blosc", "zstd"),
                            "bytes": trial.stored_bytes, "encode_mbps": trial.encode_mbps,
                            "decode_mbps": trial.decode_mbps}
        chosen[profile] = label
    return {"image": name, "dtype": str(image.dtype), "shape": list(image.shape),
            "chunks": len(chunks), "raw_bytes": int(sum(c.nbytes for c in chunks)),
            "rows": sorted(table.values(), key=lambda r: r["bytes"]), "chosen": chosen,
            "min_encode_mbps": floors}


def report(result: dict[str, Any], top: int = 12) -> list[str]:
    rows = result["rows"]
    best = rows[0]
    best_standard = next(r for r in rows if r["standard"])
    lines = [f"\n{result['image']}: {result['dtype']} {result['shape']}, {result['chunks']} chunks "
             f"({result['raw_bytes'] / 1e6:.1f} MB raw)",
             f"  {'codec':<32} {'bytes':>12} {'x best':>8} {'ratio':>7} {'enc MB/s':>9} {'dec MB/s':>9}"]
    shown = rows[:top] + [r for r in rows[top:] if r["codec"] in (*result["chosen"].values(), key(OME_ZARR_DEFAULT),
                                                                   best_standard["codec"])]
    for r in shown:
        marks = "".join(f" <- {p}" for p, c in result["chosen"].items() if c == r["codec"])
        marks += " <- ome-zarr-py default" if r["codec"] == key(OME_ZARR_DEFAULT) else ""
        lines.append(f"  {r['codec']:<32} {r['bytes']:>12,} {r['bytes'] / best['bytes']:>8.3f} "
                     f"{result['raw_bytes'] / r['bytes']:>7.2f} {r['encode_mbps']:>9.1f} {r['decode_mbps']:>9.1f}"
                     f"{marks}")
    table = {r["codec"]: r for r in rows}
    default = table[key(OME_ZARR_DEFAULT)]["bytes"]
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    mx, compat = table[result["chosen"]["max"]], table[result["chosen"]["compat"]]
    lines += [
        f"  max ({mx['codec']}) / best candidate ({best['codec']}): {mx['bytes'] / best['bytes']:.3f} -> "
        f"{verdict(mx['bytes'] <= 1.03 * best['bytes'])} (target: <= 1.03)",
        f"  compat ({compat['codec']}) / best standard ({best_standard['codec']}): "
        f"{compat['bytes'] / best_standard['bytes']:.3f} -> {verdict(compat['bytes'] <= 1.05 * best_standard['bytes'])}"
        " (target: <= 1.05)",
        f"  compat / ome-zarr-py default: {compat['bytes'] / default:.3f}, max / default: {mx['bytes'] / default:.3f}"
        f" -> {verdict(compat['bytes'] <= default and mx['bytes'] <= default)} (target: never above)",
    ]
    floors = result["min_encode_mbps"]
    floors = floors if isinstance(floors, dict) else {"compat": floors, "max": floors}  # (older result files)
    for profile, floor in floors.items():
        lines.append(
            f"  {profile}'s throughput floor {floor:g} MB/s on one thread (compress.min_encode_mbps): the best "
            f"candidate encodes at {best['encode_mbps']:.1f} MB/s, the best above the floor is "
            + next((f"{r['codec']} ({r['bytes'] / best['bytes']:.3f}x best)" for r in rows
                    if r["encode_mbps"] >= floor), "none"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=Path, help="a folder of real TIFF files to include")
    parser.add_argument("--chunks", type=int, default=16, help="whole 512x512 chunks per image (default 16)")
    parser.add_argument("--quick", action="store_true", help="a subset of the levels (for a smoke run)")
    parser.add_argument("--only", help="measure only images whose name contains this")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "zarrchive-bench")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    from run import machine, versions, write_result

    results = []
    for name, image in images(args.inputs, args.workdir).items():
        if args.only and args.only not in name:
            continue
        results.append(measure(name, image(), args.chunks, args.quick))
        print("\n".join(report(results[-1])), flush=True)
    write_result({"date": dt.datetime.now(dt.timezone.utc).isoformat(), "machine": machine(),
                  "versions": versions(), "quick": args.quick, "results": results}, args.out, "codecs-")
    return 0


if __name__ == "__main__":
    sys.exit(main())

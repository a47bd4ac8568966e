"""Benchmark: zarrchive's convert + pyramid + compress + verify against its peers, on the same inputs, in one run.

    .venv/bin/pip install -e ".[bench]"          # ngff-zarr and psutil
    .venv/bin/python benchmarks/run.py --size 1GiB [--size 4GiB] [--inputs DIR] [--samples] [--tools a,b] [--repeat N]
                                       [--out FILE]
    .venv/bin/python benchmarks/run.py --brute-force [--inputs DIR] [--chunks N] [--quick]   # benchmarks/codec_search.py
    .venv/bin/python benchmarks/run.py --many [--images 50,1000] [--workers 1,2] [--repeat N]  # benchmarks/many.py

Inputs: synthetic uint16 z-stacks of each ``--size`` (smooth background, Gaussian blobs, shot and read noise,
written plane by plane as TIFF, or with ``--layout imaris``/``lif``/``czi``/``czi-zstd`` as an Imaris, Leica LIF or
Zeiss CZI file, and cached in ``--workdir``), plus every TIFF in ``--inputs`` and, with ``--samples``,
the real microscopy images scikit-image ships (``samples``; without ``--size`` no synthetic input is made unless
nothing else is given).
Each input is read once before the tools run, so all of them read it from the page cache. Each tool runs in a
fresh process (``run.py --tool NAME INPUT OUTPUT``); the parent measures wall time, CPU
time of the whole process tree (Dask workers included) and its peak RSS (sampled every 0.1 s), then checks the
output: bytes and objects stored, level 0 bit-exact against the source, level 1 against the exact 2x2 block
mean (``mean``: equal up to rounding; ``a-a``: low-pass filtered, i.e. on average at most half as far from the
block mean as plain subsampling — a Gaussian pyramid counts), and ome-zarr-models validation. For ``zarrchive-max`` it also encodes the whole chunks of 8 planes with
every candidate codec of the profile, to compare the codec chosen (on a sample) with the best single codec. It prints a table, ratios against the peers and the ceiling, the issue's
targets as PASS/FAIL, and writes everything as JSON (default ``benchmarks/results/<time>.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
CHUNK = (1, 512, 512)  # zarrchive's default chunks for a z-stack; "matched" peers use them too
MATCHED = {"cname": "zstd", "clevel": 3, "shuffle": "bitshuffle"}  # the fixed profile's codec (compat's choice before
# its baseline rule: it now stores blosc zstd 5 byte shuffle on 16-bit images; ``copy-compat`` copies with compat's)


# ---------------------------------------------------------------- inputs


def parse_size(text: str) -> int:
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit):
            return int(float(upper[: -len(unit)]) * factor)
    return int(upper)


# How a synthetic input is stored (``--layout``): as microscopes and converters write TIFFs. ``jpeg`` is 8-bit (the
# pixels scaled down; JPEG holds no 16-bit samples in TIFF): what the archive keeps is what the file decodes to.
LAYOUTS = {"contiguous": {}, "tiled": {"tile": (512, 512)},
           "deflate": {"tile": (512, 512), "compression": "zlib"}, "lzw": {"tile": (512, 512), "compression": "lzw"},
           "zstd": {"tile": (512, 512), "compression": "zstd"},
           "jpeg": {"tile": (512, 512), "compression": "jpeg", "compressionargs": {"level": 95}}}


VENDOR = {"imaris": ".ims", "lif": ".lif", "czi": ".czi", "czi-zstd": ".czi"}  # vendor formats: Imaris (HDF5, gzip
# chunks), Leica LIF (raw planes), Zeiss CZI (a subblock per plane: raw, or zstd as ZEN compresses losslessly)
CZI_ZSTD = "zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack"  # ZEN's lossless zstd option for 16-bit images
IMARIS_CHUNKS = (8, 256, 256)  # an Imaris file's level-0 chunks (z, y, x), gzip level 2, as Imaris writes them
IMARIS_DATA = "DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"


def synthetic(path: Path, nbytes: int, seed: int = 0, layout: str = "contiguous") -> Path:
    """A uint16 z-stack of about ``nbytes`` (uncompressed) that looks like fluorescence microscopy, written plane
    by plane in ``layout`` (``LAYOUTS``, or a vendor format: ``VENDOR``)."""
    y, x = 2048, 2048
    itemsize = 1 if layout == "jpeg" else 2
    z = max(1, nbytes // (y * x * itemsize))  # (the same bytes of image in every layout)
    if path.exists() and pixel_bytes(path) == z * y * x * itemsize:  # made before, whole
        return path
    tmp = path.with_suffix(".partial")
    writer = {"imaris": _write_imaris, "lif": _write_lif, "czi": _write_czi, "czi-zstd": _write_czi}.get(layout,
                                                                                                      _write_tiff)
    writer(tmp, _planes(z, y, x, seed, layout), (z, y, x), layout)
    tmp.replace(path)
    return path


def _planes(z: int, y: int, x: int, seed: int, layout: str):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:y, 0:x].astype(np.float32)
    background = 100 + 40 * np.sin(yy / 310.0) * np.cos(xx / 270.0)
    blobs = np.zeros((y, x), np.float32)
    for cy, cx, r, a in zip(rng.uniform(0, y, 400), rng.uniform(0, x, 400), rng.uniform(6, 30, 400),
                            rng.uniform(200, 2500, 400)):
        sl = (slice(max(0, int(cy - 3 * r)), int(cy + 3 * r)), slice(max(0, int(cx - 3 * r)), int(cx + 3 * r)))
        blobs[sl] += a * np.exp(-((yy[sl] - cy) ** 2 + (xx[sl] - cx) ** 2) / (2 * r * r))
    for k in range(z):
        signal = background + blobs * (0.6 + 0.4 * np.cos(k / 9.0))
        plane = np.clip(rng.poisson(signal).astype(np.float32) + rng.normal(0, 3, (y, x)).astype(np.float32),
                        0, 65535)
        yield np.clip(plane / 12, 0, 255).astype(np.uint8) if layout == "jpeg" else plane.astype(np.uint16)


def _write_tiff(path: Path, planes, shape: tuple[int, int, int], layout: str) -> None:
    import tifffile

    z, y, x = shape
    options = LAYOUTS[layout]
    with tifffile.TiffWriter(path, bigtiff=z * y * x * 2 > 3 << 30) as tif:
        for plane in planes:
            tif.write(plane, contiguous=not options, metadata=None, resolution=(1 / 0.2, 1 / 0.2),
                      photometric="minisblack", **options)


def _write_imaris(path: Path, planes, shape: tuple[int, int, int], layout: str) -> None:
    """An Imaris 5.5 file as Imaris writes one: level 0 in gzip (level 2) chunks, a level 1 of half the size
    (2x2x2 subsampled), DataSetInfo with the sizes and extents in micrometres (0.5 z, 0.2 y and x)."""
    import h5py

    def attr(text: object) -> np.ndarray:
        return np.array([c.encode() for c in str(text)], dtype="S1")

    z, y, x = shape
    with h5py.File(path, "w") as f:
        for key, value in {"ImarisDataSet": "ImarisDataSet", "ImarisVersion": "5.5.0",
                           "DataSetDirectoryName": "DataSet", "DataSetInfoDirectoryName": "DataSetInfo"}.items():
            f.attrs[key] = attr(value)
        f.attrs["NumberOfDataSets"] = np.array([1], dtype="uint32")
        level0 = f.create_dataset(IMARIS_DATA, shape=shape, dtype=np.uint16,
                                  chunks=tuple(min(c, n) for c, n in zip(IMARIS_CHUNKS, shape)),
                                  compression="gzip", compression_opts=2)
        half = (z // 2, y // 2, x // 2)
        level1 = f.create_dataset(IMARIS_DATA.replace("Level 0", "Level 1"), shape=half, dtype=np.uint16,
                                  chunks=tuple(max(1, min(c, n)) for c, n in zip(IMARIS_CHUNKS, half)),
                                  compression="gzip", compression_opts=2)
        depth = IMARIS_CHUNKS[0]  # (even: a slab's planes 0, 2, … are level 1's)
        slab = np.empty((depth, y, x), np.uint16)
        for k, plane in enumerate(planes):
            slab[k % depth] = plane
            if k % depth == depth - 1 or k == z - 1:
                start, n = k - k % depth, k % depth + 1
                level0[start:start + n] = slab[:n]
                m = min(-(-n // 2), half[0] - start // 2)  # level 1's planes in this slab
                if m > 0:
                    level1[start // 2:start // 2 + m] = slab[:2 * m:2, :2 * half[1]:2, :2 * half[2]:2]
        for level, (n_z, n_y, n_x) in ((0, shape), (1, (z // 2, y // 2, x // 2))):
            group = f[IMARIS_DATA.replace("Level 0", f"Level {level}").rsplit("/", 1)[0]]
            for key, value in {"ImageSizeX": n_x, "ImageSizeY": n_y, "ImageSizeZ": n_z}.items():
                group.attrs[key] = attr(value)
        image = f.create_group("DataSetInfo/Image")
        for key, value in {"X": x, "Y": y, "Z": z, "Unit": "um", "Name": "synthetic", "ExtMin0": 0, "ExtMin1": 0,
                           "ExtMin2": 0, "ExtMax0": x * 0.2, "ExtMax1": y * 0.2, "ExtMax2": z * 0.5}.items():
            image.attrs[key] = attr(value)
        channel = f.create_group("DataSetInfo/Channel 0")
        channel.attrs["Name"] = attr("DNA")
        channel.attrs["Color"] = attr("0 0 1")
        f.create_group("DataSetInfo/TimeInfo").attrs["FileTimePoints"] = attr(1)
        f["DataSetInfo/TimeInfo"].attrs["TimePoint1"] = attr("2026-11-27 10:00:00.000")


def _write_lif(path: Path, planes, shape: tuple[int, int, int], layout: str) -> None:
    """A Leica LIF file (format version 2) of one uint16 z-stack, as the LAS X software lays one out: a UTF-16 XML
    header describing the image (its dimensions in metres: 0.2 um in y and x, 0.5 in z), then its memory block,
    the planes one after another."""
    import struct

    z, y, x = shape
    size = z * y * x * 2
    dims = "".join(f'<DimensionDescription DimID="{dim}" NumberOfElements="{n}" Origin="0" Length="{(n - 1) * um!r}" '
                   f'Unit="m" BitInc="0" BytesInc="{inc}"/>'
                   for dim, n, um, inc in ((1, x, 0.2e-6, 2), (2, y, 0.2e-6, x * 2), (3, z, 0.5e-6, y * x * 2)))
    xml = ('<LMSDataContainerHeader Version="2"><Element Name="project" Visibility="1" CopyOption="1" UniqueID="1">'
           '<Data><Experiment/></Data><Memory Size="0" MemoryBlockID="MemBlock_0"/><Children>'
           '<Element Name="synthetic" Visibility="1" CopyOption="1" UniqueID="2"><Data><Image><ImageDescription>'
           '<Channels><ChannelDescription DataType="0" ChannelTag="0" Resolution="16" NameOfMeasuredQuantity="" '
           'Min="0" Max="65535" Unit="" LUTName="Gray" IsLUTInverted="0" BytesInc="0" BitInc="0"/></Channels>'
           f'<Dimensions>{dims}</Dimensions></ImageDescription></Image></Data>'
           f'<Memory Size="{size}" MemoryBlockID="MemBlock_1"/><Children/></Element></Children></Element>'
           '</LMSDataContainerHeader>')

    def block(name: str, length: int) -> bytes:
        return struct.pack("<IIBQBI", 0x70, 0, 0x2A, length, 0x2A, len(name)) + name.encode("utf-16-le")

    with open(path, "wb") as fh:
        fh.write(struct.pack("<IIBI", 0x70, 2 * len(xml) + 5, 0x2A, len(xml)) + xml.encode("utf-16-le"))
        fh.write(block("MemBlock_0", 0) + block("MemBlock_1", size))
        for plane in planes:
            fh.write(plane.astype("<u2").tobytes())


def _write_czi(path: Path, planes, shape: tuple[int, int, int], layout: str) -> None:
    """A Zeiss CZI file written with libCZI (pylibCZIrw), as ZEN stores a z-stack: one subblock per plane,
    uncompressed or (``czi-zstd``) in zstd with the high and low bytes apart; scaling 0.2 um in y and x, 0.5 in z."""
    from pylibCZIrw import czi as pyczi

    options = CZI_ZSTD if layout == "czi-zstd" else None
    with pyczi.create_czi(str(path), exist_ok=True) as czi:
        for k, plane in enumerate(planes):
            czi.write(plane, plane={"C": 0, "Z": k, "T": 0}, location=(0, 0), compression_options=options)
        czi.write_metadata(document_name="synthetic", channel_names={0: "DNA"}, scale_x=0.2e-6, scale_y=0.2e-6,
                           scale_z=0.5e-6)


class Planes:
    """An input's z-stack, read as a reader of its format would read it: ``read(k0, k1)`` planes k0..k1-1, in
    slabs of ``depth`` planes (an Imaris file's chunk depth; one plane elsewhere). Open one per thread."""

    def __init__(self, path: Path | str):
        self.path = str(path)
        suffix = Path(self.path).suffix.lower()
        self.depth = 1
        if suffix == ".ims":
            import h5py

            self.file = h5py.File(self.path, "r")
            self.data = self.file[IMARIS_DATA]
            self.shape, self.dtype, self.depth = self.data.shape, self.data.dtype, self.data.chunks[0]
            self.read = lambda k0, k1: self.data[k0:k1]
        elif suffix == ".lif":
            import liffile

            self.image = liffile.LifFile(self.path).images[0]
            self.shape, self.dtype = self.image.shape, self.image.dtype
            self.read = lambda k0, k1: np.stack([self.image.frame(Z=k) for k in range(k0, k1)])
        elif suffix == ".czi":
            from pylibCZIrw import czi as pyczi

            self.file = pyczi.CziReader(self.path)
            box = self.file.total_bounding_rectangle
            self.shape = (self.file.total_bounding_box["Z"][1], box.h, box.w)
            self.dtype = np.dtype({"Gray8": np.uint8, "Gray16": np.uint16, "Gray32Float": np.float32}[
                self.file.get_channel_pixel_type(0)])
            self.read = lambda k0, k1: np.stack([self.file.read(plane={"Z": k, "C": 0, "T": 0})[..., 0]
                                                 for k in range(k0, k1)])
        else:
            import tifffile

            with tifffile.TiffFile(self.path) as tif:
                self.shape, self.dtype = (len(tif.pages),) + tif.pages[0].shape, tif.pages[0].dtype
            self.read = lambda k0, k1: np.stack([tifffile.imread(self.path, key=k) for k in range(k0, k1)])


def samples(folder: Path) -> list[Path]:
    """The real microscopy images scikit-image installs with itself (no download), as TIFF z-stacks of their
    planes: ``cell`` (a cell in saline, 8-bit grey) and ``ihc`` (an immunohistochemistry section, the three colour
    planes of an 8-bit RGB image as three planes)."""
    import tifffile
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, image in (("cell", data.cell()), ("ihc", data.immunohistochemistry())):
        planes = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
        path = folder / f"sample-{name}.tif"
        if not path.exists():
            tifffile.imwrite(path, np.ascontiguousarray(planes), contiguous=True, photometric="minisblack",
                             metadata={"axes": "ZYX"})
        out.append(path)
    return out


def pixel_bytes(path: Path) -> int:
    """The bytes of the image in an input (every series of a TIFF; uncompressed)."""
    import tifffile

    if path.suffix.lower() in VENDOR.values():
        planes = Planes(path)
        return int(np.prod(planes.shape)) * planes.dtype.itemsize
    with tifffile.TiffFile(path) as tif:
        return sum(int(np.prod(series.shape)) * series.dtype.itemsize for series in tif.series)


def warm(path: Path) -> None:
    """Read the input once, so that every tool reads it from the page cache (else the first tool run on a newly
    built or long-unread input would pay for the disk alone)."""
    with open(path, "rb", buffering=0) as fh:
        while fh.read(64 << 20):
            pass


# ---------------------------------------------------------------- tools (run in a fresh process)


def _source(path: str):
    import dask.array as da
    import tifffile
    import zarr

    return da.from_zarr(zarr.open_array(tifffile.imread(path, aszarr=True), mode="r"))


def _blosc():
    from zarr.codecs import BloscCodec

    return BloscCodec(cname=MATCHED["cname"], clevel=MATCHED["clevel"], shuffle=MATCHED["shuffle"])


def tool_zarrchive(profile: str) -> Callable[[str, str], None]:
    def run(src: str, out: str) -> None:
        from zarrchive.config import load_settings
        from zarrchive.standalone import convert_to_ome_zarr

        convert_to_ome_zarr(src, out, load_settings(overrides={"compress": {"profile": profile}}))
    return run


def tool_ceiling(src: str, out: str) -> None:
    """One level, tifffile -> zarr v3, the matched codec, two planes at a time: no pyramid, no verification."""
    _copy(src, out, [_blosc()])


def tool_copy_compat(src: str, out: str) -> None:
    """The ceiling's copy with the codec ``zarrchive-compat`` stored this input with (``COPY_CODEC``, set from that
    tool's output in the same run): the same codec, in the ceiling's chunks (512 x 512, unsharded)."""
    _copy(src, out, json.loads(os.environ["COPY_CODEC"]))


def _copy(src: str, out: str, compressors: list[Any]) -> None:
    """Two threads, each with a reader of its own (``Planes``: tifffile, h5py for Imaris, liffile for LIF,
    pylibCZIrw for CZI), copy slabs of planes into one level of Zarr v3."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import zarr

    first = Planes(src)
    shape, dtype, depth = first.shape, first.dtype, first.depth
    root = zarr.open_group(out, mode="w", zarr_format=3)
    dst = root.create_array("0", shape=shape, chunks=CHUNK[-len(shape):], dtype=dtype, compressors=compressors)
    own = threading.local()

    def copy(k: int) -> None:
        if not hasattr(own, "planes"):
            own.planes = Planes(src)  # a reader per thread: threads never share a file handle
        dst[k:k + depth] = own.planes.read(k, min(k + depth, shape[0]))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(copy, range(0, shape[0], depth)))


def tool_ome_zarr(matched: bool) -> Callable[[str, str], None]:
    def run(src: str, out: str) -> None:
        import zarr
        from ome_zarr.scale import Methods
        from ome_zarr.writer import write_image

        data = _source(src)
        options: dict[str, Any] = {}
        kwargs: dict[str, Any] = {}
        if matched:
            options = {"chunks": CHUNK, "compressors": [_blosc()]}
            kwargs = {"method": Methods.LOCAL_MEAN}
        write_image(data, zarr.open_group(out, mode="w"), axes="zyx", scale_factors=[2, 4, 8],
                    storage_options=options or None, **kwargs)
    return run


def tool_ngff_zarr(matched: bool) -> Callable[[str, str], None]:
    def run(src: str, out: str) -> None:
        import ngff_zarr as nz

        image = nz.to_ngff_image(_source(src), dims=["z", "y", "x"], scale={"z": 1.0, "y": 0.2, "x": 0.2})
        if matched:
            multiscales = nz.to_multiscales(image, scale_factors=[{"z": 1, "y": 2, "x": 2}, {"z": 1, "y": 4, "x": 4},
                                                                  {"z": 1, "y": 8, "x": 8}],
                                            chunks=dict(zip("zyx", CHUNK)),
                                            method=nz.Methods.DASK_IMAGE_GAUSSIAN)
            nz.to_ngff_zarr(out, multiscales, version="0.5", compressors=[_blosc()])
        else:
            nz.to_ngff_zarr(out, nz.to_multiscales(image), version="0.5")
    return run


def tool_bioio(src: str, out: str) -> None:
    from bioio_ome_zarr.writers import OMEZarrWriter

    data = _source(src)
    shapes, shape = [], tuple(data.shape)
    for _ in range(4):
        shapes.append(shape)
        shape = (shape[0], -(-shape[1] // 2), -(-shape[2] // 2))
    writer = OMEZarrWriter(out, level_shapes=shapes, dtype=data.dtype, axes_names=["z", "y", "x"],
                           axes_types=["space", "space", "space"], zarr_format=3)
    writer.write_full_volume(data)


TOOLS: dict[str, Callable[[str, str], None]] = {
    "zarrchive-compat": tool_zarrchive("compat"),
    "zarrchive-max": tool_zarrchive("max"),
    "ome-zarr-py": tool_ome_zarr(matched=False),
    "ome-zarr-py-matched": tool_ome_zarr(matched=True),
    "ngff-zarr": tool_ngff_zarr(matched=False),
    "ngff-zarr-matched": tool_ngff_zarr(matched=True),
    "bioio-ome-zarr": tool_bioio,
    "ceiling": tool_ceiling,
    "copy-compat": tool_copy_compat,
}
ZARRCHIVE = ("zarrchive-compat", "zarrchive-max")
SPEED_INPUT = 10**9  # the speed and memory targets hold for inputs of at least 1 GB


# ---------------------------------------------------------------- measuring


def measure(tool: str, src: Path, out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one tool in a fresh process (``env``: more environment variables); wall, CPU of the tree, peak RSS of
    the tree."""
    import psutil

    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--tool", tool, str(src), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    peak, stop = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {"tool": tool, "wall_s": round(wall, 2), "peak_rss_mib": round(peak / 2**20, 1),
              "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2)}
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["?"])[-1]
        result["error"] = f"exit {proc.returncode}: {last[:300]}"
    return result


def check(src: Path, out: Path) -> dict[str, Any]:
    """Bytes and objects stored, level-0 exactness, level-1 error against the exact 2x2 mean, validation."""
    import zarr

    files = [p for p in out.rglob("*") if p.is_file()]
    found: dict[str, Any] = {"out_bytes": sum(p.stat().st_size for p in files), "files": len(files)}
    group = zarr.open_group(str(out), mode="r")
    attrs = dict(group.attrs)
    datasets = (attrs.get("ome", attrs).get("multiscales") or [{"datasets": [{"path": "0"}]}])[0]["datasets"]
    paths = [d["path"] for d in datasets]
    level0 = group[paths[0]]
    lead = (0,) * (level0.ndim - 3)  # singleton t/c axes some writers keep in front of z, y, x
    source = Planes(src)
    n = source.shape[0]
    exact = level0.shape[len(lead):] == tuple(source.shape) and all(s == 1 for s in level0.shape[:len(lead)])
    planes = range(0, n, max(1, n // 8)) if exact else []
    for k in planes:
        exact = exact and np.array_equal(level0[lead + (k,)], source.read(k, k + 1)[0])
    found["level0_exact"] = bool(exact)
    if len(paths) > 1 and exact:
        level1 = group[paths[1]]
        errors, smoothed = [], []
        for k in list(planes)[:3]:
            plane = source.read(k, k + 1)[0].astype(np.float64)
            h, w = plane.shape
            padded = np.pad(plane, [(0, h % 2), (0, w % 2)], mode="edge")
            mean = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))
            kz = k if level1.shape[len(lead)] == n else k // 2
            got = level1[lead + (kz,)]
            if got.shape != mean.shape:
                errors.append(float("nan"))
                continue
            off = np.abs(got.astype(np.float64) - mean)
            errors.append(float(off.max()))
            # low-pass filtered (a mean, a Gaussian…) rather than picked pixels: on average much closer to
            # the block mean than plain subsampling is
            picked = np.abs(padded[::2, ::2] - mean).mean()
            smoothed.append(bool(off.mean() < 0.5 * picked))
        found["pyramid_max_err"] = max(errors) if errors else None
        found["block_mean"] = bool(errors) and all(e <= 1.0 for e in errors)  # the exact mean, up to rounding
        found["anti_aliased"] = bool(smoothed) and all(smoothed)
    else:
        found["pyramid_max_err"], found["anti_aliased"], found["block_mean"] = None, False, False
    try:
        from zarrchive.ngff import validate_image

        found["valid"] = validate_image(str(out)) == []
    except Exception as exc:  # the validator itself failed
        found["valid"] = f"{type(exc).__name__}: {exc}"
    return found


def array_codecs(out: Path, level: str = "0") -> list[dict[str, Any]] | None:
    """The codecs level 0 (or array ``level``) of a Zarr v3 output stores its chunks with (inside its shards), as
    JSON (None: Zarr v2, or no such array)."""
    meta = json.loads((out / level / "zarr.json").read_text()) if (out / level / "zarr.json").exists() else None
    if meta is None:
        return None
    codecs = meta["codecs"]
    return codecs[0]["configuration"]["codecs"] if codecs[0]["name"] == "sharding_indexed" else codecs


def stored_codec(out: Path, level: str = "0") -> tuple | None:
    """The codec level 0 (or array ``level``) of a Zarr v3 output is stored with, as ``codec_key`` (None for Zarr
    v2)."""
    if (codecs := array_codecs(out, level)) is None:
        return None
    named = [c for c in codecs if c["name"] != "bytes"]
    return codec_key(named[0]["name"], named[0].get("configuration", {})) if named else ("bytes",)


def stored_compressors(out: Path) -> list[dict[str, Any]] | None:
    """The bytes-to-bytes codecs of level 0 of a Zarr v3 output (``array_codecs`` but its serializer)."""
    codecs = array_codecs(out)
    return None if codecs is None else [c for c in codecs if c["name"] not in ("bytes", "transpose")]


def codec_key(name: str, configuration: dict[str, Any]) -> tuple:
    """A codec and its settings (JPEG-XL's effort in the place of a level)."""
    return (name, *(configuration.get(k) for k in ("cname", "clevel", "shuffle")),
            configuration.get("level", configuration.get("effort")))


def single_codec_sizes(src: Path, planes: int = 8) -> dict[tuple, int]:
    """Bytes each candidate of the ``max`` profile stores for the whole 512x512 chunks of ``planes`` planes spread
    over the input: what the best single codec per image would store, to judge the choice made on a sample."""
    import tifffile

    from zarrchive.pixels.codecs import choose_codec
    from zarrchive.config import load_settings

    with tifffile.TiffFile(src) as tif:
        n = len(tif.pages)
        arrays = [tif.pages[k].asarray() for k in range(0, n, max(1, n // planes))][:planes]
    chunks = [a[None, y:y + CHUNK[1], x:x + CHUNK[2]] for a in arrays
              for y in range(0, a.shape[0] - CHUNK[1] + 1, CHUNK[1]) for x in range(0, a.shape[1] - CHUNK[2] + 1, CHUNK[2])]
    settings = load_settings(overrides={"compress": {"profile": "max"}}).compress
    trials = choose_codec(chunks, settings.candidates(), 0, time_all=True).candidates
    return {codec_key(t.codec.name, t.codec.configuration): t.stored_bytes for t in trials if t.stored_bytes}


def versions() -> dict[str, str]:
    out = {}
    for name in ("zarrchive", "zarr", "ome-zarr", "ngff-zarr", "bioio-ome-zarr", "tifffile", "imagecodecs", "dask",
                 "distributed", "numcodecs", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"cpus": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def write_result(result: dict[str, Any], out: str | Path | None, prefix: str = "") -> Path:
    """Write a benchmark's result as JSON to ``out`` (default ``benchmarks/results/<prefix><time>.json``)."""
    path = Path(out) if out else HERE / "results" / f"{prefix}{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {path}")
    return path


# ---------------------------------------------------------------- report


def report(rows: list[dict[str, Any]]) -> list[str]:
    header = (f"{'input':<22} {'tool':<20} {'MB/s':>7} {'wall s':>7} {'CPU s':>7} {'RSS MiB':>8} {'out MiB':>8} "
              f"{'files':>6} {'ratio':>6} {'exact':>5} {'pyr err':>7} {'mean':>4} {'a-a':>4} {'valid':>5}")
    lines = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['input']:<22} {r['tool']:<20} unavailable/failed: {r['error']}")
            continue
        err = "-" if r.get("pyramid_max_err") is None else f"{r['pyramid_max_err']:.2f}"
        lines.append(
            f"{r['input']:<22} {r['tool']:<20} {r['mb_s']:>7.1f} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} "
            f"{r['peak_rss_mib']:>8.0f} {r['out_bytes'] / 2**20:>8.1f} {r['files']:>6} {r['ratio']:>6.3f} "
            f"{str(r['level0_exact'])[0]:>5} {err:>7} {str(r.get('block_mean'))[0]:>4} "
            f"{str(r['anti_aliased'])[0]:>4} {str(r['valid'])[0]:>5}")
    return lines


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, per input, PASS or FAIL with the figures."""
    lines = []
    for name in sorted({r["input"] for r in rows}):
        ok = {r["tool"]: r for r in rows if r["input"] == name and "error" not in r}
        ours = ok.get("zarrchive-compat")
        if not ours:
            continue
        peers = {t: r for t, r in ok.items() if t not in ZARRCHIVE and t not in ("ceiling", "copy-compat")}
        verdict = lambda good: "PASS" if good else "FAIL"  # noqa: E731
        timed = ours["input_bytes"] >= SPEED_INPUT
        if not timed:
            lines.append(f"{name}: speed targets apply to inputs of at least 1 GB (start-up would dominate)")
        if peers and timed:
            fastest = max(peers.values(), key=lambda r: r["mb_s"])
            lines.append(f"{name}: compat vs fastest peer ({fastest['tool']}): {ours['mb_s'] / fastest['mb_s']:.2f}x "
                         f"-> {verdict(ours['mb_s'] > fastest['mb_s'])} (target: faster)")
            aa = [r for r in peers.values() if r.get("anti_aliased")]
            if aa:
                best = max(aa, key=lambda r: r["mb_s"])
                lines.append(f"{name}: compat vs fastest anti-aliased peer ({best['tool']}): "
                             f"{ours['mb_s'] / best['mb_s']:.2f}x -> {verdict(ours['mb_s'] >= 3 * best['mb_s'])} "
                             "(target: >= 3x)")
        if "ceiling" in ok and timed:
            share = ours["mb_s"] / ok["ceiling"]["mb_s"]
            lines.append(f"{name}: compat vs bare-copy ceiling: {share:.0%} -> {verdict(share >= 0.6)} (target: >= 60%)")
        for copy, what in (("ceiling", f"blosc {MATCHED['cname']} {MATCHED['clevel']} {MATCHED['shuffle']}"),
                           ("copy-compat", "compat's codec")):
            if copy in ok and timed:
                share = ours["mb_s"] / ok[copy]["mb_s"]
                lines.append(f"{name}: single pass vs the one-level copy with {what} (issue 17): {share:.0%} -> "
                             f"{verdict(share >= 0.9)} (target: >= 90%)")
                rss = ours["peak_rss_mib"] / ok[copy]["peak_rss_mib"]
                lines.append(f"{name}: peak RSS vs that copy's (issue 17): {rss:.1f}x -> {verdict(rss <= 2)} "
                             "(target: <= 2x)")
        if "zarrchive-max" in ok and ok["zarrchive-max"].get("codec_sizes"):
            sizes = ok["zarrchive-max"]["codec_sizes"]
            chosen = tuple(ok["zarrchive-max"]["codec"])
            best = min(sizes.values())
            if chosen in {tuple(json.loads(k)) for k in sizes}:
                rel = sizes[json.dumps(list(chosen))] / best
                lines.append(f"{name}: zarrchive-max's codec {chosen[0]} vs the best single codec on 8 planes: "
                             f"{rel:.3f}x the bytes -> {verdict(rel <= 1.05)} (target: within 5 %)")
        if "ome-zarr-py" in ok:
            base = ok["ome-zarr-py"]["out_bytes"]
            for tool, bar in (("zarrchive-max", 0.72), ("zarrchive-compat", 0.85)):
                if tool in ok:
                    rel = ok[tool]["out_bytes"] / base
                    lines.append(f"{name}: {tool} bytes / ome-zarr-py default bytes: {rel:.3f} -> "
                                 f"{verdict(rel <= bar)} (target: <= {bar})")
    by_layout: dict[str, list[tuple[int, float]]] = {}  # the same layout at several sizes
    for r in rows:
        if r["tool"] == "zarrchive-compat" and "error" not in r and r["input_bytes"] >= SPEED_INPUT:
            layout = re.sub(r"\d+(\.\d+)?([KMGT]i?B)?", "#", r["input"])  # synthetic-1GiB-lzw: synthetic-#-lzw
            by_layout.setdefault(layout, []).append((r["input_bytes"], r["peak_rss_mib"]))
    for rss in (sorted(v) for v in by_layout.values()):
        if len(rss) > 1 and rss[-1][0] >= 1.5 * rss[0][0]:
            growth = rss[-1][1] / rss[0][1]
            lines.append(f"zarrchive-compat peak RSS {rss[0][1]:.0f} -> {rss[-1][1]:.0f} MiB as the input grows "
                         f"{rss[-1][0] / rss[0][0]:.1f}x: {growth:.2f}x -> {'PASS' if growth < 1.25 else 'FAIL'} "
                         "(target: flat)")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--brute-force" in argv:  # the codec brute-force mode (benchmarks/codec_search.py), with its own options
        sys.path.insert(0, str(HERE))
        from codec_search import main as brute_force

        return brute_force([a for a in argv if a != "--brute-force"])
    if "--many" in argv:  # the many-small-images and scale-out mode (benchmarks/many.py), with its own options
        sys.path.insert(0, str(HERE))
        from many import main as many

        return many([a for a in argv if a != "--many"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", nargs=3, metavar=("NAME", "INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    parser.add_argument("--size", action="append", help="synthetic input size, e.g. 1GiB (repeatable)")
    parser.add_argument("--layout", action="append", choices=sorted(LAYOUTS) + sorted(VENDOR),
                        help="how the synthetic inputs are stored (repeatable; default contiguous): tiled, tiled and "
                             "compressed (deflate, lzw, zstd) or JPEG (8-bit); or a vendor format: imaris (HDF5, gzip "
                             "chunks), lif (Leica, raw planes), czi and czi-zstd (Zeiss: raw or zstd subblocks)")
    parser.add_argument("--inputs", help="a folder of real TIFF/OME-TIFF files to include")
    parser.add_argument("--samples", action="store_true",
                        help="include the real microscopy images scikit-image ships (small: for sizes, not speed)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool and input; the median (by wall time) "
                                                                "is reported, every wall time is kept in the JSON")
    parser.add_argument("--workdir", default=str(Path.home() / ".cache" / "zarrchive-bench"))
    parser.add_argument("--out", help="JSON result (default: benchmarks/results/<time>.json)")
    args = parser.parse_args(argv)
    if args.tool:
        name, src, out = args.tool
        TOOLS[name](src, out)
        return 0

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    sizes = args.size or ([] if args.inputs or args.samples else ["1GiB"])
    inputs = [synthetic(work / f"synthetic-{s}{'' if layout == 'contiguous' else '-' + layout}"
                               f"{VENDOR.get(layout, '.tif')}", parse_size(s), layout=layout)
              for s in sizes for layout in args.layout or ["contiguous"]]
    if args.samples:
        inputs += samples(work / "samples")
    if args.inputs:
        inputs += sorted(p for p in Path(args.inputs).iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    rows = []
    for src in inputs:
        size = pixel_bytes(src)  # speeds and ratios count the image's bytes, whatever the file's compression
        warm(src)
        env: dict[str, str] = {}
        for tool in args.tools.split(","):
            out = work / "out" / f"{src.stem}-{tool}.ome.zarr"
            print(f"... {src.name}: {tool}", file=sys.stderr, flush=True)
            if tool == "copy-compat" and "COPY_CODEC" not in env:
                rows.append({"input": src.name, "input_bytes": size, "tool": tool,
                             "error": "needs zarrchive-compat before it in --tools (its codec)"})
                continue
            runs = [measure(tool, src, out, env if tool == "copy-compat" else None)  # the last run's output is checked
                    for _ in range(args.repeat)]
            ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["wall_s"])
            row = {"input": src.name, "input_bytes": size, **(ok[(len(ok) - 1) // 2] if len(ok) == len(runs) else
                                                               next(r for r in runs if "error" in r))}
            if args.repeat > 1:
                row["walls_s"] = [r["wall_s"] for r in runs]
            if "error" not in row:
                try:
                    row.update(check(src, out))
                except Exception as exc:  # an output the checks cannot read is a failure of the tool
                    row["error"] = f"output unreadable: {type(exc).__name__}: {exc}"[:300]
            if "error" not in row:
                row["mb_s"] = round(size / 1e6 / row["wall_s"], 1)
                row["ratio"] = round(size / row["out_bytes"], 3)
                row["codec"] = stored_codec(out)
                if tool in ZARRCHIVE:  # (compress.levels_codec: the levels below may have a faster one)
                    row["levels_codec"] = stored_codec(out, "1")
                if tool == "zarrchive-compat" and (codecs := stored_compressors(out)) is not None:
                    env["COPY_CODEC"] = json.dumps(codecs)
                if tool == "zarrchive-max":  # how good was the choice made on a sample of chunks?
                    row["codec_sizes"] = {json.dumps(list(k)): v for k, v in single_codec_sizes(src).items()}
            rows.append(row)
            shutil.rmtree(out, ignore_errors=True)
    lines = report(rows) + [""] + targets(rows)
    print("\n".join(lines))
    write_result({"when": dt.datetime.now(dt.timezone.utc).isoformat(), "machine": machine(),
                  "versions": versions(), "rows": rows, "targets": targets(rows)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

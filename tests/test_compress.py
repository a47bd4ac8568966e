"""Compress, without Prefect: one streaming pass from the source to every compressed level, each write proven."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import given, settings as hsettings, strategies as st

from builders import archive_images, ome_tiff, plain_tiff, random_image, staged
from zarrchive.pixels.blocks import chunk_slices, downsample_mean
from zarrchive.config import CompressSettings
from zarrchive.errors import InputError, VerificationError
from zarrchive.pixels.passes import scaled, slabs
from zarrchive.records import Axis, ImageRecord, Level, SourceLayout
from zarrchive.pixels.shards import ArrayWriter
from zarrchive.pixels.passes import store_digest
from zarrchive.tasks.compress import compress_image, plan_writes, shard_shape, stream_regions
from zarrchive.tasks.convert import convert_file
from zarrchive.tasks.pyramid import build_pyramid, plan_levels


def smooth(shape, seed=0):
    """Compressible, microscopy-like content: smooth structure plus mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[-2], 0:shape[-1]]
    base = (np.sin(yy / 9.0) + np.cos(xx / 7.0) + 2) * 800
    return (np.broadcast_to(base, shape) + rng.normal(0, 5, shape)).clip(0, 65535).astype(np.uint16)


@pytest.fixture()
def source(tmp_path):
    data = smooth((2, 2, 140, 100))
    return ome_tiff(tmp_path / "x.ome.tif", data, "CZYX", {"x": 0.5, "y": 0.5, "z": 1.0}, ["a", "b"]), data


def assert_levels_are_block_means(report, image, data):
    """Level 0 is the source exactly; each level is the rounded block mean of the one above."""
    above = data
    for level, next_level in zip(image.levels, image.levels[1:] + (None,)):
        got = zarr.open_array(f"{report.store}/{level.path}", mode="r")[...]
        assert got.shape == level.shape
        np.testing.assert_array_equal(got, above)
        if next_level is not None:
            halved = tuple(i for i, (a, b) in enumerate(zip(level.scale, next_level.scale)) if b > a)
            above = downsample_mean(got, halved)


@pytest.mark.parametrize("codec", [{"profile": "fixed", "codec": "blosc", "cname": "zstd", "clevel": 5,
                                    "shuffle": "shuffle"},
                                   {"profile": "fixed", "codec": "blosc", "cname": "lz4", "clevel": 3,
                                    "shuffle": "bitshuffle"},
                                   {"profile": "fixed", "codec": "zstd", "clevel": 3}])
def test_every_level_decodes_to_the_source_and_its_block_means(source, tmp_path, settings, scheduler, codec):
    path, data = source
    [(image, report)] = archive_images(path, tmp_path / "w", settings, scheduler, convert={"chunk_xy": 64},
                                       compress=codec)
    assert [lvl.shape for lvl in image.levels] == [(2, 2, 140, 100), (2, 2, 70, 50), (2, 1, 35, 25)]  # z halved
    #                                                                              once as fine as x
    assert_levels_are_block_means(report, image, data)
    assert zarr.open_array(f"{report.store}/0", mode="r").compressors[0].to_dict()["name"] == codec["codec"]
    assert report.chunks_verified == sum(len(chunk_slices(lvl.shape, lvl.chunks)) for lvl in image.levels)
    assert report.ratio > 1.05 and report.bytes_out < report.bytes_in
    digests = "".join(hashlib.sha256(np.ascontiguousarray(data[r]).tobytes()).hexdigest()
                      for r in chunk_slices(image.levels[0].shape, image.levels[0].chunks))
    assert report.level0_sha256 == hashlib.sha256(digests.encode()).hexdigest()
    assert zarr.open_group(report.store, mode="r").attrs["ome"]["multiscales"][0]["name"] == image.image_id
    assert not list((tmp_path / "w" / "compress").glob("*partial*"))  # built under a temporary name, renamed


def test_streamed_and_small_levels_alike_are_block_means(tmp_path, settings, scheduler):
    data = random_image((3, 300, 520), "uint16", 3)  # z y x, shards of 64: levels 1 streamed, 2.. from above
    path = ome_tiff(tmp_path / "s.ome.tif", data, "ZYX", {"x": 0.2, "y": 0.2, "z": 2.0})
    settings_small = {"shard_xy": 64, "shard_z": 2}
    [(image, report)] = archive_images(path, tmp_path / "w", settings, scheduler, convert={"chunk_xy": 32},
                                       compress=settings_small)
    plans = plan_writes(image, settings.compress.model_copy(update=settings_small))
    assert [p.streamed for p in plans] == [True, True] + [False] * (len(plans) - 2) and len(plans) == 6
    assert_levels_are_block_means(report, image, data[None])


def test_without_the_level0_digest_the_same_store_is_written_and_proven(source, tmp_path, settings, scheduler):
    path, data = source
    fixed = settings.compress.model_copy(update={"profile": "fixed"})
    conv = settings.convert.model_copy(update={"chunk_xy": 64})
    record = staged(path)
    [image] = [build_pyramid(i, settings.pyramid) for i in convert_file(record, None, str(tmp_path / "w"), conv)]
    with_digest = compress_image(image, record, str(tmp_path / "a"), fixed, scheduler)
    without = compress_image(image, record, str(tmp_path / "b"), fixed, scheduler, level0_digest=False)
    assert with_digest.level0_sha256 and without.level0_sha256 is None
    assert without.store_sha256 == with_digest.store_sha256 and without.chunks_verified == with_digest.chunks_verified
    assert_levels_are_block_means(without, image, data)


def test_store_digest_changes_when_any_byte_does(source, tmp_path, settings, scheduler):
    path, _ = source
    fixed = {"profile": "fixed"}  # a chosen codec may differ between runs (speeds are measured)
    [(_, first)] = archive_images(path, tmp_path / "a", settings, scheduler, convert={"chunk_xy": 64},
                                  compress=fixed)
    [(_, again)] = archive_images(path, tmp_path / "b", settings, scheduler, convert={"chunk_xy": 64},
                                  compress=fixed)
    assert first.store_sha256 == again.store_sha256
    chunk = next(p for p in Path(again.store).rglob("c/*/*/*/*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:-1] + b"\0")
    assert store_digest(again.store)[1] != first.store_sha256


def test_a_lossy_write_is_caught(tmp_path):
    zarr.create_array(str(tmp_path / "dst"), shape=(4, 4), chunks=(2, 2), dtype="uint16", zarr_format=3)
    writer = ArrayWriter.open(str(tmp_path / "dst"))
    lossy = dataclasses.replace(writer, encode=lambda chunk: writer.encode(chunk & 0xFFF0))  # drops 4 bits
    with pytest.raises(VerificationError, match="other pixels"):
        lossy.write((slice(0, 4), slice(0, 4)), np.arange(16, dtype=np.uint16).reshape(4, 4) * 1001)


@pytest.mark.parametrize("keep", [200, -5000])  # a damaged header; a whole header with the last strips missing
def test_a_truncated_file_fails_naming_the_file_and_leaves_nothing(tmp_path, settings, scheduler, keep):
    good = plain_tiff(tmp_path / "g.tif", random_image((256, 256), "uint16"))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(good.read_bytes()[:keep])
    with pytest.raises(InputError) as err:
        archive_images(broken, tmp_path / "w", settings, scheduler, rel="images/broken.tif")
    assert err.value.file == "images/broken.tif"
    assert not list((tmp_path / "w").glob("compress/*"))


def test_a_staged_file_that_is_not_the_converted_one_is_refused(source, tmp_path, settings, scheduler):
    path, _ = source
    [image] = convert_file(staged(path), None, str(tmp_path / "w"), settings.convert)
    other = ome_tiff(tmp_path / "other.ome.tif", random_image((2, 2, 140, 100)), "CZYX")
    with pytest.raises(InputError, match="not the one"):
        compress_image(build_pyramid(image, settings.pyramid), staged(other, "x.ome.tif"), str(tmp_path / "w"),
                       settings.compress, scheduler)


def planned(shape, chunks, scale, axes, shard_xy, shard_z):
    level0 = Level(path="0", shape=shape, chunks=chunks, scale=scale, translation=(0.0,) * len(shape))
    levels = plan_levels(level0, list(axes), 12, calibrated_z="z" in axes)
    image = ImageRecord(
        image_id="i", conversion_id="c", source_path="i.tif", source_sha256="0" * 64, series=0, series_name="0",
        reader="bioio_tifffile", layout=SourceLayout(reader="bioio_tifffile", series=0, axes=tuple(axes)),
        metadata_xml="/dev/null", metadata_sha256="0" * 64,
        axes=tuple(Axis(name=a, type="channel" if a == "c" else "space") for a in axes), dtype="uint16",
        channel_names=("C0",), calibrated=True, levels=tuple(levels))
    cfg = CompressSettings(profile="fixed", shard_xy=shard_xy, shard_z=shard_z)
    return image, plan_writes(image, cfg)


@given(st.integers(1, 9), st.integers(1, 700), st.integers(1, 900), st.sampled_from([16, 32, 64]),
       st.integers(1, 3), st.sampled_from([0, 64, 128, 256]), st.integers(1, 4), st.sampled_from([0.5, 1.0, 3.0]))
@hsettings(max_examples=150, deadline=None)
def test_streaming_regions_tile_every_streamed_level_in_whole_shards(z, h, w, chunk, chunk_z, shard_xy, shard_z,
                                                                     z_spacing):
    shape, chunks = (1, z, h, w), (1, min(chunk_z, z), min(chunk, h), min(chunk, w))
    image, plans = planned(shape, chunks, (1.0, z_spacing, 1.0, 1.0), "czyx", shard_xy, shard_z)
    streamed = [p for p in plans if p.streamed]
    assert streamed[0] is plans[0] and all(p.streamed for p in plans[:len(streamed)])  # streamed levels come first
    covered = [np.zeros(p.level.shape, dtype=np.int8) for p in streamed]
    for region in stream_regions(image, plans):
        for plan, part, seen in zip(streamed, scaled(region, streamed), covered):
            seen[part] += 1
            for axis, (s, u, n) in enumerate(zip(part, plan.unit, plan.level.shape)):
                assert s.start % u == 0 and (s.stop - s.start) % u == 0 or s.stop == n  # whole units of work
                if plan.shards:
                    assert s.start % plan.shards[axis] == 0  # a region never shares a shard with another
    assert all((seen == 1).all() for seen in covered)  # every pixel of every streamed level written once
    for plan in plans:
        if plan.shards:
            assert all(s % c == 0 for s, c in zip(plan.shards, plan.level.chunks))


@given(st.integers(1, 9), st.integers(1, 300), st.integers(1, 300), st.sampled_from([16, 32, 64]),
       st.integers(1, 3), st.sampled_from([0, 64, 128]), st.integers(1, 4), st.sampled_from([0.5, 1.0, 3.0]),
       st.sampled_from([1, 1, 2, 3, 8]))
@hsettings(max_examples=150, deadline=None)
def test_a_region_is_read_in_the_thinnest_slabs_that_make_whole_chunks_of_every_streamed_level(
        z, h, w, chunk, chunk_z, shard_xy, shard_z, z_spacing, source_z):
    shape, chunks = (1, z, h, w), (1, min(chunk_z, z), min(chunk, h), min(chunk, w))
    image, plans = planned(shape, chunks, (1.0, z_spacing, 1.0, 1.0), "czyx", shard_xy, shard_z)
    streamed = [p for p in plans if p.streamed]
    for region in stream_regions(image, plans):
        seen = np.zeros([r.stop - r.start for r in region], dtype=np.int8)
        cuts = slabs(region, streamed, (1, source_z, 1, 1))  # the source's chunks: source_z planes deep
        depth = region[1].stop - region[1].start
        inner = [s for s in cuts if s[1].stop != region[1].stop]  # (the region's end along z may cut the last)
        for slab in inner:  # whole multiples of the source's chunks
            assert (slab[1].stop - slab[1].start) % source_z == 0
        if not any(1 in p.halved for p in streamed):  # z not halved: the thinnest such slab, exactly
            deep = math.lcm(chunks[1], source_z)
            assert {s[1].stop - s[1].start for s in inner} <= {deep if deep <= depth else depth}
        for slab in cuts:
            seen[tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(slab, region))] += 1
            unit = plans[0].unit[-1]  # along x only at the edges of units (whole objects of every level)
            assert slab[-1].start % unit == 0 and (slab[-1].stop % unit == 0 or slab[-1].stop == region[-1].stop)
            for plan, part, whole in zip(streamed, scaled(slab, streamed), scaled(region, streamed)):
                for s, c, n, r in zip(part, plan.level.chunks, plan.level.shape, whole):
                    assert s.start % c == 0 and (s.stop % c == 0 or s.stop == n)  # whole chunks of the level
                    assert r.start <= s.start < s.stop <= r.stop
        assert (seen == 1).all()  # every pixel of the region read once
        for plan in streamed:  # every object receives its chunks in C order, as one write of the region stores them
            arrivals: dict[tuple, list[tuple]] = {}
            for part in (scaled(slab, streamed)[streamed.index(plan)] for slab in cuts):
                for chunk in chunk_slices(plan.level.shape, plan.level.chunks):
                    if all(p.start <= c.start < p.stop for p, c in zip(part, chunk)):
                        origin = tuple(c.start for c in chunk)
                        objects = plan.shards or plan.level.chunks
                        arrivals.setdefault(tuple(o // s for o, s in zip(origin, objects)), []).append(origin)
            assert all(order == sorted(order) for order in arrivals.values())


def test_a_streamed_region_holds_a_slab_not_the_region_and_stores_what_one_block_would(tmp_path, settings):
    """A z-stack's region of 8 planes, two shards wide (8 MiB), is read and written plane by plane, a shard's
    width at a time: the task's arrays peak near one such slab's worth and its pyramid levels', not the region's;
    every object is byte for byte the one written from the region read whole."""
    import tracemalloc

    from zarrchive.pixels import passes
    from zarrchive.pixels.sources import forget_open_files

    data = random_image((8, 1, 512, 1024), "uint16")
    path = ome_tiff(tmp_path / "z.ome.tif", data, "ZCYX")
    comp = settings.compress.model_copy(update={"profile": "fixed", "shard_xy": 512, "shard_z": 8})
    record = staged(path, "z.ome.tif")
    [image] = convert_file(record, None, str(tmp_path / "w"), settings.convert.model_copy(update={"chunk_xy": 256}))
    image = build_pyramid(image, settings.pyramid)
    plans = plan_writes(image, comp)
    assert image.axis_names == ["c", "z", "y", "x"] and plans[0].unit == (1, 8, 512, 512) and plans[1].streamed
    region = (slice(0, 1), slice(0, 8), slice(0, 512), slice(0, 1024))  # two shards of level 0, 8 MiB
    stores = {}
    for how in ("slabs", "whole"):
        store = tmp_path / how
        root = zarr.open_group(str(store), mode="w", zarr_format=3)
        for plan in plans:
            root.create_array(plan.level.path, shape=plan.level.shape, chunks=plan.level.chunks, dtype=image.dtype,
                              fill_value=0, **passes.array_layout(plan, passes.make_codec(comp.candidates()[0]),
                                                                  image.axis_names, "0.5"))
        forget_open_files()
        tracemalloc.start()
        try:
            if how == "slabs":
                stored, digests = passes.stream_region(record.staged_path, image, str(store), region, plans)
            else:
                block = passes._read(record.staged_path, image, region)
                stored, digests, _ = passes._write_slabs([(region, block)], str(store), region, plans, True)
                del block
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        stores[how] = (stored, sorted(digests), peak)
    (slabbed, digests, peak), (whole, whole_digests, whole_peak) = stores["slabs"], stores["whole"]
    assert slabbed == whole and digests == whole_digests
    for key in whole.objects:
        assert (tmp_path / "slabs" / key).read_bytes() == (tmp_path / "whole" / key).read_bytes()
    plane = 512 * 1024 * 2
    assert whole_peak > 8 * plane  # the region, read whole
    # one shard's width of a plane (the region is two) as read and its halves, a chunk's copy, encoding and
    # read-back, the writers' metadata: 1.7 of the region's planes here (3.3 when a slab was the region's width)
    assert peak < 2.5 * plane and peak < whole_peak / 8, (peak, whole_peak)


def test_a_source_chunked_deeper_than_a_slab_is_read_in_its_own_chunks(tmp_path, settings, monkeypatch):
    """An OME-Zarr input in chunks of 4 planes, an Imaris file's HDF5 chunks of 8: a streaming task reads slabs
    as deep as the source's chunks (never decoding one twice), not plane by plane; a TIFF plane by plane."""
    from builders import imaris_file, ome_zarr_input
    from zarrchive.pixels import passes
    from zarrchive.pixels.sources import read_unit

    data = random_image((8, 64, 64))
    path = ome_zarr_input(tmp_path / "deep.ome.zarr", data, "zyx", z_chunk=4, levels=1)
    record = staged(path, "deep.ome.zarr")
    [image] = convert_file(record, None, str(tmp_path / "w"), settings.convert.model_copy(update={"chunk_xy": 32}))
    assert read_unit(record.staged_path, image.layout) == {"z": 4, "y": 16, "x": 16}
    image = build_pyramid(image, settings.pyramid)
    plans = plan_writes(image, settings.compress.model_copy(update={"profile": "fixed", "shard_xy": 64}))
    [region] = stream_regions(image, plans)
    read = []
    reading = passes._read
    monkeypatch.setattr(passes, "_read", lambda source, image, slab: read.append(slab) or reading(source, image, slab))
    store = tmp_path / "out"
    root = zarr.open_group(str(store), mode="w", zarr_format=3)
    for plan in plans:
        root.create_array(plan.level.path, shape=plan.level.shape, chunks=plan.level.chunks, dtype=image.dtype,
                          fill_value=0, **passes.array_layout(plan, passes.make_codec(CompressSettings(
                              profile="fixed").candidates()[0]), image.axis_names, "0.5"))
    passes.stream_region(record.staged_path, image, str(store), region, plans)
    z = image.axis_names.index("z")
    assert [(s[z].start, s[z].stop) for s in read] == [(0, 4), (4, 8)]  # two slabs of the source's 4 planes
    np.testing.assert_array_equal(zarr.open_array(f"{store}/0", mode="r")[...].reshape(data.shape), data)
    ims = imaris_file(tmp_path / "e.ims", random_image((1, 1, 10, 40, 40)), chunk=(8, 32, 64))
    [imaris] = convert_file(staged(ims, "e.ims"), None, str(tmp_path / "w"), settings.convert)
    assert read_unit(str(ims), imaris.layout)["z"] == 8
    tif = ome_tiff(tmp_path / "z.ome.tif", random_image((4, 32, 32)), "ZYX")
    [tiff] = convert_file(staged(tif, "z.ome.tif"), None, str(tmp_path / "w"), settings.convert)
    assert read_unit(str(tif), tiff.layout) == {}


def test_output_is_sharded_and_each_chunk_still_verified(source, tmp_path, settings, scheduler):
    path, data = source  # level 0: (2, 2, 140, 100) in chunks of (1, 1, 64, 64)
    [(image, report)] = archive_images(path, tmp_path / "s", settings, scheduler, convert={"chunk_xy": 64},
                                       compress={"shard_xy": 128, "shard_z": 2})
    out = zarr.open_array(f"{report.store}/0", mode="r")
    assert out.shards == (1, 2, 128, 128) and out.chunks == (1, 1, 64, 64)
    np.testing.assert_array_equal(out[...], data)
    stored = [p for p in Path(report.store, "0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(stored) == 2 * 1 * 2 * 1  # c x z-shards x y-shards x x-shards, instead of 2 x 2 x 3 x 2 chunks
    [(_, unsharded)] = archive_images(path, tmp_path / "u", settings, scheduler, convert={"chunk_xy": 64},
                                      compress={"shard_xy": 0})
    assert zarr.open_array(f"{unsharded.store}/0", mode="r").shards is None
    assert report.level0_sha256 == unsharded.level0_sha256  # the same pixels, digested chunk by chunk
    assert report.chunks_verified == unsharded.chunks_verified


def test_shard_shapes_are_whole_chunks_within_the_level(settings):
    cfg = settings.compress.model_copy(update={"shard_xy": 1000, "shard_z": 3})
    assert shard_shape(["c", "z", "y", "x"], (2, 10, 5000, 300), (1, 1, 256, 256), cfg) == (1, 3, 1024, 512)
    assert shard_shape(["y", "x"], (100, 100), (64, 64), cfg) == (128, 128)
    assert shard_shape(["y", "x"], (100, 100), (64, 64), cfg.model_copy(update={"shard_xy": 0})) is None


def test_ome_xml_is_kept_beside_the_image_and_windows_come_from_the_data(source, tmp_path, settings, scheduler):
    import tifffile
    from ome_types import from_xml

    path, data = source
    [(image, report)] = archive_images(path, tmp_path / "w", settings, scheduler)
    kept = Path(report.store, "OME", "METADATA.ome.xml").read_text()
    with tifffile.TiffFile(path) as tif:
        assert kept == tif.ome_metadata  # the file's own document, whole
    channels = zarr.open_group(report.store, mode="r").attrs["ome"]["omero"]["channels"]
    for index, channel in enumerate(channels):
        window = channel["window"]
        assert window["min"] == 0 and window["max"] == 65535  # the dtype's range
        assert float(data[index].min()) - 50 <= window["start"] < window["end"] <= float(data[index].max()) + 50

    plain = plain_tiff(tmp_path / "p.tif", random_image((40, 30), "uint8"), description="acquired on scope 3")
    [(_, report)] = archive_images(plain, tmp_path / "w", settings, scheduler)
    generated = from_xml(Path(report.store, "OME", "METADATA.ome.xml").read_text())
    assert generated.images[0].pixels.size_x == 30 and generated.images[0].pixels.type.value == "uint8"
    assert "acquired on scope 3" in generated.structured_annotations.comment_annotations[0].value


def test_regions_shrink_to_the_workers_memory_but_stay_whole_shards():
    from zarrchive.tasks.compress import region_budget

    image, plans = planned((1, 16, 4096, 8192), (1, 1, 512, 512), (1.0, 1.0, 1.0, 1.0), "czyx", 2048, 8)
    unit_bytes = 8 * 2048 * 2048 * 2
    assert [r[-1].stop - r[-1].start for r in stream_regions(image, plans)][:2] == [4096, 4096]  # 128 MiB: 2 units
    small = stream_regions(image, plans, budget=unit_bytes // 3)
    assert {r[-1].stop - r[-1].start for r in small} == {2048}  # never less than one unit of whole shards
    assert len(small) == 2 * 2 * 4

    class Client:  # what the scheduler reports about its workers
        def __init__(self, limits):
            self.limits = limits

        def scheduler_info(self):
            return {"workers": {f"w{i}": {"memory_limit": m} for i, m in enumerate(self.limits)}}

    assert region_budget(Client([4 << 30, 512 << 20])) == (512 << 20) // 8
    assert region_budget(Client([0])) == 128 << 20  # no limit: the default


def test_ngff_04_output_is_zarr_v2_and_validates(source, tmp_path, settings, scheduler):
    from ome_zarr_models.v04 import Image

    from zarrchive.ngff import validate_image

    path, data = source
    [(image, report)] = archive_images(path, tmp_path / "w", settings, scheduler, convert={"chunk_xy": 64},
                                       compress={"ngff": "0.4"})
    group = zarr.open_group(report.store, mode="r")
    assert group.metadata.zarr_format == 2 and group.attrs["multiscales"][0]["version"] == "0.4"
    Image.from_zarr(group)
    assert validate_image(report.store) == []
    level0 = zarr.open_array(f"{report.store}/0", mode="r")
    assert level0.metadata.zarr_format == 2 and level0.metadata.dimension_separator == "/"
    assert_levels_are_block_means(report, image, data)
    assert report.codec.name in ("blosc", "zstd") and (Path(report.store) / "0" / ".zarray").exists()
    assert (Path(report.store) / "OME" / "METADATA.ome.xml").exists()
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(report.store))()))  # older viewers' reader opens it
    np.testing.assert_array_equal(node.data[0].compute(scheduler="synchronous"), data)


def test_an_image_larger_than_the_workers_memory_streams_with_bounded_memory(tmp_path, settings):
    """768 MiB of pixels through two workers of 320 MiB each (more than the cluster's memory): every task holds a
    shard or a few, never the image, and no worker comes near Dask's pause threshold."""
    import threading

    import psutil

    from zarrchive.cluster import cluster_for_run
    from zarrchive.config import ClusterSettings

    planes, edge, limit = 384, 1024, 320 << 20
    base = random_image((edge, edge), "uint16", seed=3) // 4
    path = tmp_path / "big.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k in range(planes):
            tif.write(base + np.uint16(k), contiguous=True, metadata=None)
    cluster = ClusterSettings(n_workers=2, threads_per_worker=1, memory_limit=str(limit), allowed_failures=0)
    with cluster_for_run(cluster) as address:
        from distributed import Client

        with Client(address, set_as_default=False) as client:
            pids = list(client.run(os.getpid).values())
        peak, done = dict.fromkeys(pids, 0), threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                for pid in pids:
                    peak[pid] = max(peak[pid], psutil.Process(pid).memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            [(image, report)] = archive_images(path, tmp_path / "w", settings, address, compress={"profile": "fixed"})
        finally:
            done.set()
            sampler.join()
    assert image.shape == (1, planes, edge, edge) and report.bytes_in > 2 * limit + (64 << 20)
    assert max(peak.values()) < 0.8 * limit, {pid: rss >> 20 for pid, rss in peak.items()}  # below Dask's pause
    level0 = zarr.open_array(f"{report.store}/0", mode="r")
    for k in (0, planes // 2, planes - 1):
        np.testing.assert_array_equal(level0[0, k], base + np.uint16(k))


@pytest.mark.parametrize("raised, expected", [(ValueError("a library's fault"), "StageFailed"),
                                              (OSError(28, "No space left on device"), "OSError")])
def test_a_compress_failure_is_told_as_what_it_is_and_leaves_nothing(source, tmp_path, settings, scheduler,
                                                                      monkeypatch, raised, expected):
    """Not every failure of the pass is 'losslessness violated': a full disk stays an OSError (reported at once,
    never relabelled), a fault of a library a StageFailed naming the image; nothing half-written is kept."""
    from zarrchive.tasks import compress

    path, _data = source

    def fail(store, final):
        raise raised

    monkeypatch.setattr(compress, "_put_in_place", fail)  # the pass is done; its store is not yet in place
    with pytest.raises(Exception) as caught:
        archive_images(path, tmp_path / "w", settings, scheduler, convert={"chunk_xy": 64})
    assert type(caught.value).__name__ == expected
    assert not isinstance(caught.value, VerificationError)
    assert not [p for p in (tmp_path / "w" / "compress").iterdir() if p.suffix != ".json"]


def test_a_small_image_in_one_task_is_the_same_as_streamed_region_by_region(source, tmp_path, settings, scheduler,
                                                                           monkeypatch):
    """An image no larger than a streaming region may be runs its whole pass (codec trial, every level, proofs) in one task
    (``passes.whole_image``); the same image streamed region by region writes the same pixels at every level, the
    same level-0 digest and the same codec."""
    from zarrchive.tasks import compress

    from zarrchive.config import CodecSpec

    path, data = source
    calls = []
    original = compress.begin_whole
    # two candidates of clearly different sizes, chosen by size alone: among candidates of equal size the faster
    # wins, and on chunks this small which is faster is a matter of microseconds (either pass could pick either)
    trial = {"profiles": {"compat": [CodecSpec(codec="zstd", clevel=3),
                                     CodecSpec(codec="blosc", cname="zstd", clevel=5, shuffle="bitshuffle")]},
             "min_encode_mbps": 0.0, "size_tolerance": 0}
    monkeypatch.setattr(compress, "begin_whole", lambda *a, **k: calls.append(1) or original(*a, **k))
    [(image, whole)] = archive_images(path, tmp_path / "a", settings, scheduler, convert={"chunk_xy": 32},
                                      compress=trial)
    assert calls == [1] and len(whole.selection.candidates) == 2
    assert len({t.stored_bytes for t in whole.selection.candidates}) == 2
    monkeypatch.setattr(compress, "region_budget", lambda client: 1)  # streamed: one unit a region
    [(_image, streamed)] = archive_images(path, tmp_path / "b", settings, scheduler, convert={"chunk_xy": 32},
                                          compress=trial)
    assert calls == [1] and len(compress.stream_regions(image, compress.plan_writes(image, settings.compress), 1)) > 1
    assert whole.level0_sha256 == streamed.level0_sha256 and whole.codec == streamed.codec
    assert whole.chunks_verified == streamed.chunks_verified
    for level in image.levels:
        np.testing.assert_array_equal(zarr.open_array(f"{whole.store}/{level.path}", mode="r")[...],
                                      zarr.open_array(f"{streamed.store}/{level.path}", mode="r")[...])
    assert_levels_are_block_means(whole, image, data)


def test_a_failure_on_the_worker_finishing_the_store_fails_the_image_as_what_it_is_and_leaves_nothing(
        source, tmp_path, settings, scheduler):
    """A small image's store is finished on the worker (attributes, OME-XML, digest): an OSError there (the
    converted OME-XML gone) crosses the cluster as an OSError naming the file, and the store is removed."""
    path, _data = source
    record = staged(path)
    [image] = convert_file(record, None, str(tmp_path / "w"), settings.convert)
    image = build_pyramid(image, settings.pyramid)
    os.remove(image.metadata_xml)
    with pytest.raises(OSError) as caught:
        compress_image(image, record, str(tmp_path / "w"), settings.compress, scheduler)
    assert image.metadata_xml in str(caught.value)
    assert not list((tmp_path / "w" / "compress").iterdir())


def test_a_pass_already_done_is_gathered_whatever_its_deadline(scheduler):
    """In a batch, images are begun ahead of the one waited for: one that is done by the time it is waited for
    is gathered, even when its deadline has passed meanwhile (never cancelled and reported as a timeout)."""
    from zarrchive.cluster import client_for
    from zarrchive.tasks.compress import gather_all

    with client_for(scheduler) as client:
        future = client.submit(sum, [1, 2, 3], pure=False)
        future.result()
        assert gather_all(client, [future], deadline=time.monotonic() - 60, shown_as="x.tif") == [6]


@pytest.mark.parametrize("shape, axes, chunk_xy", [((2, 2, 140, 100), "CZYX", 256),  # one level, in hand
                                                   ((1, 600, 520), "CYX", 64),  # the picture from a lower level
                                                   ((3, 90, 70), "CYX", 256)])  # three channels in colour
def test_a_small_image_pass_makes_the_picture_publish_would_make(shape, axes, chunk_xy, tmp_path, settings,
                                                                  scheduler):
    """The whole pass writes the image's thumbnail beside its store, from the pixels and arrays it has in hand:
    byte for byte the PNG ``thumbnail_png`` makes from the finished store. ``zarrchive convert``'s pass
    (``picture=False``) and a label's pass make none."""
    from zarrchive.archive.thumbnails import thumbnail_png

    data = smooth(shape)
    path = ome_tiff(tmp_path / "x.ome.tif", data, axes, {"x": 0.5, "y": 0.5, "z": 1.0} if "Z" in axes else
                    {"x": 0.5, "y": 0.5}, [f"c{i}" for i in range(shape[0])])
    [(image, report)] = archive_images(path, tmp_path / "w", settings, scheduler, convert={"chunk_xy": chunk_xy})
    assert len(image.levels) == (1 if chunk_xy == 256 else 5)
    assert report.thumbnail == f"{report.store}.png"
    assert Path(report.thumbnail).read_bytes() == thumbnail_png(report.store)
    assert not [p for p in (tmp_path / "w" / "compress").iterdir() if "partial" in p.name]
    record = staged(path)
    plain = compress_image(image, record, str(tmp_path / "w2"), settings.compress, scheduler, picture=False)
    label = compress_image(image.model_copy(update={"kind": "label"}), record, str(tmp_path / "w3"),
                           settings.compress, scheduler)
    assert plain.thumbnail is None and label.thumbnail is None
    assert not list((tmp_path / "w2" / "compress").glob("*.png")) + list((tmp_path / "w3" / "compress").glob("*.png"))


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
def test_group_metadata_is_written_as_zarr_python_writes_it(ngff, tmp_path):
    """The pass writes its groups' metadata itself (no round trip to zarr's event loop): the same bytes, in both
    Zarr formats, as zarr-python's own group with those attributes (non-ASCII text, floats, NaN, nesting)."""
    from zarrchive.ngff import ZARR_FORMAT, group_documents

    attributes = {"ome": {"version": ngff, "name": "Zellkern µ-Schnitt", "window": [0.5, float("nan")],
                          "nested": [{"a": None, "b": True}]}}
    group = zarr.open_group(str(tmp_path / "g"), mode="w", zarr_format=ZARR_FORMAT[ngff])
    group.update_attributes(attributes)
    on_disk = {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir()}
    assert group_documents(attributes, ngff) == on_disk
    assert set(on_disk) == ({"zarr.json"} if ngff == "0.5" else {".zgroup", ".zattrs"})


def test_a_picture_that_cannot_be_put_beside_its_store_never_fails_the_image(source, tmp_path, settings, scheduler):
    """The pass's picture gone before it is moved beside the store (a hand in the work area): the image is
    compressed and reported all the same, without a picture (publish then makes one from the store)."""
    from zarrchive.tasks import compress

    path, _data = source
    record = staged(path)
    [image] = convert_file(record, None, str(tmp_path / "w"), settings.convert)
    image = build_pyramid(image, settings.pyramid)
    begun = compress.begin_whole(image, record, str(tmp_path / "w"), settings.compress, scheduler)
    assert begun.future.result().thumbnail
    os.unlink(begun.thumbnail)
    report = compress.end_whole(begun)
    assert report.thumbnail is None and os.path.isdir(report.store) and report.store_sha256


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
@pytest.mark.parametrize("shape, chunk_xy, encoded", [((200, 300), None, 0),  # one chunk: the many-image case
                                                      ((256, 384), 128, 0),  # six whole chunks, all sampled
                                                      ((200, 300), 128, 4)])  # two whole ones sampled, four cut
def test_a_small_image_s_level_0_is_stored_as_its_codec_trial_encoded_it(tmp_path, settings, monkeypatch, ngff,
                                                                         shape, chunk_xy, encoded):
    """The codec trial of a small image encodes whole level-0 chunks: in Zarr v3 those bytes are stored, not
    encoded again (level 0's writer encodes only the chunks not sampled), proven like any chunk, and the store is
    byte for byte the one written without them; Zarr v2's chunk coder is another, so there it encodes as ever."""
    from zarrchive.pixels import codecs, passes, shards
    from zarrchive.pixels.codecs import sample_regions
    from zarrchive.tasks.compress import plan_writes

    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    noise = np.random.default_rng(7).integers(0, 4, shape)
    data = ((yy // 3 + xx // 5) % 200 + noise).astype("uint8")  # compressible: the two candidates differ in size
    path = plain_tiff(tmp_path / "one.tif", data)
    record = staged(path, "one.tif")
    from zarrchive.config import CodecSpec

    two = [CodecSpec(codec="blosc", cname="lz4", clevel=1, shuffle="noshuffle"), CodecSpec(codec="zstd", clevel=3)]
    comp = settings.compress.model_copy(update={"ngff": ngff, "profile": "compat", "profiles": {"compat": two},
                                                "min_encode_mbps": 0.0, "size_tolerance": 0.0})
    conv = settings.convert.model_copy(update={"chunk_xy": chunk_xy} if chunk_xy else {})
    [image] = convert_file(record, None, str(tmp_path / "c"), conv)
    image = build_pyramid(image, settings.pyramid)
    level0 = image.levels[0]
    samples = sample_regions(level0.shape, level0.chunks, comp.sample_chunks)
    assert len(chunk_slices(level0.shape, level0.chunks)) - len(samples) == encoded
    encodes: dict[tuple, int] = {}
    original = shards._v3_coder

    def counted(meta, chunks):
        encode, decode = original(meta, chunks)

        def encode_counted(chunk):
            key = (tuple(meta.shape), shards._is_sharded(meta))  # (the trial's arrays are not sharded)
            encodes[key] = encodes.get(key, 0) + 1
            return encode(chunk)

        return encode_counted, decode

    monkeypatch.setattr(shards, "_v3_coder", counted)
    monkeypatch.setattr(codecs, "_CODERS", {})

    def whole(store, kept_bytes):
        monkeypatch.setattr(codecs, "KEPT_BYTES", kept_bytes)
        encodes.clear()
        done = passes.whole_image(record.staged_path, image, str(store), plan_writes(image, comp), comp.candidates(),
                                  samples, comp.choice(data.nbytes), ngff)
        np.testing.assert_array_equal(zarr.open_array(f"{store}/0", mode="r")[...].reshape(data.shape), data)
        return done, dict(encodes)

    reused, reused_encodes = whole(tmp_path / "kept.zarr", 1 << 20)
    again, again_encodes = whole(tmp_path / "again.zarr", 0)  # nothing kept: level 0 encoded again
    level0_writer = (tuple(level0.shape), True)
    if ngff == "0.5":
        assert reused_encodes.get(level0_writer, 0) == encoded
        assert again_encodes[level0_writer] == len(chunk_slices(level0.shape, level0.chunks))
        trial = sum(n for (_shape, sharded), n in reused_encodes.items() if not sharded)
        assert trial >= 2 * len(samples)  # the trial's (every candidate)
        below = {shape for shape, _sharded in reused_encodes} & {tuple(level.shape) for level in image.levels[1:]}
        assert len(below) == len(image.levels) - 1  # the levels below are encoded as ever
    else:
        assert level0_writer not in reused_encodes  # (Zarr v2: another coder, not counted here)
    assert (reused.sha256, reused.bytes_out, reused.chunks) == (again.sha256, again.bytes_out, again.chunks)
    assert reused.selection.chosen == again.selection.chosen == 1  # the smaller, whatever the speeds
    sizes = [t.stored_bytes for t in reused.selection.candidates]
    assert sizes[1] < 0.9 * sizes[0]


@hsettings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "uint64",
                              "float32", "float64"]),
       size=st.integers(0, 5000), seed=st.integers(0, 2**16), spread=st.sampled_from([1, 3, 255, 65535, 2**31 - 1]),
       spikes=st.integers(0, 4))
def test_a_display_window_is_the_percentiles_of_the_float64_values_whatever_the_type(dtype, size, seed, spread,
                                                                                     spikes):
    """Unsigned integers are no longer copied to float64 for the display window (a quarter of the memory): the
    window is still exactly what the float64 copy gives, on every type, with dead and saturated pixels at the
    type's extremes (where a signed type's interpolation would wrap), NaN and infinities left out of floats."""
    from zarrchive.pixels.passes import window

    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if dtype not in ("bool", "float32", "float64") else None
    low, high = (max(info.min, -spread), min(info.max, spread)) if info else (-spread, spread)
    plane = rng.integers(low, high, size, endpoint=True).astype(dtype)
    if info is not None and size:
        plane[rng.integers(0, size, spikes)] = info.min
        plane[rng.integers(0, size, spikes)] = info.max
    if plane.dtype.kind == "f" and size:
        plane[rng.integers(0, size, 3)] = [np.nan, np.inf, -np.inf]
    values = plane[np.isfinite(plane)].astype(np.float64) if plane.dtype.kind == "f" else plane.astype(np.float64)
    expected = (0.0, 1.0) if values.size == 0 else tuple(float(v) for v in np.percentile(values, [0.1, 99.9]))
    if expected != (0.0, 1.0) and expected[1] <= expected[0]:
        expected = (expected[0], expected[0] + 1)
    assert window(plane) == expected


def _array_codec(array_path):
    """An array's compressor as its metadata names it: (name, its configuration) for Zarr v3 and v2 alike."""
    import json

    if os.path.exists(f"{array_path}/zarr.json"):
        codecs = json.loads(Path(f"{array_path}/zarr.json").read_text())["codecs"]
        inner = codecs[0]["configuration"]["codecs"] if codecs[0]["name"] == "sharding_indexed" else codecs
        [compressor] = inner[1:]
        return compressor["name"], compressor["configuration"]
    config = dict(json.loads(Path(f"{array_path}/.zarray").read_text())["compressor"])
    return config.pop("id"), config


@pytest.mark.parametrize("ngff,streamed", [("0.5", False), ("0.5", True), ("0.4", False)])
def test_the_levels_below_level_0_take_a_faster_codec_that_stores_no_more(tmp_path, settings, scheduler, monkeypatch,
                                                                        ngff, streamed):
    """``compress.levels_codec: fastest``: level 0 keeps the codec its trial chose; the levels below take a levels-only
    candidate that stores a sample of level 1 in fewer bytes and encodes faster (here blosc zstd 1 with bit shuffle
    against zstd 12 on shot noise), each array's metadata naming its own; every level proven and read back by plain
    zarr as the block means; the report and its lineage facts say how. With ``same`` every level has level 0's."""
    from zarrchive.config import CodecSpec
    from zarrchive.tasks import compress

    if streamed:
        monkeypatch.setattr(compress, "region_budget", lambda client: 1)
    rng = np.random.default_rng(5)
    data = (smooth((4, 512, 512)) // 4 + rng.poisson(60, (4, 512, 512))).astype(np.uint16)
    path = plain_tiff(tmp_path / "noise.tif", data)
    profile = {"profiles": {"compat": [CodecSpec(codec="zstd", clevel=12), CodecSpec(codec="zstd", clevel=13),
                                       CodecSpec(codec="blosc", cname="zstd", clevel=1, shuffle="bitshuffle",
                                                 levels=True)]},
               "min_encode_mbps": 0.0, "ngff": ngff}
    [(image, report)] = archive_images(path, tmp_path / "a", settings, scheduler, convert={"chunk_xy": 128},
                                       compress=profile)
    assert len(image.levels) >= 3 and report.codec.name == "zstd"
    assert (report.levels_codec.name, report.levels_codec.configuration["clevel"]) == ("blosc", 1)
    figures, chosen = report.levels_selection.candidates, report.levels_selection.chosen
    named = lambda choice: (choice.name, choice.configuration.get("clevel"))  # noqa: E731 (Zarr v2: another form)
    assert named(figures[0].codec) == named(report.codec) and named(figures[chosen].codec) == ("blosc", 1)
    assert chosen > 0
    assert figures[chosen].stored_bytes < figures[0].stored_bytes
    from zarrchive.pixels.codecs import LEVELS_SPEED_TOLERANCE

    whole = lambda choice: (choice.name, json.dumps(choice.configuration, sort_keys=True))  # noqa: E731
    level0 = {whole(t.codec): t.encode_mbps for t in report.selection.candidates}
    floor = level0[whole(report.selection.candidates[report.selection.chosen].codec)] * (1 - LEVELS_SPEED_TOLERANCE)
    tried = {k for k, speed in level0.items() if speed is None or speed >= floor} | {whole(figures[chosen].codec)}
    assert len(level0) == 2  # zstd 12 and 13 tried for level 0 (the levels-only candidate is not)
    assert sorted(whole(t.codec) for t in figures) == sorted(tried)  # zstd 12 or 13: the other only if as fast
    assert _array_codec(f"{report.store}/0")[0] == "zstd"
    for level in image.levels[1:]:
        name, config = _array_codec(f"{report.store}/{level.path}")
        assert (name, config["clevel"], config["cname"]) == ("blosc", 1, "zstd")
    assert_levels_are_block_means(report, image, data)
    facts = report.facts()
    assert facts["levels_codec"]["name"] == "blosc" and facts["levels_codec_selection"]["chosen"] == chosen
    [(_image, same)] = archive_images(path, tmp_path / "b", settings, scheduler, convert={"chunk_xy": 128},
                                      compress={**profile, "levels_codec": "same"})
    assert same.levels_codec is None and same.levels_selection is None
    assert {_array_codec(f"{same.store}/{level.path}")[0] for level in image.levels} == {same.codec.name}
    assert same.bytes_out > report.bytes_out
    assert_levels_are_block_means(same, image, data)


@given(st.integers(1, 9), st.integers(1, 90), st.integers(1, 90), st.sampled_from([4, 8, 16]), st.integers(1, 3),
       st.sampled_from([0.5, 1.0, 3.0]), st.integers(0, 2**16))
@hsettings(max_examples=120, deadline=None)
def test_the_levels_trial_sees_level_1_s_own_pixels(z, h, w, chunk, chunk_z, z_scale, seed):
    """The levels' codec is chosen on pixels of level 1 as the pyramid makes them: each sample chunk of level 0
    widened to the whole 2-blocks of its level-1 pixels (``paired_region``) and halved is exactly that part of
    level 1, whether level 1 halves z (chunks one plane deep paired with their neighbour) or not, at odd ends too."""
    from zarrchive.pixels.blocks import downsample
    from zarrchive.pixels.codecs import sample_regions
    from zarrchive.pixels.passes import paired_region

    image, plans = planned((z, h, w), (chunk_z, chunk, chunk), (z_scale, 1.0, 1.0), "zyx", 0, 1)
    if len(plans) < 2:
        return
    data = np.random.default_rng(seed).integers(0, 4000, (z, h, w)).astype(np.uint16)
    halved = plans[1].halved
    level1 = downsample(data, halved, "mean")
    for region in sample_regions(data.shape, image.levels[0].chunks, 8):
        wide = paired_region(region, plans)
        assert all(w.start <= r.start and r.stop <= w.stop for r, w in zip(region, wide))
        below = tuple(slice(s.start // 2, -(-s.stop // 2)) if i in halved else s for i, s in enumerate(wide))
        np.testing.assert_array_equal(downsample(data[wide], halved, "mean"), level1[below])

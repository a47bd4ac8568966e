"""``zarrchive convert``: one file to OME-Zarr outside an archive run, with the archive's stages."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from builders import ome_tiff, random_image
from zarrchive.cli import main


def test_convert_one_file_to_a_valid_ome_zarr(tmp_path, config_file, capsys):
    data = random_image((2, 3, 70, 90))
    source = ome_tiff(tmp_path / "cells.ome.tif", data, "CZYX", {"x": 0.2, "y": 0.2, "z": 1.0}, ["DAPI", "GFP"])
    before = source.read_bytes()
    out = tmp_path / "cells.ome.zarr"
    assert main(["convert", str(source), str(out), "--config", config_file(convert={"chunk_xy": 32})]) == 0
    assert source.read_bytes() == before
    from ome_zarr_models.v05 import Image

    model = Image.from_zarr(zarr.open_group(out, mode="r"))
    assert len(model.attributes.ome.multiscales[0].datasets) == 3
    np.testing.assert_array_equal(zarr.open_array(out / "0", mode="r")[...], data)
    err = capsys.readouterr().err
    assert "compress and verify" in err and "100%|" in err  # a progress bar over the bytes of level 0
    assert main(["convert", str(source), str(out), "--config", config_file()]) == 1  # never overwrites silently
    assert "exists already" in capsys.readouterr().err


def test_a_multi_series_file_becomes_a_bioformats2raw_layout(tmp_path, config_file):
    a, b = random_image((30, 40), "uint16", 1), random_image((20, 25), "uint16", 2)
    source = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(source, ome=True) as tif:
        tif.write(a, metadata={"axes": "YX"})
        tif.write(b, metadata={"axes": "YX"})
    out = tmp_path / "two.ome.zarr"
    assert main(["convert", str(source), str(out), "--config", config_file()]) == 0
    assert zarr.open_group(out, mode="r").attrs["ome"]["bioformats2raw.layout"] == 3
    np.testing.assert_array_equal(zarr.open_array(out / "1" / "0", mode="r")[0], b)


def test_a_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, config_file, capsys):
    bad = tmp_path / "scan.tif"
    bad.write_text("not an image")
    assert main(["convert", str(bad), str(tmp_path / "out.ome.zarr"), "--config", config_file()]) == 1
    assert "scan.tif" in capsys.readouterr().err and not (tmp_path / "out.ome.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("zarrchive-convert-")]


def test_codec_profile_on_the_command_line(tmp_path, config_file, capsys):
    yy, xx = np.mgrid[0:96, 0:80]
    smooth = 400 + 300 * np.sin(yy / 7.0) * np.cos(xx / 5.0)
    data = (smooth + np.random.default_rng(1).poisson(30, (1, 2, 96, 80))).astype("uint16")
    source = ome_tiff(tmp_path / "p.ome.tif", data, "CZYX", {"x": 0.2, "y": 0.2, "z": 1.0})
    out = tmp_path / "p.ome.zarr"
    config = config_file(convert={"chunk_xy": 32}, compress={"min_encode_mbps": 0})  # tiny chunks measure slow
    assert main(["convert", str(source), str(out), "--config", config, "--codec-profile", "max"]) == 0
    serializer = zarr.open_array(out / "0", mode="r").metadata.codecs[0].codecs[0]
    # max: a codec readable without zarrchive (tests/test_codecs.py reads every one in a fresh Python)
    assert serializer.to_dict()["name"] in ("numcodecs.pcodec", "imagecodecs_jpegls", "imagecodecs_jpegxl")
    np.testing.assert_array_equal(zarr.open_array(out / "0", mode="r")[...], data)
    capsys.readouterr()
    assert main(["convert", str(source), str(tmp_path / "x.ome.zarr"), "--codec-profile", "best"]) == 2
    assert "invalid choice: 'best'" in capsys.readouterr().err


def test_the_output_folder_is_created_when_missing(tmp_path, config_file):
    source = ome_tiff(tmp_path / "s.ome.tif", random_image((1, 1, 40, 30)), "CZYX")
    out = tmp_path / "not" / "yet" / "s.ome.zarr"
    assert main(["convert", str(source), str(out), "--config", config_file()]) == 0
    assert zarr.open_group(out, mode="r").attrs["ome"]["version"] == "0.5"


@pytest.mark.parametrize("streamed", [True, False])
def test_progress_follows_the_bytes_of_level_0_written(tmp_path, monkeypatch, streamed):
    """Streamed region by region (a large image), progress follows each region written; a small image's whole
    pass is one task: from nothing to everything."""
    from zarrchive.config import load_settings
    from zarrchive.standalone import convert_to_ome_zarr
    from zarrchive.tasks import compress

    if streamed:
        monkeypatch.setattr(compress, "_level0_bytes", lambda image: 1 << 62)

    data = random_image((6, 64, 80))
    source = ome_tiff(tmp_path / "stack.ome.tif", data, "ZYX", {"x": 0.2, "y": 0.2, "z": 1.0})
    events: list[tuple] = []
    settings = load_settings(overrides={"convert": {"chunk_xy": 32}, "compress": {"shard_xy": 32, "shard_z": 1},
                                        "cluster": {"n_workers": 1, "threads_per_worker": 1}})
    convert_to_ome_zarr(str(source), str(tmp_path / "out.ome.zarr"), settings, lambda *event: events.append(event))
    counts = [e[1:] for e in events if len(e) == 3]
    assert counts[0] == (0, data.nbytes) and counts[-1] == (data.nbytes, data.nbytes)
    assert len(counts) == (1 + 6 * 2 if streamed else 2)  # streamed: a task per row of shards of each plane
    assert [done for done, _ in counts] == sorted(done for done, _ in counts)
    assert events[-1] == (f"wrote {tmp_path / 'out.ome.zarr'}",)


def test_an_ome_zarr_input_is_rechunked_recompressed_and_revalidated(tmp_path, config_file):
    from builders import ome_zarr_input

    data = random_image((2, 40, 36))
    source = ome_zarr_input(tmp_path / "in.ome.zarr", data, "CYX", {"x": 0.3, "y": 0.3}, ["a", "b"], version="0.4")
    out = tmp_path / "out.ome.zarr"
    assert main(["convert", str(source), str(out), "--config", config_file(convert={"chunk_xy": 16})]) == 0
    group = zarr.open_group(out, mode="r")
    assert group.attrs["ome"]["version"] == "0.5" and group["0"].chunks == (1, 16, 16)
    np.testing.assert_array_equal(group["0"][...], data)


def test_a_source_changed_while_being_converted_fails_and_writes_nothing(tmp_path):
    import os

    from zarrchive.config import load_settings
    from zarrchive.errors import InputError
    from zarrchive.standalone import convert_to_ome_zarr

    source = ome_tiff(tmp_path / "live.ome.tif", random_image((1, 2, 40, 30)), "CZYX")
    before = source.read_bytes()

    def touch_while_writing(message, *counts):  # as an acquisition still writing the file would
        if message.startswith("convert, pyramid"):
            stat = source.stat()
            os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    settings = load_settings(overrides={"cluster": {"n_workers": 1, "threads_per_worker": 1}})
    with pytest.raises(InputError, match="live.ome.tif: changed while it was being converted"):
        convert_to_ome_zarr(str(source), str(tmp_path / "out.ome.zarr"), settings, touch_while_writing)
    assert not (tmp_path / "out.ome.zarr").exists() and source.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("zarrchive-convert-")]


def test_a_multi_file_ome_tiff_set_converts_from_its_first_file(tmp_path, config_file, capsys):
    from builders import ome_tiff_file_set

    data = random_image((6, 32, 40))
    first, second, _third = ome_tiff_file_set(tmp_path / "set", data, ["t_0.ome.tif", "t_1.ome.tif", "t_2.ome.tif"])
    out = tmp_path / "set.ome.zarr"
    assert main(["convert", str(first), str(out), "--config", config_file()]) == 0
    np.testing.assert_array_equal(zarr.open_array(out / "0", mode="r")[0], data)  # every member's planes
    second.unlink()
    assert main(["convert", str(first), str(tmp_path / "again.ome.zarr"), "--config", config_file()]) == 1
    assert "t_1.ome.tif" in capsys.readouterr().err and not (tmp_path / "again.ome.zarr").exists()

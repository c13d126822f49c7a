"""Remote sensing speed paths: sampled statistics, validity without mask reads, the PNG writer, chip pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from mini_internvl_adapt.domains.remote_sensing import raster as R  # noqa: E402
from mini_internvl_adapt.domains.remote_sensing.chips import chip_windows, write_chips  # noqa: E402
from PIL import Image  # noqa: E402
from test_remote_sensing_raster import write_raster  # noqa: E402


def write_tiled(path: Path, data: np.ndarray, overviews: bool = False, **profile: object) -> Path:
    """A tiled (256 px blocks) GeoTIFF, as scenes usually are."""
    return write_raster(
        path, data, overviews, **{"tiled": True, "blockxsize": 256, "blockysize": 256, **profile}
    )


def gradient_scene(size: int = 2048, seed: int = 0) -> np.ndarray:
    """One uint16 band: a left-to-right ramp (so where the sample looks matters) plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(1000, 5000, size)[None, :].repeat(size, 0)
    return (ramp + rng.normal(0, 200, (size, size))).clip(1, 65535).astype(np.uint16)[None]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
def test_histogram_percentiles_equal_numpy(dtype: str) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 10_001):
        values = rng.integers(info.min, info.max, n, endpoint=True).astype(dtype)
        qs = (0.0, 2.0, 37.5, 98.0, 100.0)
        assert R.percentiles(values, qs) == pytest.approx(np.percentile(values.astype(float), qs))
    floats = rng.normal(size=1000).astype(np.float32)
    assert R.percentiles(floats, (2, 98)) == pytest.approx(np.percentile(floats.astype(float), (2, 98)))


def test_validity_from_nodata_equals_gdal_masks(tmp_path: Path, shared_data: Path) -> None:
    rng = np.random.default_rng(2)
    data = rng.integers(0, 4, (3, 40, 50)).astype(np.uint16)  # plenty of zeros, band by band
    paths = [
        write_tiled(tmp_path / "nodata.tif", data, nodata=0, tiled=False),
        write_tiled(tmp_path / "plain.tif", data, tiled=False),  # no nodata: every pixel valid
        shared_data / "geotiff" / "RGB.byte.tif",  # nodata 0
        shared_data / "geotiff" / "RGBA.uint16.tif",  # alpha: goes through GDAL's masks
        shared_data / "geotiff" / "float_raster_with_nodata.tif",  # float: GDAL's masks
    ]
    for path in paths:
        with R.open_raster(path) as ds:
            bands = list(range(1, min(ds.count, 3) + 1))
            window = (1, 2, min(ds.width - 1, 30), min(ds.height - 2, 20))
            _, valid = R.read_window(ds, bands, *window)
            masks = ds.read_masks(bands, window=rasterio.windows.Window(*window))
            values = ds.read(bands, window=rasterio.windows.Window(*window))
            expected = np.all(masks > 0, axis=0)
            if values.dtype.kind == "f":
                expected &= np.all(np.isfinite(values), axis=0)
            assert (valid == expected).all(), path.name
    with R.open_raster(paths[0]) as ds:
        assert R._integer_nodata(ds, [1, 2, 3]) == [0, 0, 0]  # the fast path is taken
        _, valid = R.read_window(ds, [1, 2, 3], 0, 0, 50, 40)
        assert (valid == np.all(data != 0, axis=0)).all()


def test_sample_windows_are_seeded_spread_and_within_budget() -> None:
    windows = R.sample_windows(3584, 3584, (256, 256))
    assert windows == R.sample_windows(3584, 3584, (256, 256))  # deterministic
    assert windows != R.sample_windows(3584, 3584, (256, 256), seed=1)
    assert len(windows) == R.STATS_MIN_BLOCKS
    assert sum(w * h for _, _, w, h in windows) <= R.STATS_SIDE**2
    assert all(c // 256 == (c + w - 1) // 256 and r // 256 == (r + h - 1) // 256 for c, r, w, h in windows)
    rows = sorted(r for _, r, _, _ in windows)
    assert rows[0] < 3584 / 8 and rows[-1] >= 3584 * 7 / 8 - 256  # from the top to the bottom of the scene
    strips = R.sample_windows(3584, 3584, (1, 3584))  # a strip-organised scene: whole rows
    assert all(w == R.STATS_SIDE**2 // len(strips) and h == 1 for _, _, w, h in strips)
    assert R.sample_windows(2000, 2000, (2000, 2000)) == []  # one huge block: nothing to sample


def test_large_scene_stats_come_from_a_sample_close_to_the_exact_ones(tmp_path: Path) -> None:
    data = gradient_scene()
    exact = np.percentile(data.astype(float), (2, 98))
    with R.open_raster(write_tiled(tmp_path / "big.tif", data)) as ds:
        values, valid, how = R.stats_sample(ds, [1])
        stretch = R.scene_stretch(ds, [1], R.RenderOptions())
    assert how == "blocks" and values.shape[1] <= R.STATS_SIDE**2 and valid.all()
    span = exact[1] - exact[0]
    assert abs(stretch.lo[0] - exact[0]) < 0.05 * span and abs(stretch.hi[0] - exact[1]) < 0.05 * span
    with R.open_raster(write_tiled(tmp_path / "ovr.tif", data, overviews=True)) as ds:
        assert ds.overviews(1) == [2, 4, 8]
        assert R.stats_sample(ds, [1])[2] == "overview"
    with R.open_raster(write_tiled(tmp_path / "small.tif", data[:, :512, :512])) as ds:
        assert R.stats_sample(ds, [1])[2] == "full"


def test_valid_patch_missed_by_the_sample_falls_back_to_a_decimated_read(tmp_path: Path) -> None:
    data = np.zeros((1, 2048, 2048), dtype=np.uint16)
    data[0, 100:200, 100:200] = 700  # between the sampled windows (each at the top-left of its block)
    path = write_tiled(tmp_path / "patch.tif", data, nodata=0)
    windows = R.sample_windows(2048, 2048, (256, 256))
    assert not any(data[0, r : r + h, c : c + w].any() for c, r, w, h in windows)
    with R.open_raster(path) as ds:
        _, valid, how = R.stats_sample(ds, [1])
        stretch = R.scene_stretch(ds, [1], R.RenderOptions(stretch="minmax"))
    assert how == "decimated" and valid.any()  # not a false "no valid pixel"
    assert stretch.lo == [700.0] and stretch.hi == [700.0]
    empty = write_tiled(tmp_path / "empty.tif", np.zeros((1, 2048, 2048), dtype=np.uint16), nodata=0)
    with R.open_raster(empty) as ds, pytest.raises(R.NoValidPixelsError, match="empty.tif: no valid pixel"):
        R.scene_stretch(ds, [1], R.RenderOptions())


def test_write_chips_pipeline_writes_lossless_chips_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(100, 3000, (3, 300, 260)).astype(np.uint16)
    data[:, :, :150] = 0  # chips in the left part are mostly nodata
    path = write_tiled(tmp_path / "s.tif", data, nodata=0)
    windows = chip_windows(260, 300, 128, 128)
    names = [f"images/c{c}_{r}.png" for c, r, _, _ in windows]
    with R.open_raster(path) as ds:
        stretch = R.scene_stretch(ds, [1, 2, 3], R.RenderOptions())
        expected = [stretch.apply(*R.read_window(ds, [1, 2, 3], *w)) for w in windows]
    results = write_chips(path, [1, 2, 3], stretch, windows, names, tmp_path / "ds", 0.5, workers=3)
    assert [r.window for r in results] == windows  # one result per window, in order
    written = 0
    for result, name, rgb in zip(results, names, expected):
        if result.window[:2] not in ((128, 0), (128, 128)):  # nodata (column 0) or mostly padding
            assert result.valid_fraction < 0.5 and result.image is None
            assert not (tmp_path / "ds" / name).exists()
            continue
        written += 1
        assert result.image == name
        with Image.open(tmp_path / "ds" / name) as im:
            assert im.size == (128, 128) and (np.asarray(im) == rgb).all()  # PNG is lossless
    assert written == 2 and results[0].valid_fraction == 0.0


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16"])
def test_lookup_stretch_equals_the_arithmetic_one(dtype: str) -> None:
    # The table is indexed by the values' unsigned view: signed values must land on their own entries.
    info = np.iinfo(dtype)
    data = np.random.default_rng(3).integers(info.min, info.max + 1, size=(3, 40, 50)).astype(dtype)
    data[:, 0, :3] = [[info.min, -1 if info.min else 1, info.max]] * 3
    stretch = R.Stretch("percentile", [info.min / 3, -5.0, 0.0], [info.max / 2, 100.0, 0.0])  # band 3 flat
    valid = np.ones(data.shape[1:], dtype=bool)
    valid[5:9, 7:20] = False
    want = stretch._scale(data) * valid
    assert np.array_equal(stretch.planes(data, valid), want)

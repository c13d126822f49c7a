"""Remote sensing rasters: band choice, one stretch per scene, validity masks, window reads, chip grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from mini_internvl_adapt.domains.remote_sensing.chips import chip_offsets, chip_transform, chip_windows  # noqa: E402
from mini_internvl_adapt.domains.remote_sensing.raster import (  # noqa: E402
    BandError,
    NoValidPixelsError,
    RenderOptions,
    choose_bands,
    open_raster,
    parse_bands,
    parse_percentiles,
    read_window,
    render_whole,
    scene_stretch,
)
from rasterio.transform import from_origin  # noqa: E402


def write_raster(path: Path, data: np.ndarray, overviews: bool = False, **profile: object) -> Path:
    """A GeoTIFF of `data` (bands, rows, cols) in EPSG:32633 at 10 m; `profile` overrides any creation option."""
    count, height, width = data.shape
    base = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": str(data.dtype),
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 5600000, 10, 10),
    }
    base.update(profile)
    descriptions = base.pop("descriptions", None)
    with rasterio.open(path, "w", **base) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions
        if overviews:
            dst.build_overviews([2, 4, 8])
    return path


def test_option_parsing_errors_are_clear() -> None:
    assert parse_bands("4,3,2") == (4, 3, 2) and parse_bands(None) is None
    with pytest.raises(ValueError, match="1-based"):
        parse_bands("0,1,2")
    assert parse_percentiles("1,99") == (1.0, 99.0)
    with pytest.raises(ValueError, match="LO,HI"):
        parse_percentiles("5")
    with pytest.raises(ValueError, match="0 <= LO < HI <= 100"):
        RenderOptions(percentiles=(98, 2))
    with pytest.raises(ValueError, match="unknown stretch"):
        RenderOptions(stretch="gamma")


def test_default_bands_follow_colour_interpretation_and_alpha(shared_data: Path) -> None:
    geotiff = shared_data / "geotiff"
    with open_raster(geotiff / "RGB.byte.tif") as ds:
        assert choose_bands(ds, None) == [1, 2, 3]
    with open_raster(geotiff / "RGBA.uint16.tif") as ds:  # bands labelled blue, green, red, alpha
        assert choose_bands(ds, None) == [3, 2, 1]
    with open_raster(geotiff / "float_raster_with_nodata.tif") as ds:
        assert choose_bands(ds, None) == [1]


def test_more_than_four_bands_without_bands_lists_descriptions(tmp_path: Path) -> None:
    data = np.ones((5, 8, 8), dtype=np.uint16)
    path = write_raster(tmp_path / "s2.tif", data, descriptions=("B2", "B3", "B4", "B8", "B11"))
    with open_raster(path) as ds:
        with pytest.raises(BandError, match=r"5 bands .*--bands.*1=B2.*5=B11"):
            choose_bands(ds, None)
        with pytest.raises(BandError, match=r"band\(s\) \[7\] requested but the raster has 5"):
            choose_bands(ds, (7, 3, 2))
        assert choose_bands(ds, (3, 2, 1)) == [3, 2, 1]


def test_default_bands_follow_band_descriptions(tmp_path: Path) -> None:
    # The demo's layout: bands described blue, green, red, nir with gray/undefined colour interpretation.
    data = np.ones((4, 8, 8), dtype=np.uint16)
    path = write_raster(tmp_path / "bgrn.tif", data, descriptions=("blue", "green", "red", "nir"))
    with open_raster(path) as ds:
        assert choose_bands(ds, None) == [3, 2, 1]  # true colour, not the nir false colour
    path = write_raster(
        tmp_path / "named.tif", data, descriptions=("B4 - Red", "B3 - Green", "B2 - Blue", "B8")
    )
    with open_raster(path) as ds:
        assert choose_bands(ds, None) == [1, 2, 3]
    # "Red edge" is not red, so the bands are not labelled as true colour and no default fits.
    path = write_raster(tmp_path / "edge.tif", data, descriptions=("blue", "green", "red edge", "nir"))
    with open_raster(path) as ds:
        with pytest.raises(BandError, match="pass --bands R,G,B") as err:
            choose_bands(ds, None)
        assert "4,3,2" not in str(err.value)


def test_many_labelled_bands_error_suggests_true_colour(tmp_path: Path) -> None:
    data = np.ones((6, 8, 8), dtype=np.uint16)
    names = ("coastal", "blue", "green", "red", "nir", "swir1")
    path = write_raster(tmp_path / "l8.tif", data, descriptions=names)
    expected = r"6 bands .*--bands 4,3,2 \(the bands labelled red, green, blue\)"
    with open_raster(path) as ds, pytest.raises(BandError, match=expected):
        choose_bands(ds, None)


def test_percentile_stretch_ignores_nodata_and_is_shared_by_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1000, 3000, size=(3, 64, 64)).astype(np.uint16)
    data[:, :, :16] = 0  # nodata strip: must not drag the low percentile to 0
    data[0, 40, 40] = 60000  # one hot pixel: beyond the 98th percentile
    path = write_raster(tmp_path / "s.tif", data, nodata=0)
    with open_raster(path) as ds:
        stretch = scene_stretch(ds, [1, 2, 3], RenderOptions())
        valid_values = data[:, :, 16:].reshape(3, -1).astype(float)
        assert stretch.mode == "percentile"
        assert stretch.lo == pytest.approx(list(np.percentile(valid_values, 2, axis=1)))
        assert stretch.hi == pytest.approx(list(np.percentile(valid_values, 98, axis=1)))
        values, valid = read_window(ds, [1, 2, 3], 0, 0, 32, 32)
        rgb = stretch.apply(values, valid)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert not valid[:, :16].any() and valid[:, 16:].all()
    assert (rgb[:, :16] == 0).all()  # invalid renders black
    assert rgb[:, 16:].max() == 255 and rgb[:, 16:].min() == 0  # stretched to the full range


def test_minmax_and_none_stretch(tmp_path: Path) -> None:
    data = np.array([[[100, 200], [300, 400]]], dtype=np.uint16)
    path = write_raster(tmp_path / "g.tif", data)
    with open_raster(path) as ds:
        mm = scene_stretch(ds, [1], RenderOptions(stretch="minmax"))
        assert (mm.lo, mm.hi) == ([100.0], [400.0])
        values, valid = read_window(ds, [1], 0, 0, 2, 2)
        grey = mm.apply(values, valid)
        assert grey.shape == (2, 2, 3) and (grey[..., 0] == grey[..., 2]).all()  # grey replicated
        assert grey[0, 0, 0] == 0 and grey[1, 1, 0] == 255 and grey[0, 1, 0] == 85
        none = scene_stretch(ds, [1], RenderOptions(stretch="none")).apply(values, valid)
        assert none[0, 0, 0] == 100 and none[0, 1, 0] == 200 and none[1, 1, 0] == 255  # clipped


def test_uint8_is_kept_as_is_and_alpha_masks(shared_data: Path) -> None:
    geotiff = shared_data / "geotiff"
    with open_raster(geotiff / "RGB.byte.tif") as ds:
        stretch = scene_stretch(ds, [1, 2, 3], RenderOptions())
        assert stretch.mode == "none"
        values, valid = read_window(ds, [1, 2, 3], 300, 300, 64, 64)
        rgb = stretch.apply(values, valid)
        assert (rgb.transpose(2, 0, 1)[:, valid] == values[:, valid]).all()
    with open_raster(geotiff / "RGBA.uint16.tif") as ds:
        mask = ds.dataset_mask() > 0
        values, valid = read_window(ds, [3, 2, 1], 0, 0, ds.width, ds.height)
        assert (valid == mask).all() and 0.4 < valid.mean() < 0.6  # the alpha band is the mask


def test_all_nodata_raises_and_edge_windows_are_padded_invalid(shared_data: Path) -> None:
    geotiff = shared_data / "geotiff"
    with (
        open_raster(geotiff / "all-nodata.tif") as ds,
        pytest.raises(NoValidPixelsError, match="all-nodata.tif: no valid pixel"),
    ):
        scene_stretch(ds, choose_bands(ds, None), RenderOptions())
    with open_raster(geotiff / "float_raster_with_nodata.tif") as ds:
        values, valid = read_window(ds, [1], 8, 8, 10, 10)  # raster is 13x12: most of it is padding
        assert values.shape == (1, 10, 10)
        assert not valid[4:, :].any() and not valid[:, 5:].any()


def test_chip_grid_covers_the_scene_and_chip_transforms_map_back(shared_data: Path) -> None:
    assert chip_offsets(1000, 448, 448) == [0, 448, 896]
    assert chip_offsets(448, 448, 448) == [0]
    assert chip_offsets(500, 448, 224) == [0, 224]
    assert len(chip_windows(791, 718, 256, 256)) == 4 * 3
    with open_raster(shared_data / "geotiff" / "rotated.tif") as ds:
        assert ds.crs is None
        t = chip_transform(ds.transform, (2, 3, 4, 4))
        a, b, c, d, e, f = t
        # The chip's pixel (0, 0) is the scene's pixel (2, 3), even with a rotated transform.
        assert (c, f) == pytest.approx(ds.transform @ (2, 3))
        assert (a * 1 + b * 1 + c, d * 1 + e * 1 + f) == pytest.approx(ds.transform @ (3, 4))


def test_render_whole_decimates_past_max_size(shared_data: Path) -> None:
    rgb, info = render_whole(shared_data / "geotiff" / "RGB.byte.tif", RenderOptions(), max_size=200)
    assert max(rgb.shape[:2]) == 200 and rgb.shape[2] == 3
    assert info["crs"] == "EPSG:32618" and info["source_size"] == [791, 718]
    # The rendered image's transform spans the same ground: pixel size scaled up by 791 / 200.
    assert info["transform"][0] == pytest.approx(300.0379266750948 * 791 / 200)

"""Rasters to 8-bit RGB: band choice, one contrast stretch per scene, validity masks, window reads.

Invalid pixels (nodata, internal masks, alpha, NaN, padding past the edge) render black and never
enter the statistics. Everything here goes through rasterio; it is imported by the caller on use.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import require_rasterio

STRETCHES = ("none", "percentile", "minmax")
# Statistics come from about STATS_SIDE**2 pixels (262k: percentiles stable to well under one grey level).
# Where they come from depends on what is cheap (see stats_sample): a scene of at most STATS_FULL_PIXELS is
# read whole; a larger one with overviews is read decimated (GDAL serves that from an overview); a larger
# one without overviews gives a seeded, spread-out sample of its own blocks, because a decimated read
# there decodes every block of the scene and costs more than reading all its chips.
STATS_SIDE = 512
STATS_FULL_PIXELS = 1024 * 1024
# At least this many blocks are sampled, so a scene with large blocks is still seen in many places.
STATS_MIN_BLOCKS = 32
STATS_SEED = 0

Window4 = tuple[int, int, int, int]


class BandError(ValueError):
    """The raster's bands cannot be mapped to RGB without `--bands`; the message lists them."""


class NoValidPixelsError(ValueError):
    """The raster (or the selected bands) has no valid pixel at all."""


@dataclass(frozen=True)
class RenderOptions:
    """How a raster becomes an 8-bit RGB image.

    Attributes:
        bands: 1-based band indexes (1 or 3 of them), or None for the default choice.
        stretch: "none", "percentile" or "minmax"; None keeps uint8 as is and stretches other dtypes
            by percentiles.
        percentiles: Low and high percentiles of the percentile stretch.
    """

    bands: tuple[int, ...] | None = None
    stretch: str | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)

    def __post_init__(self) -> None:
        if self.stretch is not None and self.stretch not in STRETCHES:
            raise ValueError(f"unknown stretch '{self.stretch}'; use one of {', '.join(STRETCHES)}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= LO < HI <= 100, got {lo},{hi}")
        if self.bands is not None and len(self.bands) not in (1, 3):
            raise ValueError(f"--bands takes 1 or 3 band numbers, got {len(self.bands)}")


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """'4,3,2' -> (4, 3, 2); None stays None."""
    if text is None:
        return None
    try:
        bands = tuple(int(b) for b in str(text).split(",") if b.strip())
    except ValueError:
        raise ValueError(f"--bands must be comma-separated band numbers (1-based), got '{text}'") from None
    if not bands or min(bands) < 1:
        raise ValueError(f"--bands must be comma-separated band numbers (1-based), got '{text}'")
    return bands


def parse_percentiles(text: str | None) -> tuple[float, float]:
    """'2,98' -> (2.0, 98.0); None gives the default (2, 98)."""
    if text is None:
        return (2.0, 98.0)
    parts = str(text).split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--percentiles must be LO,HI (e.g. 2,98), got '{text}'") from None
    return (lo, hi)


def open_raster(path: str | Path) -> Any:
    """Open a raster quietly: a plain TIFF's NotGeoreferencedWarning is expected here, not news."""
    rasterio = require_rasterio()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.open(path)


def _band_listing(ds: Any) -> str:
    rows = []
    for i in range(1, ds.count + 1):
        desc = ds.descriptions[i - 1] or "no description"
        rows.append(f"{i}={desc} ({ds.colorinterp[i - 1].name})")
    return ", ".join(rows)


_COLOURS = ("red", "green", "blue")


def _described_colour(description: str | None) -> str | None:
    """The colour a band description names ("red", "Red", "B4 - red", "band_red"), or None.

    Only a whole word counts, and "red edge" / "rededge" bands (Sentinel-2) are not red.
    """
    words = re.findall(r"[a-z]+", (description or "").lower())
    named = [c for c in _COLOURS if c in words]
    if len(named) != 1 or "edge" in words:
        return None
    return named[0]


def true_colour_bands(ds: Any) -> list[int] | None:
    """The 1-based red, green, blue bands, from the colour interpretation or else the band descriptions.

    Returns:
        [red, green, blue], or None when the raster does not label each of the three exactly once.
    """
    from rasterio.enums import ColorInterp

    interp = list(ds.colorinterp)
    by_interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(interp.count(c) == 1 for c in by_interp):
        return [interp.index(c) + 1 for c in by_interp]
    # Many writers (numpy -> GeoTIFF, band stacks) name the bands but leave the colour interpretation
    # as gray/undefined: the descriptions are then the only labels.
    described = [_described_colour(d) for d in ds.descriptions]
    if all(described.count(c) == 1 for c in _COLOURS):
        return [described.index(c) + 1 for c in _COLOURS]
    return None


def choose_bands(ds: Any, bands: tuple[int, ...] | None) -> list[int]:
    """The 1-based bands to render: the requested ones, or the default for the band layout.

    Default (up to 4 bands): the bands labelled red, green, blue (colour interpretation, else band
    descriptions) in that order, i.e. true colour; else 3 bands -> 1,2,3; 4 bands whose 4th is alpha ->
    1,2,3 (the alpha acts as the mask); 1 band -> grey. More than 4 bands always need `bands`.

    Raises:
        BandError: A requested band does not exist, or no default fits; the message lists the bands and,
            when they are labelled, suggests their true-colour order.
    """
    from rasterio.enums import ColorInterp

    if bands is not None:
        bad = [b for b in bands if b > ds.count]
        if bad:
            raise BandError(
                f"{ds.name}: band(s) {bad} requested but the raster has {ds.count}: {_band_listing(ds)}"
            )
        return list(bands)
    interp = list(ds.colorinterp)
    has_alpha = interp[-1] == ColorInterp.alpha
    rgb = true_colour_bands(ds)
    if ds.count <= 4 and rgb is not None:
        return rgb
    if ds.count == 3 or (ds.count == 4 and has_alpha):
        return [1, 2, 3]
    if ds.count == 1:
        return [1]
    if rgb is not None:
        hint = f"for true colour pass --bands {','.join(map(str, rgb))} (the bands labelled red, green, blue)"
    else:
        hint = "pass --bands R,G,B with the 1-based numbers of the bands to show as red, green and blue"
    raise BandError(
        f"{ds.name}: {ds.count} bands and no default RGB mapping; {hint}. Bands: {_band_listing(ds)}"
    )


def _valid(data: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Valid where every selected band's mask is set and every value is finite."""
    valid = np.all(masks > 0, axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.all(np.isfinite(data), axis=0)
    return valid


def _integer_nodata(ds: Any, bands: list[int]) -> list[int | None] | None:
    """Per band, the nodata value (None: every pixel valid) when validity needs no mask read, else None.

    That holds for integer bands whose GDAL mask is "all valid" or "nodata" with a value the dtype can
    hold: then `values != nodata` is exactly GDAL's mask, and comparing the values already read costs far
    less than GDAL reading the band a second time to build its mask. Alpha, internal masks and float
    bands (NaN, GDAL's tolerant float comparison) go through read_masks.
    """
    from rasterio.enums import MaskFlags

    out: list[int | None] = []
    for b in bands:
        dtype = np.dtype(ds.dtypes[b - 1])
        flags = ds.mask_flag_enums[b - 1]
        if dtype.kind not in "ui":
            return None
        if flags == [MaskFlags.all_valid]:
            out.append(None)
            continue
        nodata = ds.nodatavals[b - 1]
        info = np.iinfo(dtype)
        if flags != [MaskFlags.nodata] or nodata is None or not float(nodata).is_integer():
            return None
        if not info.min <= nodata <= info.max:
            return None
        out.append(int(nodata))
    return out


def _read_valid(ds: Any, bands: list[int], data: np.ndarray, **read_kw: Any) -> np.ndarray:
    """Validity of values just read with `read_kw` (window or out_shape), from nodata or GDAL's masks."""
    # The mask facts are the same for every window of a file: looked up once per handle, file and bands
    # (rasterio's properties cost more than the comparisons below on a 448-px chip). The file name is in
    # the key because a closed handle's id can come back for another file.
    key = (id(ds), str(ds.name), tuple(bands))
    if key not in _NODATA_CACHE:
        _NODATA_CACHE.clear()  # one scene at a time
        _NODATA_CACHE[key] = _integer_nodata(ds, bands)
    nodata = _NODATA_CACHE[key]
    if nodata is None:
        return _valid(data, ds.read_masks(bands, **read_kw))
    valid: np.ndarray | None = None
    for band, value in zip(data, nodata):
        if value is not None:
            valid = band != value if valid is None else np.logical_and(valid, band != value, out=valid)
    return np.ones(data.shape[1:], dtype=bool) if valid is None else valid


_NODATA_CACHE: dict[tuple[int, str, tuple[int, ...]], list[int | None] | None] = {}


@dataclass
class Stretch:
    """A per-band linear map to 0-255, fixed once per scene so all its chips share one contrast."""

    mode: str
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)
    _luts: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def _lut(self, dtype: np.dtype) -> np.ndarray | None:
        """Per-band lookup tables for 8/16-bit integers: one gather per pixel instead of float arithmetic."""
        if dtype.kind not in "ui" or dtype.itemsize > 2:
            return None
        if dtype.name not in self._luts:
            info = np.iinfo(dtype)
            values = np.arange(info.min, info.max + 1, dtype=np.int32)[None, :]
            table = self._scale(values.repeat(len(self.lo), axis=0)[:, :, None])[:, :, 0]
            # Indexed by the values' unsigned view (planes): a signed value v sits at v mod 2**bits.
            self._luts[dtype.name] = np.roll(table, info.min, axis=1) if info.min else table
        return self._luts[dtype.name]

    def _scale(self, data: np.ndarray) -> np.ndarray:
        lo = np.asarray(self.lo, dtype=np.float32)[:, None, None]
        span = np.asarray(self.hi, dtype=np.float32)[:, None, None] - lo
        values = data.astype(np.float32)
        # A constant band (HI == LO) renders mid-grey, not black, so its valid footprint stays visible.
        flat = np.where(values > lo, 1.0, np.where(values < lo, 0.0, 0.5))
        scaled = np.where(span > 0, (values - lo) / np.where(span > 0, span, 1.0), flat)
        return (np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def planes(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(bands, H, W) values + (H, W) validity -> (bands, H, W) uint8 planes, invalid pixels 0.

        Planar on purpose: the PNG writer filters each plane and interleaves them once, into its
        scanlines (png.write_png_planes).
        """
        lut = None if self.mode == "none" else self._lut(data.dtype)
        if lut is not None:
            unsigned = data.view(data.dtype.str.replace("i", "u"))
            out = np.empty(data.shape, dtype=np.uint8)
            for b in range(len(data)):
                # One gather per band (clip: keys are in range, so no bounds checks); take converts the
                # keys itself, faster than converting them to intp first (about 12% of the stretch).
                np.take(lut[b], unsigned[b], out=out[b], mode="clip")
        elif self.mode == "none":
            out = np.clip(data, 0, 255).astype(np.uint8) if data.dtype != np.uint8 else data.copy()
        else:
            out = self._scale(data)
        if not valid.all():  # most chips are wholly valid: skip a pass over every byte
            out *= valid  # invalid -> 0 (black); a multiply beats boolean-mask assignment
        return out

    def apply(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(bands, H, W) values + (H, W) validity -> (H, W, 3) uint8, invalid pixels black."""
        out = self.planes(data, valid)
        if out.shape[0] == 1:
            out = np.repeat(out, 3, axis=0)
        return np.ascontiguousarray(out.transpose(1, 2, 0))

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "lo": self.lo, "hi": self.hi}


def decimated_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) scaled so the long side is at most `max_side` (unchanged when already small)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def read_decimated(ds: Any, bands: list[int], max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Values and validity of the whole raster, read decimated to `max_side` on the long side.

    GDAL serves the read from the nearest overview when the raster has overviews; without them it
    decodes every block of the raster, however small `max_side` is.
    """
    h, w = decimated_shape(ds.height, ds.width, max_side)
    data = ds.read(bands, out_shape=(len(bands), h, w))
    return data, _read_valid(ds, bands, data, out_shape=(len(bands), h, w))


def sample_windows(width: int, height: int, block: tuple[int, int], seed: int = STATS_SEED) -> list[Window4]:
    """Windows (col_off, row_off, width, height) for the statistics: about STATS_SIDE**2 pixels in all,
    each inside one block, spread over the whole scene; [] when the scene has too few blocks for that.

    n = max(STATS_MIN_BLOCKS, blocks needed for the pixel budget) windows share the budget. The block
    grid is cut, in row-major order, into n runs of consecutive blocks and one block is drawn from each
    run with a seeded generator (the same blocks every time); the window is the block's share of the
    budget (whole rows of a strip, a square of a tile) at a seeded place inside the block. Reading part
    of a block decodes no more than that block, so the sample costs about n / blocks of a full read.
    """
    bh, bw = block
    rows, cols = -(-height // bh), -(-width // bw)
    budget = STATS_SIDE * STATS_SIDE
    n = max(STATS_MIN_BLOCKS, -(-budget // (bh * bw)))
    if rows * cols < 2 * n:
        return []
    share = budget // n
    win_h = min(bh, math.isqrt(share))
    win_w = min(bw, share // win_h)
    edges = np.linspace(0, rows * cols, n + 1).round().astype(int)
    rng = np.random.default_rng(seed)
    windows = []
    for start, stop in zip(edges[:-1], edges[1:]):
        row, col = divmod(int(rng.integers(start, stop)), cols)
        # Anywhere inside the block (clipped to the scene), not always its corner: no column or row
        # of the scene is out of reach of the sample.
        block_h, block_w = min(bh, height - row * bh), min(bw, width - col * bw)
        h, w = min(win_h, block_h), min(win_w, block_w)
        r0 = row * bh + int(rng.integers(0, block_h - h + 1))
        c0 = col * bw + int(rng.integers(0, block_w - w + 1))
        windows.append((c0, r0, w, h))
    return windows


def stats_sample(ds: Any, bands: list[int]) -> tuple[np.ndarray, np.ndarray, str]:
    """The pixels the scene's statistics come from, as (bands, n) values + (n,) validity + how read.

    - at most STATS_FULL_PIXELS pixels: the whole scene ("full"), exact and cheap;
    - larger, with overviews: a read decimated to STATS_SIDE ("overview"), served by GDAL from an overview;
    - larger, without overviews: the windows of sample_windows ("blocks"). Should those hold no valid
      pixel (a scene that is mostly nodata), or the scene have too few blocks to sample (a few huge
      blocks, which any read decodes whole anyway), a decimated read decides ("decimated").
    Never more than about STATS_SIDE**2 pixels are held, whatever the scene's size.
    """
    from rasterio.windows import Window

    def flat(data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return data.reshape(len(bands), -1), valid.reshape(-1)

    if ds.width * ds.height <= STATS_FULL_PIXELS:
        return (*flat(*read_decimated(ds, bands, max(ds.width, ds.height))), "full")
    if ds.overviews(bands[0]):
        return (*flat(*read_decimated(ds, bands, STATS_SIDE)), "overview")
    windows = sample_windows(ds.width, ds.height, ds.block_shapes[bands[0] - 1])
    parts, valids = [], []
    for window in windows:
        data = ds.read(bands, window=Window(*window))
        data, valid = flat(data, _read_valid(ds, bands, data, window=Window(*window)))
        parts.append(data)
        valids.append(valid)
    if windows and any(v.any() for v in valids):
        return np.concatenate(parts, axis=1), np.concatenate(valids), "blocks"
    return (*flat(*read_decimated(ds, bands, STATS_SIDE)), "decimated")


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """np.percentile(values, qs) (linear method, exactly), through a histogram for 8/16-bit integers.

    A histogram of 65536 bins is one pass over the values, where sorting-based percentiles partition
    them once per band; both give the same numbers.
    """
    if values.dtype.kind not in "ui" or values.dtype.itemsize > 2 or values.size == 0:
        return np.percentile(values.astype(np.float64), qs)
    offset = -int(np.iinfo(values.dtype).min)
    counts = np.bincount(values.astype(np.int64) + offset if offset else values)
    cum = np.cumsum(counts)
    pos = np.asarray(qs, dtype=np.float64) / 100.0 * (values.size - 1)
    lo_rank, hi_rank = np.floor(pos), np.ceil(pos)
    # The k-th smallest value (0-based) is the first bin whose running count exceeds k.
    lo_val = np.searchsorted(cum, lo_rank, side="right") - offset
    hi_val = np.searchsorted(cum, hi_rank, side="right") - offset
    return lo_val + (pos - lo_rank) * (hi_val - lo_val)


def scene_stretch(ds: Any, bands: list[int], options: RenderOptions) -> Stretch:
    """The scene's stretch, from its valid pixels (a sample of them when the scene is large; stats_sample).

    Raises:
        NoValidPixelsError: Every pixel of the selected bands is invalid.
    """
    dtype = np.dtype(ds.dtypes[bands[0] - 1])
    mode = options.stretch or ("none" if dtype == np.uint8 else "percentile")
    data, valid, _ = stats_sample(ds, bands)
    if not valid.any():
        raise NoValidPixelsError(f"{ds.name}: no valid pixel (every pixel is nodata or masked)")
    if mode == "none":
        return Stretch("none")
    values = data[:, valid]  # (bands, n_valid)
    if mode == "minmax":
        lo, hi = values.min(axis=1), values.max(axis=1)
    else:
        lo, hi = np.stack([percentiles(band, options.percentiles) for band in values], axis=1)
    stretch = Stretch(mode, [float(v) for v in lo], [float(v) for v in hi])
    stretch._lut(dtype)  # built once here: chip workers forked later share it instead of each building it
    return stretch


def read_window(
    ds: Any, bands: list[int], col_off: int, row_off: int, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read one window; the part past the raster's edge is zero-padded and marked invalid.

    Only the window is read (never the whole scene). Returns (bands, height, width) values and an
    (height, width) validity mask.
    """
    from rasterio.windows import Window

    c0, r0 = max(col_off, 0), max(row_off, 0)
    c1, r1 = min(col_off + width, ds.width), min(row_off + height, ds.height)
    if (c1 - c0, r1 - r0) == (width, height):  # wholly inside: no padding, no copy
        window = Window(c0, r0, width, height)
        data = ds.read(bands, window=window)
        return data, _read_valid(ds, bands, data, window=window)
    dtype = np.dtype(ds.dtypes[bands[0] - 1])
    data = np.zeros((len(bands), height, width), dtype=dtype)
    valid = np.zeros((height, width), dtype=bool)
    if c1 > c0 and r1 > r0:
        window = Window(c0, r0, c1 - c0, r1 - r0)
        ys, xs = slice(r0 - row_off, r1 - row_off), slice(c0 - col_off, c1 - col_off)
        inside = ds.read(bands, window=window)
        data[:, ys, xs] = inside
        valid[ys, xs] = _read_valid(ds, bands, inside, window=window)
    return data, valid


def crs_string(crs: Any) -> str | None:
    """'EPSG:32618' when the CRS has an EPSG code, else its WKT; None for a raster without CRS."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


def render_whole(
    path: str | Path, options: RenderOptions, max_size: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """A whole raster as one RGB image (decimated when its long side exceeds `max_size`).

    Returns:
        The (H, W, 3) uint8 image and facts for the sample's meta (source size, crs, transform, stretch).
    """
    with open_raster(path) as ds:
        bands = choose_bands(ds, options.bands)
        stretch = scene_stretch(ds, bands, options)
        data, valid = read_decimated(ds, bands, max_size)
        rgb = stretch.apply(data, valid)
        # The transform of the rendered image: the raster's, scaled by the decimation.
        from rasterio.transform import Affine

        transform = ds.transform @ Affine.scale(ds.width / rgb.shape[1], ds.height / rgb.shape[0])
        info = {
            "source_size": [ds.width, ds.height],
            "crs": crs_string(ds.crs),
            "transform": [float(v) for v in list(transform)[:6]],
            "bands": bands,
        }
    return rgb, info

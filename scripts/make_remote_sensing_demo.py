"""Write the remote-sensing demo: a small 4-band uint16 GeoTIFF with nodata and a GeoJSON of labelled features.

The scene (blue, green, red, nir; UTM 33N, 10 m pixels; nodata 0 in a cut-off corner, as at a swath edge)
holds buildings, a pond and trees. The labels are written in WGS84 longitude/latitude, so converting the
demo exercises the reprojection to the raster's CRS. One feature lies outside the scene on purpose: the
report shows it skipped with its reason. Seeded: the output is the same on every run.

Usage: python scripts/make_remote_sensing_demo.py [--out domains/remote_sensing/demo]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_geom

SIZE = 384
CRS = "EPSG:32633"
TRANSFORM = from_origin(500000, 5600000, 10, 10)
# Reflectance-like uint16 values per class: blue, green, red, nir.
COLOURS = {
    "ground": (900, 1100, 1300, 2200),
    "building": (2600, 2500, 2400, 2800),
    "pond": (700, 600, 300, 150),
    "tree": (400, 800, 500, 3800),
}


def _pixel_polygon(x1: float, y1: float, x2: float, y2: float) -> dict:
    ring = [TRANSFORM @ (x, y) for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1))]
    return {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}


def make_demo(out: Path, seed: int = 0) -> list[Path]:
    """Write scene.tif and scene.geojson into `out`; returns the written paths."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    data = np.empty((4, SIZE, SIZE), dtype=np.uint16)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    # A gentle gradient plus coarse noise: realistic enough, and it compresses well.
    shade = (xx + yy) / (2 * SIZE) * 300
    noise = rng.integers(-3, 4, size=(SIZE // 4, SIZE // 4)).repeat(4, 0).repeat(4, 1) * 20
    for b in range(4):
        data[b] = np.clip(COLOURS["ground"][b] + shade + noise, 1, 65535)
    features = []

    def paint(label: str, mask: np.ndarray, geometry: dict) -> None:
        for b in range(4):
            data[b][mask] = COLOURS[label][b] + rng.integers(-40, 41)
        features.append({"type": "Feature", "properties": {"label": label}, "geometry": geometry})

    buildings = 0
    while buildings < 9:
        w, h = rng.integers(14, 36, size=2)
        x, y = rng.integers(4, SIZE - 40, size=2)
        box = (x, y, x + w, y + h)
        paint("building", (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h), _pixel_polygon(*box))
        buildings += 1
    cx, cy, r = 270, 90, 28
    paint("pond", (xx - cx) ** 2 + (yy - cy) ** 2 < r * r, _pixel_polygon(cx - r, cy - r, cx + r, cy + r))
    for _ in range(12):
        tx, ty = rng.integers(10, SIZE - 10, size=2)
        point = {"type": "Point", "coordinates": list(TRANSFORM @ (tx + 0.5, ty + 0.5))}
        paint("tree", (xx - tx) ** 2 + (yy - ty) ** 2 < 25, point)
    # Outside the scene, 2 km east: the converter reports it skipped.
    features.append(
        {
            "type": "Feature",
            "properties": {"label": "building"},
            "geometry": _pixel_polygon(SIZE + 200, 10, SIZE + 220, 30),
        }
    )
    # A swath edge: the top-right corner has no data.
    data[:, (SIZE - xx) + yy < SIZE // 3] = 0
    tif = out / "scene.tif"
    profile = {
        "driver": "GTiff",
        "height": SIZE,
        "width": SIZE,
        "count": 4,
        "dtype": "uint16",
        "crs": CRS,
        "transform": TRANSFORM,
        "nodata": 0,
        "compress": "deflate",
        "predictor": 2,
        "tiled": True,
        "blockxsize": 128,
        "blockysize": 128,
    }
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = ("blue", "green", "red", "nir")
    # Labels in WGS84 lon/lat (RFC 7946's CRS), 7 decimals (about 1 cm).
    for feat in features:
        geom = transform_geom(CRS, "EPSG:4326", feat["geometry"], precision=7)
        feat["geometry"] = {"type": geom["type"], "coordinates": geom["coordinates"]}
    geojson = out / "scene.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1) + "\n")
    return [tif, geojson]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "domains/remote_sensing/demo"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in make_demo(args.out, args.seed):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()

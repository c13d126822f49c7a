"""Georeferenced labels: GeoJSON features (any CRS) -> boxes in a raster's pixels, and boxes back to the map.

Features are reprojected to the raster's CRS with rasterio.warp.transform_geom, then every vertex goes
through the inverse of the raster's affine transform, so rotated transforms work too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import require_rasterio

# RFC 7946: a GeoJSON without a "crs" member is in WGS84 longitude/latitude.
DEFAULT_LABEL_CRS = "OGC:CRS84"


class LabelFileError(ValueError):
    """A label file that cannot be used at all (bad JSON, unknown CRS); the message names the file."""


@dataclass
class Feature:
    """One labelled feature, its geometry in the label file's CRS."""

    index: int
    label: str
    geometry: dict[str, Any]
    source: str


@dataclass
class LabelFile:
    """A parsed GeoJSON: its CRS (None means 'same coordinates as the raster'), features and bad features."""

    path: Path
    crs: Any
    features: list[Feature]
    rejected: list[tuple[int, str]]


def _parse_crs(path: Path, member: Any) -> Any:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    name = member.get("properties", {}).get("name") if isinstance(member, dict) else member
    if not isinstance(name, str):
        raise LabelFileError(f"{path}: cannot read the 'crs' member {member!r}")
    # GDAL/PROJ spell the OGC URN of WGS84 lon/lat as OGC:CRS84.
    if name.lower().replace("::", ":").endswith("crs84"):
        name = DEFAULT_LABEL_CRS
    try:
        return CRS.from_user_input(name)
    except CRSError as e:
        raise LabelFileError(f"{path}: unknown CRS '{name}' ({e})") from None


def read_label_file(path: str | Path, label_field: str = "label") -> LabelFile:
    """Read a GeoJSON FeatureCollection of labelled features.

    Args:
        path: The GeoJSON file.
        label_field: The property holding each feature's class.

    Returns:
        The parsed file; its `crs` is None when the file has no "crs" member (then WGS84 lon/lat per
        RFC 7946 for a georeferenced raster, the raster's own coordinates for one without CRS).

    Raises:
        LabelFileError: The file is not JSON, not a FeatureCollection, or names an unknown CRS.
    """
    require_rasterio()
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LabelFileError(f"{path}: cannot read GeoJSON ({e})") from None
    except RecursionError:
        raise LabelFileError(f"{path}: cannot read GeoJSON (nested too deeply)") from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise LabelFileError(f"{path}: expected a GeoJSON FeatureCollection")
    if not isinstance(doc.get("features") or [], list):
        raise LabelFileError(f"{path}: 'features' must be a list of Feature objects")
    crs = _parse_crs(path, doc["crs"]) if "crs" in doc else None
    features, rejected = [], []
    for i, feat in enumerate(doc.get("features") or []):
        if not isinstance(feat, dict) or not isinstance(feat.get("properties") or {}, dict):
            rejected.append((i, "not a Feature object with a properties object"))
            continue
        label = _class_name((feat.get("properties") or {}).get(label_field))
        if label is None:
            rejected.append((i, f"no '{label_field}' property of text or a whole number"))
            continue
        geometry = feat.get("geometry")
        if geometry is None and isinstance(feat.get("bbox"), list) and len(feat["bbox"]) == 4:
            x1, y1, x2, y2 = feat["bbox"]
            geometry = {
                "type": "Polygon",
                "coordinates": [[[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]],
            }
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon", "Point"):
            kind = geometry.get("type") if isinstance(geometry, dict) else "no geometry"
            rejected.append((i, f"unsupported geometry ({kind}); use Polygon, MultiPolygon, Point or a bbox"))
            continue
        features.append(Feature(i, label, geometry, f"{path}#features[{i}]"))
    return LabelFile(path, crs, features, rejected)


def _class_name(value: Any) -> str | None:
    """A class property as a name: text, or a whole number (GIS exports store class ids as 3 or 3.0)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip() or None


def _vertices(geometry: dict[str, Any]) -> list[tuple[float, float]]:
    """The geometry's vertices as numbers; ValueError for coordinates of the wrong shape."""
    kind, coords = geometry["type"], geometry.get("coordinates", [])
    try:
        if kind == "Point":
            return [(float(coords[0]), float(coords[1]))]
        rings = coords if kind == "Polygon" else [ring for poly in coords for ring in poly]
        return [(float(p[0]), float(p[1])) for ring in rings for p in ring]
    except (TypeError, IndexError, KeyError, ValueError):
        raise ValueError(f"malformed {kind} coordinates") from None


def feature_pixel_box(
    feature: Feature, label_crs: Any, raster_crs: Any, transform: Any, point_size: float
) -> list[float]:
    """The feature's box [x1, y1, x2, y2] in the raster's pixel coordinates (continuous, may exceed it).

    Raises:
        ValueError: The geometry cannot be reprojected (outside the projection's domain, empty).
    """
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    geometry = feature.geometry
    _vertices(geometry)  # coordinates of the wrong shape: say so, before PROJ fails on them less clearly
    if label_crs is None and raster_crs is not None:
        label_crs = CRS.from_user_input(DEFAULT_LABEL_CRS)
    if label_crs is not None and raster_crs is None:
        raise ValueError("the raster has no CRS, so labels in a CRS cannot be placed on it")
    if label_crs is not None and label_crs != raster_crs:
        geometry = transform_geom(label_crs, raster_crs, geometry)
    vertices = _vertices(geometry)
    if not vertices:
        raise ValueError("empty geometry")
    inverse = ~transform
    cols, rows = zip(*(inverse @ (x, y) for x, y in vertices))
    if not all(math.isfinite(v) for v in cols + rows):
        raise ValueError("the geometry does not reproject into the raster's CRS")
    x1, y1, x2, y2 = min(cols), min(rows), max(cols), max(rows)
    if geometry["type"] == "Point":
        half = point_size / 2
        x1, y1, x2, y2 = x1 - half, y1 - half, x2 + half, y2 + half
    return [x1, y1, x2, y2]


def overlap_fraction(box: Sequence[float], window: Sequence[float]) -> float:
    """The share of `box`'s area inside `window` (both [x1, y1, x2, y2]); a degenerate box counts its centre."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    if area <= 0:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        return 1.0 if window[0] <= cx <= window[2] and window[1] <= cy <= window[3] else 0.0
    iw = max(0.0, min(box[2], window[2]) - max(box[0], window[0]))
    ih = max(0.0, min(box[3], window[3]) - max(box[1], window[1]))
    return iw * ih / area


def box_in_chip(
    box: Sequence[float], col_off: int, row_off: int, width: int, height: int
) -> list[float] | None:
    """`box` (scene pixels) in the chip's pixels, clipped to it, when at least half of it lies inside; else None."""
    window = [col_off, row_off, col_off + width, row_off + height]
    if overlap_fraction(box, window) < 0.5:
        return None
    return [
        min(max(box[0], window[0]), window[2]) - col_off,
        min(max(box[1], window[1]), window[3]) - row_off,
        min(max(box[2], window[0]), window[2]) - col_off,
        min(max(box[3], window[1]), window[3]) - row_off,
    ]


def box_to_map_polygon(box: Sequence[float], transform: Sequence[float]) -> list[list[float]]:
    """A pixel box of a chip -> its closed ring of map coordinates through the chip's affine [a, b, c, d, e, f]."""
    a, b, c, d, e, f = transform
    x1, y1, x2, y2 = box
    ring = [(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)]
    return [[a * x + b * y + c, d * x + e * y + f] for x, y in ring]

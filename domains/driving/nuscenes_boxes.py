"""2D boxes from nuScenes 3D annotations (nuscenes-devkit): projected into each camera, clipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mini_internvl_adapt.errors import MissingDependencyError

from .tags import CAMERAS

MIN_BOX_SIDE = 8.0  # pixels; smaller projections are too far away to ground


def _phrase(category: str) -> str:
    """nuScenes category -> a short noun phrase ("vehicle.car" -> "car", "human.pedestrian.adult" -> "adult pedestrian")."""
    parts = category.split(".")
    if parts[0] == "human" and len(parts) > 2:
        return f"{parts[2].replace('_', ' ')} pedestrian"
    return parts[-1].replace("_", " ")


class NuScenesProjector:
    """Projects a sample's annotated 3D boxes into its six cameras with the real NuScenes class.

    Args:
        dataroot: The nuScenes dataroot (holding ``<version>/*.json`` tables).
        version: "v1.0-mini" or "v1.0-trainval".

    Raises:
        MissingDependencyError: nuscenes-devkit is not installed.
        FileNotFoundError: The tables of `version` are not under `dataroot`.
    """

    def __init__(self, dataroot: Path, version: str) -> None:
        from PIL import Image

        # nuscenes-devkit raises Pillow's process-wide decompression-bomb limit to 1.6e11 pixels when its map
        # module is imported: keep ours, so an image bomb in any dataset is still refused afterwards.
        limit = Image.MAX_IMAGE_PIXELS
        try:
            from nuscenes.nuscenes import NuScenes
        except ImportError:
            raise MissingDependencyError("driving", "nuscenes-devkit", "driving") from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit
        if not (Path(dataroot) / version).is_dir():
            raise FileNotFoundError(
                f"{dataroot}: no nuScenes tables for version '{version}' ({Path(dataroot) / version})"
            )
        self.nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)

    def boxes(self, sample_token: str) -> list[dict[str, Any]]:
        """Every annotation visible in a camera: {camera, box [x1, y1, x2, y2] in pixels, category, phrase}.

        Returns an empty list when the sample is not in this nuScenes version.
        """
        from nuscenes.utils.geometry_utils import BoxVisibility, view_points

        try:
            sample = self.nusc.get("sample", sample_token)
        except KeyError:
            return []
        out = []
        for camera in CAMERAS:
            if camera not in sample["data"]:
                continue
            sd = self.nusc.get("sample_data", sample["data"][camera])
            width, height = sd["width"], sd["height"]
            _, boxes, intrinsic = self.nusc.get_sample_data(sd["token"], box_vis_level=BoxVisibility.ANY)
            for box in boxes:
                corners = view_points(box.corners(), intrinsic, normalize=True)
                x1, x2 = max(0.0, float(corners[0].min())), min(float(width), float(corners[0].max()))
                y1, y2 = max(0.0, float(corners[1].min())), min(float(height), float(corners[1].max()))
                if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
                    continue
                out.append(
                    {
                        "camera": camera,
                        "box": [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)],
                        "category": box.name,
                        "phrase": _phrase(box.name),
                        "annotation": box.token,
                    }
                )
        return out

    def complete(self, sample_token: str, objects: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
        """Fill key objects lacking 2d_bbox and list the annotations DriveLM does not name.

        A key object is the projected box in its tag's camera that contains its tag centre (the nearest
        box centre when several do). Every other projected box becomes an extra object.

        Args:
            sample_token: The DriveLM frame token (a nuScenes sample token).
            objects: Key objects as built by the converter ({camera, centre, box or None, ...}); boxes
                are filled in place.

        Returns:
            (number of key objects whose box was filled, extra objects).
        """
        projected = self.boxes(sample_token)
        used: set[int] = set()
        filled = 0
        for obj in objects:
            cx, cy = obj["centre"]
            best, best_d = None, float("inf")
            for i, p in enumerate(projected):
                x1, y1, x2, y2 = p["box"]
                if p["camera"] != obj["camera"] or not (x1 <= cx <= x2 and y1 <= cy <= y2):
                    continue
                d = abs((x1 + x2) / 2 - cx) + abs((y1 + y2) / 2 - cy)
                if d < best_d:
                    best, best_d = i, d
            if best is None:
                continue
            used.add(best)
            if obj["box"] is None:
                obj["box"] = list(projected[best]["box"])
                obj["source"] = "nuscenes"
                filled += 1
        extra = [
            {
                "tag": None,
                "camera": p["camera"],
                "centre": None,
                "phrase": p["phrase"],
                "box": p["box"],
                "source": "nuscenes",
            }
            for i, p in enumerate(projected)
            if i not in used
        ]
        return filled, extra

"""Write a tiny nuScenes-format dataroot that the real ``nuscenes.nuscenes.NuScenes`` class loads.

All 13 tables under ``<dataroot>/<version>/``, a map record with its (small) mask PNG, one scene whose
samples use the tokens you pass (DriveLM frame tokens are nuScenes sample tokens), six cameras with
real-looking intrinsics (1600x900) and extrinsics, small camera JPEGs, and a few annotations at known
ego-frame positions. The ego pose is the identity, so global coordinates are ego coordinates.

    python tests/data/make_tiny_nuscenes.py OUT_DIR [--version v1.0-mini]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image
from pyquaternion import Quaternion

CAMERAS = {  # yaw of each camera's optical axis about the ego z axis, degrees
    "CAM_FRONT": 0.0,
    "CAM_FRONT_LEFT": 55.0,
    "CAM_FRONT_RIGHT": -55.0,
    "CAM_BACK": 180.0,
    "CAM_BACK_LEFT": 110.0,
    "CAM_BACK_RIGHT": -110.0,
}
INTRINSIC = [[1266.0, 0.0, 800.0], [0.0, 1266.0, 450.0], [0.0, 0.0, 1.0]]
CAMERA_TRANSLATION = [1.5, 0.0, 1.5]
# (category, ego-frame centre x, y, z, size w, l, h, yaw in degrees)
DEFAULT_OBJECTS = (
    ("vehicle.car", 12.0, 0.5, 0.8, 1.9, 4.5, 1.6, 0.0),
    ("human.pedestrian.adult", 8.0, -3.0, 0.9, 0.6, 0.7, 1.8, 90.0),
    ("vehicle.truck", -15.0, 1.0, 1.5, 2.5, 8.0, 3.0, 0.0),
)
CATEGORIES = ("vehicle.car", "vehicle.truck", "human.pedestrian.adult", "movable_object.barrier")


def _tok(*parts: object) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def camera_rotation(camera: str) -> Quaternion:
    """Camera -> ego rotation: camera z (forward) along the yawed ego x, camera x right, y down."""
    base = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    yaw = math.radians(CAMERAS[camera])
    rz = np.array(
        [[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0.0, 0.0, 1.0]]
    )
    return Quaternion(matrix=rz @ base)


def make_tiny_nuscenes(
    dataroot: Path,
    sample_tokens: list[str] | None = None,
    version: str = "v1.0-mini",
    objects: tuple = DEFAULT_OBJECTS,
) -> dict:
    """Write the dataroot; returns {"version", "samples": [tokens], "objects": objects}.

    Args:
        dataroot: Folder to write (created).
        sample_tokens: Sample tokens to use (default: two generated ones).
        version: Table folder name.
        objects: Annotations placed in every sample, (category, x, y, z, w, l, h, yaw_deg) in ego metres.
    """
    dataroot = Path(dataroot)
    tokens = list(sample_tokens or [_tok("sample", i) for i in range(2)])
    log_token, scene_token, map_token = _tok("log"), _tok("scene"), _tok("map")
    tables: dict[str, list[dict]] = {name: [] for name in (
        "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
        "sample_annotation", "sample_data", "scene", "sensor", "visibility")}  # fmt: skip
    tables["attribute"] = [{"token": _tok("attr"), "name": "vehicle.moving", "description": "moving"}]
    tables["visibility"] = [{"token": "4", "level": "v80-100", "description": "visibility of whole object"}]
    tables["category"] = [{"token": _tok("cat", c), "name": c, "description": c} for c in CATEGORIES]
    tables["log"] = [{"token": log_token, "logfile": "n008-2018-09-18-13-10-39-0400", "vehicle": "n008",
                      "date_captured": "2018-09-18", "location": "boston-seaport"}]  # fmt: skip
    (dataroot / "maps").mkdir(parents=True, exist_ok=True)
    map_file = f"maps/{map_token}.png"
    Image.new("L", (64, 64), 255).save(dataroot / map_file)
    tables["map"] = [
        {"token": map_token, "log_tokens": [log_token], "category": "semantic_prior", "filename": map_file}
    ]
    for camera in CAMERAS:
        sensor = _tok("sensor", camera)
        tables["sensor"].append({"token": sensor, "channel": camera, "modality": "camera"})
        tables["calibrated_sensor"].append({
            "token": _tok("calib", camera), "sensor_token": sensor, "translation": CAMERA_TRANSLATION,
            "rotation": list(camera_rotation(camera).elements), "camera_intrinsic": INTRINSIC})  # fmt: skip
    instances = [_tok("instance", i) for i in range(len(objects))]
    for i, obj in enumerate(objects):
        tables["instance"].append({"token": instances[i], "category_token": _tok("cat", obj[0]),
                                   "nbr_annotations": len(tokens), "first_annotation_token": _tok("ann", tokens[0], i),
                                   "last_annotation_token": _tok("ann", tokens[-1], i)})  # fmt: skip
    timestamp = 1537291010612404
    for n, sample in enumerate(tokens):
        prev, nxt = (tokens[n - 1] if n else ""), (tokens[n + 1] if n + 1 < len(tokens) else "")
        stamp = timestamp + 500000 * n
        tables["sample"].append({"token": sample, "timestamp": stamp, "prev": prev, "next": nxt,
                                 "scene_token": scene_token})  # fmt: skip
        pose = _tok("pose", sample)
        tables["ego_pose"].append({"token": pose, "timestamp": stamp, "rotation": [1.0, 0.0, 0.0, 0.0],
                                   "translation": [0.0, 0.0, 0.0]})  # fmt: skip
        for camera in CAMERAS:
            name = f"samples/{camera}/n008-2018-09-18-13-10-39-0400__{camera}__{stamp}.jpg"
            (dataroot / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (160, 90), (100, 120, 160)).save(dataroot / name, "JPEG", quality=50)
            tables["sample_data"].append({
                "token": _tok("sd", sample, camera), "sample_token": sample, "ego_pose_token": pose,
                "calibrated_sensor_token": _tok("calib", camera), "timestamp": stamp, "fileformat": "jpg",
                "is_key_frame": True, "height": 900, "width": 1600, "filename": name, "prev": "", "next": ""})  # fmt: skip
        for i, (_, x, y, z, w, length, h, yaw) in enumerate(objects):
            tables["sample_annotation"].append({
                "token": _tok("ann", sample, i), "sample_token": sample, "instance_token": instances[i],
                "visibility_token": "4", "attribute_tokens": [], "translation": [x, y, z], "size": [w, length, h],
                "rotation": list(Quaternion(axis=[0, 0, 1], degrees=yaw).elements), "prev": "", "next": "",
                "num_lidar_pts": 10, "num_radar_pts": 0})  # fmt: skip
    tables["scene"] = [{"token": scene_token, "log_token": log_token, "nbr_samples": len(tokens),
                        "first_sample_token": tokens[0], "last_sample_token": tokens[-1], "name": "scene-0001",
                        "description": "tiny test scene"}]  # fmt: skip
    table_dir = dataroot / version
    table_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        (table_dir / f"{name}.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return {"version": version, "samples": tokens, "objects": objects}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--samples", nargs="*", help="sample tokens (default: two generated)")
    args = parser.parse_args()
    info = make_tiny_nuscenes(args.out, args.samples, args.version)
    print(f"tiny nuScenes {info['version']} with {len(info['samples'])} samples written to {args.out}")


if __name__ == "__main__":
    main()

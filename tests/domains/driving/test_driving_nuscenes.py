"""nuScenes boxes: a tiny dataroot written by tests/data/make_tiny_nuscenes.py, loaded by the real NuScenes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from mini_internvl_adapt.domains.driving import DrivingDomain
from PIL import Image

from mini_internvl_adapt.data_format.samples import read_samples

pytest.importorskip("nuscenes")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "data"))
from make_tiny_nuscenes import (  # noqa: E402
    CAMERA_TRANSLATION,
    INTRINSIC,
    camera_rotation,
    make_tiny_nuscenes,
)


def _expected_box(x: float, y: float, z: float, w: float, length: float, h: float) -> list[float]:
    """Project an axis-aligned (yaw 0) box into CAM_FRONT by hand: 8 corners, pinhole, min/max, clipped."""
    corners = np.array(
        [
            [x + sx * length / 2, y + sy * w / 2, z + sz * h / 2]
            for sx in (-1, 1)
            for sy in (-1, 1)
            for sz in (-1, 1)
        ]
    )
    rot = camera_rotation("CAM_FRONT").rotation_matrix
    cam = (corners - np.array(CAMERA_TRANSLATION)) @ rot  # ego -> camera: R^T (p - t)
    pix = cam @ np.array(INTRINSIC).T
    u, v = pix[:, 0] / pix[:, 2], pix[:, 1] / pix[:, 2]
    return [max(0, u.min()), max(0, v.min()), min(1600, u.max()), min(900, v.max())]


def _drivelm_frame(tmp_path: Path, token: str, tag: str) -> Path:
    """A one-frame DriveLM JSON whose key object has no 2d_bbox, with six small camera images."""
    cams = ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
    paths = {}
    for cam in cams:
        p = tmp_path / "nuscenes" / "samples" / cam / f"x__{cam}__1.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (1600, 900), (90, 90, 90)).save(p, "JPEG", quality=30)
        paths[cam] = f"../nuscenes/samples/{cam}/{p.name}"
    data = {
        "scene0": {
            "key_frames": {
                token: {
                    "key_object_infos": {
                        tag: {"Category": "Vehicle", "Status": "Moving", "Visual_description": "Red car."}
                    },
                    "QA": {"perception": [{"Q": f"What is {tag}?", "A": "A red car."}]},
                    "image_paths": paths,
                }
            }
        }
    }
    qa = tmp_path / "QA" / "f.json"
    qa.parent.mkdir(parents=True)
    qa.write_text(json.dumps(data))
    return qa


def test_tiny_dataroot_loads_with_real_nuscenes(tmp_path: Path) -> None:
    from nuscenes.nuscenes import NuScenes

    info = make_tiny_nuscenes(tmp_path / "nus", ["tok0", "tok1"])
    nusc = NuScenes(version="v1.0-mini", dataroot=str(tmp_path / "nus"), verbose=False)
    assert len(nusc.sample) == 2 and len(nusc.sample_annotation) == 2 * len(info["objects"])
    assert set(nusc.get("sample", "tok0")["data"]) >= {"CAM_FRONT", "CAM_BACK"}
    assert len(list((tmp_path / "nus" / "v1.0-mini").glob("*.json"))) == 13


def test_projected_boxes_fill_key_objects_and_add_extra_grounding(tmp_path: Path) -> None:
    info = make_tiny_nuscenes(tmp_path / "nus", ["frame0"])
    car = info["objects"][0]  # vehicle.car 12 m ahead
    expected = _expected_box(car[1], car[2], car[3], car[4], car[5], car[6])
    cx, cy = (expected[0] + expected[2]) / 2, (expected[1] + expected[3]) / 2
    qa = _drivelm_frame(tmp_path / "dl", "frame0", f"<c1,CAM_FRONT,{cx:.1f},{cy:.1f}>")
    report = DrivingDomain().convert(
        qa,
        tmp_path / "out",
        tasks="grounding",
        layout="views",
        nuscenes_root=tmp_path / "nus",
        nuscenes_version="v1.0-mini",
        workers=1,
    )
    assert report.details["nuscenes"]["boxes_filled"] == 1
    samples = read_samples(tmp_path / "out" / "train.jsonl")
    red = next(s for s in samples if s.meta.get("object"))
    assert red.meta["source"] == "nuscenes" and red.meta["camera"] == "CAM_FRONT"
    assert red.meta["camera_box"] == pytest.approx(expected, abs=0.1)
    extra = [s for s in samples if not s.meta.get("object")]
    phrases = {(s.meta["camera"], s.question.split("<ref>")[1].split("</ref>")[0]) for s in extra}
    # The pedestrian (front, also clipped into front-right) and the truck behind; not the car again.
    assert ("CAM_FRONT", "adult pedestrian") in phrases and ("CAM_BACK", "truck") in phrases
    assert not any(p == "car" for _, p in phrases)
    assert report.details["nuscenes"]["extra_objects"] == len(extra)
    assert len(extra) == 3  # pedestrian in two cameras + truck


def test_missing_version_is_a_clear_error(tmp_path: Path) -> None:
    make_tiny_nuscenes(tmp_path / "nus", ["frame0"])
    qa = _drivelm_frame(tmp_path / "dl", "frame0", "<c1,CAM_FRONT,800.0,500.0>")
    with pytest.raises(FileNotFoundError, match="no nuScenes tables for version 'v1.0-trainval'"):
        DrivingDomain().convert(qa, tmp_path / "o", tasks="grounding", nuscenes_root=tmp_path / "nus")

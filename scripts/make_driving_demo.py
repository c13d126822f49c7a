"""Write the driving domain's demo: a tiny synthetic DriveLM-nuScenes sample (seeded, < 1 MB).

Layout as in a DriveLM checkout: ``domains/driving/demo/QA/train_sample.json`` (v1.1 train format) whose
image_paths point to ``../nuscenes/samples/CAM_*/<nuScenes-style file name>.jpg`` (1600x900 JPEGs).
Objects are drawn as coloured boxes at their 2d_bbox so grounding samples are meaningful.

    python scripts/make_driving_demo.py [--out domains/driving/demo]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

CAMERAS = ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
OBJECTS = [
    ("Vehicle", "Moving", "Brown SUV", (150, 100, 60)),
    ("Vehicle", "Moving", "Black sedan", (30, 30, 30)),
    ("Vehicle", "Stopped", "White truck", (240, 240, 240)),
    ("Pedestrian", "Moving", "Adult pedestrian", (200, 50, 50)),
    ("Traffic element", None, "Green light", (40, 200, 60)),
]
MOVING = ("Going ahead.", "Turn right.", "Turn left.", "Stopped.")
BEHAVIOR = (
    "The ego vehicle is going straight. The ego vehicle is driving slowly.",
    "The ego vehicle is going straight. The ego vehicle is driving with normal speed.",
    "The ego vehicle is slightly steering to the left. The ego vehicle is driving fast.",
)
WHERE = {"CAM_FRONT": "front", "CAM_FRONT_LEFT": "front left", "CAM_FRONT_RIGHT": "front right",
         "CAM_BACK": "back", "CAM_BACK_LEFT": "back left", "CAM_BACK_RIGHT": "back right"}  # fmt: skip


def _token(rng: random.Random) -> str:
    return hashlib.md5(str(rng.random()).encode()).hexdigest()


def _frame(rng: random.Random, images: Path, log: str, stamp: int) -> dict:
    n = rng.randint(2, 3)
    chosen = rng.sample(OBJECTS, n)
    infos, drawn = {}, {c: [] for c in CAMERAS}
    for k, (category, status, desc, colour) in enumerate(chosen, start=1):
        camera = rng.choice(("CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT"))
        w, h = rng.randint(120, 320), rng.randint(90, 220)
        x1, y1 = rng.uniform(50, 1500 - w), rng.uniform(300, 850 - h)
        box = [round(x1, 1), round(y1, 1), round(x1 + w, 1), round(y1 + h, 1)]
        tag = f"<c{k},{camera},{(box[0] + box[2]) / 2:.1f},{(box[1] + box[3]) / 2:.1f}>"
        infos[tag] = {
            "Category": category,
            "Status": status,
            "Visual_description": f"{desc}.",
            "2d_bbox": box,
        }
        drawn[camera].append((box, colour))
    paths = {}
    for i, camera in enumerate(CAMERAS):
        name = f"{log}__{camera}__{stamp + 7000 * i}.jpg"
        img = Image.new("RGB", (1600, 900), (110, 140, 190))
        draw = ImageDraw.Draw(img)
        draw.rectangle([0, 500, 1600, 900], fill=(90, 90, 95))  # road
        draw.rectangle([760, 520, 840, 900], fill=(220, 220, 120))  # lane marking
        for box, colour in drawn[camera]:
            draw.rectangle(box, fill=colour, outline=(255, 255, 0), width=4)
        (images / camera).mkdir(parents=True, exist_ok=True)
        img.save(images / camera / name, "JPEG", quality=60)
        paths[camera] = f"../nuscenes/samples/{camera}/{name}"
    tags = list(infos)
    descs = [infos[t]["Visual_description"].rstrip(".") for t in tags]
    where = [WHERE[t.split(",")[1]] for t in tags]
    listing = ", ".join(f"a {d.lower()} to the {w} of the ego vehicle" for d, w in zip(descs, where))
    ids = ", ".join(tags[:-1]) + f", and {tags[-1]}" if len(tags) > 1 else tags[0]
    order = ["Firstly", "Secondly", "Thirdly"]
    notice = " ".join(
        f"{order[i]} notice that {t}. The object is {rng.choice(['going ahead', 'stationary', 'turning left'])}, "
        f"so the ego vehicle should keep going ahead at the same speed."
        for i, t in enumerate(tags)
    )
    qa = {
        "perception": [
            {"Q": "What are the important objects in the current scene? Those objects will be considered for the "
                  "future reasoning and driving decision.",
             "A": f"There is {listing}. The IDs of these objects are {ids}."},
            {"Q": f"What is the moving status of object {tags[0]}?", "A": rng.choice(MOVING)},
            {"Q": f"What is the visual description of {tags[1]}?", "A": infos[tags[1]]["Visual_description"]},
        ],
        "prediction": [
            {"Q": f"Is {tags[0]} a traffic sign or a road barrier?", "A": "No."},
            {"Q": "What object should the ego vehicle notice first when the ego vehicle is getting to the next "
                  "possible location? What is the state of the object that is first noticed by the ego vehicle "
                  "and what action should the ego vehicle take?", "A": notice},
            {"Q": f"Would {tags[1]} be in the moving direction of the ego vehicle?", "A": rng.choice(["Yes.", "No."])},
        ],
        "planning": [
            {"Q": f"What actions could the ego vehicle take based on {tags[0]}? Why take this action and what's "
                  "the probability?",
             "A": "The action is to keep going at the same speed. The reason is to follow the traffic rules, "
                  "which has a high probability."},
            {"Q": f"What actions taken by the ego vehicle can lead to a collision with {tags[1]}?",
             "A": "Accelerating and turning suddenly could lead to a collision."},
            {"Q": "In this scenario, what are safe actions to take for the ego vehicle?",
             "A": "Keep going at the same speed, decelerate gradually without braking."},
        ],
        "behavior": [{"Q": "Predict the behavior of the ego vehicle.", "A": rng.choice(BEHAVIOR)}],
    }  # fmt: skip
    for items in qa.values():
        for item in items:
            item.update({"C": None, "con_up": None, "con_down": None, "cluster": None, "layer": None})
    return {"key_object_infos": infos, "QA": qa, "image_paths": paths}


def make_demo(out: Path, seed: int = 0, scenes: int = 2, frames_per_scene: int = 2) -> Path:
    """Write the demo under `out`; returns the QA JSON path."""
    rng = random.Random(seed)
    images = out / "nuscenes" / "samples"
    data = {}
    for s in range(scenes):
        log = f"n008-2018-09-18-13-{10 + s:02d}-39-0400"
        key_frames = {}
        for f in range(frames_per_scene):
            key_frames[_token(rng)] = _frame(rng, images, log, 1537291002262404 + 500000 * f)
        data[_token(rng)] = {
            "scene_description": "The ego vehicle drives along an urban road with light traffic.",
            "key_frames": key_frames,
        }
    qa = out / "QA" / "train_sample.json"
    qa.parent.mkdir(parents=True, exist_ok=True)
    qa.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return qa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "domains/driving/demo"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = make_demo(args.out, args.seed)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"demo written to {path} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

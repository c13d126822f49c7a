"""Write the driving domain's BDD-X demo: three short generated dashcam clips in the BDD-X layout (seeded, < 1 MB).

Layout as in a BDD-X + BDD100K checkout, under ``domains/driving/demo/bddx/``:

- ``BDD-X-Annotations_v1.csv``: the real column layout (``Input.Video`` + 15 x start, end, action,
  justification), one row per clip, whole-second segments;
- ``videos/<id>.mov``: 6 s, 320x180, 15 fps H.264 (BDD100K videos are 1280x720, 30 fps, 40 s); every frame
  carries its frame number as 8 black/white squares in the top-left corner (bit 7 first), so tests can read
  which frame a converted JPEG is;
- ``info/<id>.json``: the BDD100K info layout (``startTime``, ``locations`` once a second with ``timestamp``,
  ``speed`` m/s and ``course`` degrees; one invalid fix with -1 values in the third clip);
- ``train.txt`` / ``test.txt``: official-style split lists (``<row>_<id>``).

    python scripts/make_bddx_demo.py [--out domains/driving/demo/bddx]

Needs PyAV (``pip install 'mini-internvl-adapt[video]'``) with its libx264 encoder.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, FPS, SECONDS = 320, 180, 15, 6
HORIZON = 70
CODE_SQUARE, CODE_STEP = 12, 14  # the frame-number squares: 12 px wide, every 14 px
URL = "https://s3-us-west-2.amazonaws.com/sq8geewpqu/samples-1k/{}.mov"
START_TIME = 1503828163000

# Per clip: GPS speed (m/s) and course (degrees) at 0..6 s, segments (start, end, action, justification),
# and what the scene shows: a traffic light's colour change time, a lead car's distance (m) at 0 s.
CLIPS = [
    {
        "speed": [0.0, 0.0, 0.0, 1.5, 3.0, 4.5, 6.0],
        "course": [90.0] * 7,
        "segments": [
            (0, 2, "The car is stopped", "because the light is red."),
            (2, 6, "The car accelerates", "because the light has turned green."),
        ],
        "light_green_at": 2.0,
        "lead_car": None,
    },
    {
        "speed": [10.0, 10.0, 9.8, 8.5, 8.0, 8.6, 9.5],
        "course": [180.0, 180.0, 180.0, 195.0, 215.0, 225.0, 225.0],
        "segments": [
            (0, 3, "The car drives forward at a steady speed", "because the road ahead is clear."),
            (3, 5, "The car slows and turns right", "to follow the road."),
            (5, 6, "The car accelerates", "because the road is clear."),
        ],
        "light_green_at": None,
        "lead_car": None,
    },
    {
        "speed": [9.0, 7.5, 6.0, 4.0, 2.0, 0.0, 0.0],
        "course": [355.0, 357.0, 359.0, 1.0, 2.0, 2.0, 2.0],
        "segments": [
            (0, 4, "The car slows down", "because the car ahead is braking."),
            (4, 6, "The car is stopped", "because traffic ahead is stopped."),
        ],
        "light_green_at": None,
        "lead_car": 30.0,
    },
]


def _interp(values: list[float], t: float) -> float:
    i = min(int(t), len(values) - 2)
    return values[i] + (t - i) * (values[i + 1] - values[i])


def _unwrapped(courses: list[float]) -> list[float]:
    out = [courses[0]]
    for c in courses[1:]:
        out.append(out[-1] + (c - out[-1] + 180.0) % 360.0 - 180.0)
    return out


def _frame(clip: dict, index: int, travelled: float, font: ImageFont.ImageFont) -> np.ndarray:
    """One frame: sky, ground, road with moving lane dashes, light or lead car, frame-number code, time."""
    t = index / FPS
    turn_rate = _interp(_unwrapped(clip["course"]), min(t + 0.5, SECONDS)) - _interp(
        _unwrapped(clip["course"]), max(t - 0.5, 0.0)
    )
    vx = WIDTH / 2 - 3.0 * turn_rate  # turning right moves the road's vanishing point left
    img = Image.new("RGB", (WIDTH, HEIGHT), (150, 190, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, HORIZON, WIDTH, HEIGHT], fill=(95, 120, 80))
    draw.polygon(
        [(20, HEIGHT), (WIDTH - 20, HEIGHT), (vx + 6, HORIZON), (vx - 6, HORIZON)], fill=(70, 70, 75)
    )

    def screen(z: float) -> tuple[float, float]:  # depth (m) -> (x of the road centre, y)
        f = 4.0 / z
        return vx + (WIDTH / 2 - vx) * f, HORIZON + (HEIGHT - HORIZON) * f

    for i in range(14):
        z0 = 4.0 + i * 4.0 - travelled % 4.0
        if z0 > 4.0:
            (x0, y0), (x1, y1) = screen(z0), screen(z0 + 2.0)
            w0, w1 = 16.0 / z0, 16.0 / (z0 + 2.0)
            draw.polygon([(x0 - w0, y0), (x0 + w0, y0), (x1 + w1, y1), (x1 - w1, y1)], fill=(235, 235, 220))
    if clip["lead_car"] is not None:
        z = max(clip["lead_car"] - travelled, 5.0)
        x, y = screen(z)
        half, tall = 150.0 / z, 110.0 / z
        draw.rectangle([x - half, y - tall, x + half, y], fill=(170, 30, 30))
        draw.rectangle([x - half * 0.8, y - tall * 0.35, x - half * 0.5, y - tall * 0.15], fill=(255, 60, 60))
        draw.rectangle([x + half * 0.5, y - tall * 0.35, x + half * 0.8, y - tall * 0.15], fill=(255, 60, 60))
    if clip["light_green_at"] is not None:
        green = t >= clip["light_green_at"]
        draw.rectangle([262, 22, 282, 62], fill=(25, 25, 25))
        draw.ellipse([265, 25, 279, 39], fill=(60, 20, 20) if green else (255, 40, 40))
        draw.ellipse([265, 45, 279, 59], fill=(40, 255, 90) if green else (20, 60, 30))
        draw.rectangle([270, 62, 274, HORIZON + 10], fill=(40, 40, 40))
    draw.rectangle([0, 0, 8 * CODE_STEP + 4, CODE_SQUARE + 6], fill=(0, 0, 0))
    for bit in range(8):
        if index >> (7 - bit) & 1:
            x = 3 + bit * CODE_STEP
            draw.rectangle([x, 3, x + CODE_SQUARE - 1, 3 + CODE_SQUARE - 1], fill=(255, 255, 255))
    draw.text(
        (6, HEIGHT - 22),
        f"t={t:.2f}s",
        fill=(255, 255, 255),
        font=font,
        stroke_width=2,
        stroke_fill=(0, 0, 0),
    )
    return np.asarray(img)


def _write_video(path: Path, clip: dict) -> None:
    import av

    font = ImageFont.load_default(size=14)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mov") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        # A keyframe every second (BDD100K's phone videos have short GOPs too), B-frames, one thread for
        # a reproducible file.
        stream.codec_context.options = {
            "crf": "26",
            "g": str(FPS),
            "bf": "2",
            "threads": "1",
            "preset": "medium",
        }
        travelled = 0.0
        for index in range(FPS * SECONDS):
            frame = av.VideoFrame.from_ndarray(_frame(clip, index, travelled, font), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(stream.encode(frame))
            travelled += _interp(clip["speed"], index / FPS) / FPS
        container.mux(stream.encode(None))


def _info(video: str, clip: dict, rng: random.Random, invalid_fix: bool) -> dict:
    lat, lon = 40.7 + rng.uniform(0, 0.05), -74.0 + rng.uniform(0, 0.05)
    locations = []
    for i, (speed, course) in enumerate(zip(clip["speed"], clip["course"])):
        locations.append({"timestamp": START_TIME + 1000 * i, "latitude": round(lat, 6), "longitude": round(lon, 6),
                          "speed": speed, "course": course, "accuracy": 5.0})  # fmt: skip
        rad = math.radians(course)
        lat += speed * math.cos(rad) / 111_000
        lon += speed * math.sin(rad) / 84_000
    if invalid_fix:  # iOS writes -1 for an invalid fix; the converter drops it
        locations.insert(3, {"timestamp": START_TIME + 2500, "latitude": 0.0, "longitude": 0.0, "speed": -1,
                             "course": -1, "accuracy": -1})  # fmt: skip
    return {"rideID": f"{video}-ride", "filename": f"{video}.mov", "startTime": START_TIME,
            "endTime": START_TIME + 1000 * SECONDS, "timelapse": False, "locations": locations,
            "gyro": [], "accelerometer": []}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "domains" / "driving" / "demo" / "bddx"
    parser.add_argument("--out", type=Path, default=default)
    args = parser.parse_args()
    rng = random.Random(20)
    out: Path = args.out
    (out / "info").mkdir(parents=True, exist_ok=True)
    ids = [f"{rng.getrandbits(32):08x}-{rng.getrandbits(32):08x}" for _ in CLIPS]
    header = ["Input.Video"] + [
        f"Answer.{k}{f}" for k in range(1, 16) for f in ("start", "end", "action", "justification")
    ]
    with open(out / "BDD-X-Annotations_v1.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for video, clip in zip(ids, CLIPS):
            cells = [URL.format(video)]
            for start, end, action, why in clip["segments"]:
                cells += [str(start), str(end), action, why]
            writer.writerow(cells + [""] * (len(header) - len(cells)))
    for k, (video, clip) in enumerate(zip(ids, CLIPS)):
        _write_video(out / "videos" / f"{video}.mov", clip)
        info = _info(video, clip, rng, invalid_fix=k == 2)
        (out / "info" / f"{video}.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    (out / "train.txt").write_text(f"1_{ids[0]}\n2_{ids[1]}\n", encoding="utf-8")
    (out / "test.txt").write_text(f"3_{ids[2]}\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1e3:.0f} KB): videos {', '.join(ids)}")


if __name__ == "__main__":
    main()

"""Draw the driving docs' picture: a converted grid frame of the demo with its grounding boxes and tags.

    python scripts/make_driving_doc_images.py [--out docs/images]

Writes docs/images/driving_grid.png (the 2688x896 grid at half size, boxes from the grounding samples,
object tags at their grid positions).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from mini_internvl_adapt.domains.driving import DrivingDomain
from PIL import Image, ImageDraw, ImageFont

from mini_internvl_adapt.data_format.samples import read_samples
from mini_internvl_adapt.metrics.boxes import denormalize_box, parse_boxes

_GRID_TAG = re.compile(r"<(c\d+),(CAM_[A-Z_]+),\[(\d+),(\d+)\]>")


def draw_grid_frame(dataset: Path, out: Path, scale: float = 0.5) -> Path:
    """Draw the first frame of a converted grid dataset with its boxes (from grounding samples) and tags."""
    samples = read_samples(dataset / "train.jsonl")
    frame = samples[0].meta["frame"]
    ours = [s for s in samples if s.meta.get("frame") == frame]
    img = Image.open(dataset / ours[0].images[0]).convert("RGB")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=30)
    for s in ours:
        if s.task == "driving-grounding":
            box = denormalize_box(parse_boxes(s.answer)[0], img.width, img.height)
            draw.rectangle(box, outline=(255, 40, 40), width=5)
            phrase = s.question.split("<ref>")[1].split("</ref>")[0]
            draw.text(
                (box[0], box[3] + 4),
                phrase,
                fill=(255, 40, 40),
                font=font,
                stroke_width=2,
                stroke_fill=(0, 0, 0),
            )
    tagged = next(s for s in ours if s.meta.get("question_type") == "perception")
    for ident, _, gx, gy in _GRID_TAG.findall(tagged.answer):
        x, y = int(gx) / 1000 * img.width, int(gy) / 1000 * img.height
        draw.ellipse([x - 8, y - 8, x + 8, y + 8], fill=(255, 220, 0))
        draw.text((x + 10, y - 34), f"<{ident},[{gx},{gy}]>", fill=(255, 220, 0), font=font, stroke_width=2,
                  stroke_fill=(0, 0, 0))  # fmt: skip
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    args = parser.parse_args()
    domain = DrivingDomain()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "demo"
        domain.convert(domain.demo_source(), dataset, tasks="qa,grounding", workers=2)
        path = draw_grid_frame(dataset, args.out / "driving_grid.png")
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()

"""Draw the driving docs' BDD-X picture: the frames of one converted demo sample, with its questions and answers.

    python scripts/make_bddx_doc_image.py [--out docs/images]

Converts the bundled BDD-X demo (needs PyAV: ``pip install 'mini-internvl-adapt[video]'``) and writes
docs/images/driving_bddx_frames.png: the 8 frames of row 2, segment 2 (the right turn) in a 4 x 2 grid, each
labelled with its ``FrameN`` placeholder and its own time, above the segment's three samples' questions and
answers.
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
from pathlib import Path

from mini_internvl_adapt.domains.driving import DrivingDomain
from PIL import Image, ImageDraw, ImageFont

from mini_internvl_adapt.data_format.samples import read_samples


def draw_segment(dataset: Path, row: int, segment: int, out: Path, columns: int = 4) -> Path:
    """Draw the frames of one converted BDD-X segment and its samples' last question and answer."""
    samples = [
        s
        for s in read_samples(dataset / "train.jsonl")
        if (s.meta["row"], s.meta["segment"]) == (row, segment)
    ]
    first = samples[0]
    w, h = first.widths[0], first.heights[0]  # type: ignore[index]
    rows = -(-len(first.images) // columns)
    font = ImageFont.load_default(size=15)
    lines = [f"{s.task}:  Q: {s.question.splitlines()[-1]}   A: {s.answer}" for s in samples]
    wrapped = [part for line in lines for part in textwrap.wrap(line, 150)]
    canvas = Image.new(
        "RGB", (columns * w + (columns + 1) * 6, rows * (h + 6) + 6 + 22 * len(wrapped) + 30), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for i, (rel, t) in enumerate(zip(first.images, first.meta["frame_times"])):
        x, y = 6 + (i % columns) * (w + 6), 6 + (i // columns) * (h + 6)
        canvas.paste(Image.open(dataset / rel).convert("RGB"), (x, y))
        draw.text((x + w - 6, y + 4), f"Frame{i + 1}  {t:.3f} s", fill=(255, 255, 0), font=font, anchor="ra",
                  stroke_width=2, stroke_fill=(0, 0, 0))  # fmt: skip
    y = rows * (h + 6) + 12
    title = (f"BDD-X row {row}, segment {segment} ({first.meta['start']:g}-{first.meta['end']:g} s, video "
             f"{first.meta['video']}): {len(first.images)} frames, one multi-image sample per task")  # fmt: skip
    draw.text((8, y), title, fill=(0, 0, 0), font=font)
    for k, line in enumerate(wrapped):
        draw.text((8, y + 24 + 22 * k), line, fill=(20, 20, 120), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    args = parser.parse_args()
    domain = DrivingDomain()
    with tempfile.TemporaryDirectory() as tmp:
        options = {**domain.demo_convert_options(fmt="bddx"), "frames": 8}
        domain.convert(domain.demo_source(fmt="bddx"), Path(tmp) / "demo", **options)
        path = draw_segment(Path(tmp) / "demo", 2, 2, args.out / "driving_bddx_frames.png")
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()

"""A picture of converted samples: the image(s) as the model sees them, the question, the answer, and
every box (``<box>[[...]]</box>``) and driving object tag drawn where it points.

What cannot be shown is shortened before any work is done on it: the text to a few lines, the ids and box
labels to a line, the images of a sample to the first MAX_IMAGES; boxes and tags are looked for in the first
MAX_SCANNED characters only, with patterns whose every repetition is bounded (a 50 MB word costs a slice).
"""

from __future__ import annotations

import io
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from mini_internvl_adapt.data_format.limits import too_large
from mini_internvl_adapt.data_format.samples import Sample, resolve_image
from mini_internvl_adapt.fileio import MARKER_VALUE, PNG_MARKER_KEY, atomic_write_bytes
from mini_internvl_adapt.metrics.boxes import denormalize_box

MAX_IMAGES = 8
MAX_SCANNED = 100_000
MAX_LABEL = 80

_REF_BOX = re.compile(
    r"(?:<ref>(?P<ref>[^<]{0,200})</ref>)?\s{0,20}<box>\s{0,20}\["
    r"(?P<boxes>(?:\s{0,20}\[[^\[\]]{0,200}\]\s{0,20},?){1,100})\]\s{0,20}</box>"
)
_ONE = re.compile(r"\[\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*\]")
# Grid layout tags carry 0-1000 coordinates in brackets; views layout tags carry camera pixels.
_TAG_GRID = re.compile(r"<(c\d+),\s*(CAM_[A-Z_]+),\s*\[\s*([\d.]+)\s*,\s*([\d.]+)\s*\]>")
_TAG_PIXELS = re.compile(r"<(c\d+),\s*(CAM_[A-Z_]+),\s*([\d.]+)\s*,\s*([\d.]+)\s*>")

_IMAGE_LABEL = re.compile(r"(\S{1,40}):\s{0,20}<image>")

PANEL_WIDTH = 640
TEXT_LINES = 9
COLOURS = ("#ff3b30", "#34c759", "#007aff", "#ffcc00", "#af52de", "#ff9500", "#5ac8fa", "#ff2d55")


def sized_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at `size` pixels (its fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _annotations(
    text: str,
) -> tuple[list[tuple[str, list[float]]], list[tuple[str, str, float, float, bool]]]:
    boxes = []
    for m in _REF_BOX.finditer(text):
        for b in _ONE.finditer(m.group("boxes")):
            boxes.append((m.group("ref") or "", [float(v) for v in b.groups()]))
    tags = [(m[1], m[2], float(m[3]), float(m[4]), True) for m in _TAG_GRID.finditer(text)]
    tags += [(m[1], m[2], float(m[3]), float(m[4]), False) for m in _TAG_PIXELS.finditer(text)]
    return boxes, tags


def _short(text: str, limit: int = MAX_LABEL) -> str:
    """`text` cut to `limit` characters (with '...' when it was longer)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _open_image(sample: Sample, root: Path, rel: str) -> Image.Image:
    """The image as RGB; raises ValueError naming the sample and the file when it cannot be read (or lies
    outside the dataset root, or is over Pillow's pixel limit)."""
    path = root / rel
    try:
        with Image.open(resolve_image(root, rel)) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ValueError(f"sample '{_short(sample.id)}': {too_large(path, e)}") from e
    except (OSError, ValueError) as e:
        reason = (
            e.strerror if isinstance(e, OSError) and e.strerror else str(e).replace(f"'{path}'", "").strip()
        )
        raise ValueError(f"sample '{_short(sample.id)}': cannot read image {path}: {reason}") from e


def render_sample(sample: Sample, root: Path, width: int = PANEL_WIDTH) -> Image.Image:
    """One panel: the sample's images side by side, annotations drawn, question and answer below.

    Raises:
        ValueError: An image is missing or unreadable; names the sample and the file.
    """
    images = [_open_image(sample, root, rel) for rel in sample.images[:MAX_IMAGES]]
    text = " ".join(t.value[:MAX_SCANNED] for t in sample.conversations)[:MAX_SCANNED]
    boxes, tags = _annotations(text)
    boxes = [(_short(ref), box) for ref, box in boxes]
    # Which view each image is: meta may say; else prompts name them ("CAM_FRONT: <image>", "Image-1: <image>").
    cameras: Sequence[str] = (sample.meta.get("cameras") if isinstance(sample.meta, dict) else None) or [
        m.group(1) for m in _IMAGE_LABEL.finditer(sample.question[:MAX_SCANNED])
    ]
    drawn = []
    for index, image in enumerate(images):
        draw = ImageDraw.Draw(image)
        line = max(2, image.width // 300)
        if len(images) == 1:  # boxes and grid tags are on the 0-1000 scale of the single image
            for k, (ref, box) in enumerate(boxes):
                colour = COLOURS[k % len(COLOURS)]
                x1, y1, x2, y2 = denormalize_box(box, image.width, image.height)
                # A reversed box (x2 < x1, a model's or a converter's slip) is still drawn where it points.
                x1, x2 = sorted((x1, x2))
                y1, y2 = sorted((y1, y2))
                draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
                draw.text(
                    (x1 + line, y1 + line), ref, fill=colour, font=sized_font(max(12, image.width // 60))
                )
        for k, (ident, camera, x, y, on_grid) in enumerate(tags):
            if on_grid and len(images) == 1:
                px, py = x / 1000 * image.width, y / 1000 * image.height
            elif not on_grid and index < len(cameras) and cameras[index] == camera:
                px, py = x, y
            else:
                continue
            colour = COLOURS[k % len(COLOURS)]
            r = max(6, image.width // 90)
            draw.ellipse([px - r, py - r, px + r, py + r], outline=colour, width=line)
            draw.text((px + r + 2, py - r), ident, fill=colour, font=sized_font(max(12, image.width // 45)))
        drawn.append(image)
    strip_height = 0
    if drawn:
        scale = width / sum(im.width for im in drawn)
        strip_height = max(1, round(max(im.height for im in drawn) * scale))
    font = sized_font(13)
    shown = 95 * (TEXT_LINES // 2 + 1) + 1  # more than the lines kept can hold: wrapping more is wasted work
    question = textwrap.wrap("Q: " + _short(sample.question, shown).replace("\n", " "), 95)[
        : TEXT_LINES // 2 + 1
    ]
    answer = textwrap.wrap("A: " + _short(sample.answer, shown).replace("\n", " "), 95)[: TEXT_LINES // 2]
    lines = [f"{_short(sample.id)}  [{_short(sample.task or '-', 40)}]", *question, *answer]
    if len(sample.images) > MAX_IMAGES:
        lines.insert(1, f"(the first {MAX_IMAGES} of its {len(sample.images)} images)")
    panel = Image.new("RGB", (width, strip_height + 16 * len(lines) + 10), "white")
    x = 0
    for image in drawn:
        w = max(1, round(image.width * width / sum(im.width for im in drawn)))
        panel.paste(image.resize((w, strip_height), Image.Resampling.BILINEAR), (x, 0))
        x += w
    draw = ImageDraw.Draw(panel)
    for i, line_text in enumerate(lines):
        draw.text((6, strip_height + 4 + 16 * i), line_text, fill="black", font=font)
    return panel


def make_preview(samples: Sequence[Sample], root: Path, out: Path, n: int = 8, columns: int = 2) -> Path:
    """Write a grid of `n` sample panels to `out` (PNG) and return the path."""
    if not samples:
        raise ValueError("no samples to preview")
    if n < 1 or columns < 1:
        raise ValueError(f"n and columns must be at least 1, got {n} and {columns}")
    panels = [render_sample(s, root) for s in samples[:n]]
    columns = min(columns, len(panels))
    rows = (len(panels) + columns - 1) // columns
    row_heights = [max(p.height for p in panels[r * columns : (r + 1) * columns]) for r in range(rows)]
    sheet = Image.new(
        "RGB", (columns * PANEL_WIDTH + (columns - 1) * 8, sum(row_heights) + (rows - 1) * 8), "#dddddd"
    )
    y = 0
    for r in range(rows):
        for c, panel in enumerate(panels[r * columns : (r + 1) * columns]):
            sheet.paste(panel, (c * (PANEL_WIDTH + 8), y))
        y += row_heights[r] + 8
    image_format = Image.registered_extensions().get(out.suffix.lower(), "PNG")
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_MARKER_KEY, f"{MARKER_VALUE} preview")  # what `adapt preview` may overwrite
    buffer = io.BytesIO()
    sheet.save(buffer, format=image_format, **({"pnginfo": info} if image_format == "PNG" else {}))
    atomic_write_bytes(out, buffer.getvalue())
    return out

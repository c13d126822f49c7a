"""Pictures for docs/domains/remote-sensing.md, made from the real Landsat scene and the demo.

- remote_sensing_stretch.png: the Landsat scene (RGB.byte.tif) as stored (uint8 is kept as is: before)
  and with the 2-98 percentile stretch over its valid pixels (after); nodata borders stay black. Plus
  the 16-bit raster RGBA.uint16.tif, whose alpha band masks about half of it.
- remote_sensing_chips.png: the demo scene's chip grid with the labelled boxes of its grounding samples.

Usage: python scripts/make_remote_sensing_doc_images.py [--data ../shared/data/geotiff] [--out docs/images]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mini_internvl_adapt.domains.remote_sensing import RemoteSensingDomain
from mini_internvl_adapt.domains.remote_sensing.raster import (
    RenderOptions,
    choose_bands,
    open_raster,
    read_window,
    scene_stretch,
)
from PIL import Image, ImageDraw

from mini_internvl_adapt.data_format.samples import read_samples
from mini_internvl_adapt.metrics.boxes import denormalize_box, parse_boxes

REPO = Path(__file__).resolve().parents[1]
PANEL = 320


def _fit(image: Image.Image) -> Image.Image:
    scale = PANEL / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)


def _labelled(image: Image.Image, title: str) -> Image.Image:
    canvas = Image.new("RGB", (PANEL, PANEL + 22), "white")
    canvas.paste(_fit(image), (0, 22))
    ImageDraw.Draw(canvas).text((4, 4), title, fill="black")
    return canvas


def stretch_picture(data_dir: Path, out: Path) -> None:
    with open_raster(data_dir / "RGB.byte.tif") as ds:
        bands = choose_bands(ds, None)
        values, valid = read_window(ds, bands, 0, 0, ds.width, ds.height)
        before = scene_stretch(ds, bands, RenderOptions()).apply(values, valid)
        after = scene_stretch(ds, bands, RenderOptions(stretch="percentile")).apply(values, valid)
    with open_raster(data_dir / "RGBA.uint16.tif") as ds:
        bands = choose_bands(ds, None)
        values, valid = read_window(ds, bands, 0, 0, ds.width, ds.height)
        masked = scene_stretch(ds, bands, RenderOptions()).apply(values, valid)
    panels = [
        _labelled(Image.fromarray(before), "RGB.byte (Landsat 7), uint8 as is (before)"),
        _labelled(Image.fromarray(after), "--stretch percentile 2-98 (after)"),
        _labelled(Image.fromarray(masked), "RGBA.uint16: alpha-masked pixels black"),
    ]
    sheet = Image.new("RGB", (PANEL * 3 + 8, PANEL + 22), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, (i * (PANEL + 4), 0))
    sheet.save(out / "remote_sensing_stretch.png", optimize=True)


def chips_picture(out: Path) -> None:
    domain = RemoteSensingDomain()
    with tempfile.TemporaryDirectory() as tmp:
        ds_dir = Path(tmp) / "ds"
        domain.convert(domain.demo_source(), ds_dir, **domain.demo_convert_options())
        samples = [s for split in ("train", "test") for s in read_samples(ds_dir / f"{split}.jsonl")]
        with open_raster(domain.demo_source() / "scene.tif") as ds:
            v, m = read_window(ds, [3, 2, 1], 0, 0, ds.width, ds.height)
            scene = Image.fromarray(scene_stretch(ds, [3, 2, 1], RenderOptions()).apply(v, m))
        draw = ImageDraw.Draw(scene)
        colours = {"building": "red", "tree": "lime", "pond": "cyan"}
        chips = {tuple(s.meta["window"]) for s in samples}
        for c, r, w, h in chips:
            draw.rectangle([c, r, c + w - 1, r + h - 1], outline="yellow")
            draw.text((c + 3, r + 3), f"[{c}, {r}, {w}, {h}]", fill="yellow")
        for s in samples:
            if s.task != "rs-grounding":
                continue
            c, r, w, h = s.meta["window"]
            for box in parse_boxes(s.answer):
                x1, y1, x2, y2 = denormalize_box(box, w, h)
                draw.rectangle(
                    [c + x1, r + y1, c + x2, r + y2], outline=colours.get(s.meta["label"], "white")
                )
        scene.resize((scene.width * 2, scene.height * 2), Image.Resampling.NEAREST).save(
            out / "remote_sensing_chips.png", optimize=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "geotiff")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stretch_picture(args.data, args.out)
    chips_picture(args.out)
    for name in ("remote_sensing_stretch.png", "remote_sensing_chips.png"):
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()

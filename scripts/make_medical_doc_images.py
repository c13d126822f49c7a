"""Pictures for docs/domains/medical.md, rendered by the converter's own code.

    docs/images/medical_ct_windows.png   one CT slice (pydicom's CT_small.dcm) under three windows + auto
    docs/images/medical_demo.png         the demo's MONOCHROME1 radiograph and one series, as converted

Usage: python scripts/make_medical_doc_images.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mini_internvl_adapt.domains.medical.dicom_render import RenderOptions, render_source
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"
DEMO = REPO / "domains" / "medical" / "demo"
SCALE = 2


def tile(pixels: np.ndarray, caption: str) -> Image.Image:
    """One panel: the rendered image scaled up (nearest) with a caption strip below."""
    image = Image.fromarray(pixels, "RGB")
    image = image.resize((image.width * SCALE, image.height * SCALE), Image.Resampling.NEAREST)
    panel = Image.new("RGB", (image.width, image.height + 22), "white")
    panel.paste(image, (0, 0))
    ImageDraw.Draw(panel).text((4, image.height + 5), caption, fill="black")
    return panel


def row(panels: list[Image.Image]) -> Image.Image:
    """Panels side by side with a small gap, top-aligned."""
    width = sum(p.width for p in panels) + 8 * (len(panels) - 1)
    out = Image.new("RGB", (width, max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        out.paste(panel, (x, 0))
        x += panel.width + 8
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ct = Path(get_testdata_file("CT_small.dcm", download=False))
    panels = []
    for window, caption in (
        ("lung", "lung -600/1500"),
        ("mediastinum", "mediastinum 50/350"),
        ("bone", "bone 400/1800"),
        ("auto", "auto (0.5-99.5 pct)"),
    ):
        rendered = render_source(ct, RenderOptions(window=window))
        panels.append(tile(rendered.images[0].pixels, caption))
    row(panels).save(OUT / "medical_ct_windows.png", optimize=True)

    radiograph = render_source(DEMO / "cr" / "chest_pa_000.dcm", RenderOptions())
    series = render_source(DEMO / "series" / "ct_chest", RenderOptions())
    demo = [tile(radiograph.images[0].pixels, "CR, MONOCHROME1, SIGMOID")]
    demo += [tile(im.pixels, f"series slice {i + 1}/3") for i, im in enumerate(series.images)]
    row(demo).save(OUT / "medical_demo.png", optimize=True)
    for name in ("medical_ct_windows.png", "medical_demo.png"):
        print(f"wrote {OUT / name} ({(OUT / name).stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()

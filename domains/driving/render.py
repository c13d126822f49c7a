"""Writing a frame's camera images: the labelled 2x3 grid (one JPEG per frame) or the six views."""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .tags import CAMERAS, GRID_POSITION, GRID_SIZE, TILE_SIZE


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=32)


@lru_cache(maxsize=len(CAMERAS))
def _label(camera: str) -> Image.Image:
    """The camera name as an RGBA stamp, rendered once (FreeType drawing per frame costs as much as a resize)."""
    font = _font()
    left, top, right, bottom = font.getbbox(camera, stroke_width=2)
    stamp = Image.new("RGBA", (int(right) + 2, int(bottom) + 2), (0, 0, 0, 0))
    ImageDraw.Draw(stamp).text((0, 0), camera, fill=(255, 255, 255, 255), font=font, stroke_width=2,
                               stroke_fill=(0, 0, 0, 255))  # fmt: skip
    return stamp


def _tile(path: Path, exact: bool) -> Image.Image:
    with Image.open(path) as img:
        if not exact:
            # libjpeg decodes straight to the smallest DCT scale >= half the tile width (800x450 for a
            # 1600x900 view): a filtered downscale at a fraction of the cost of decode + resample.
            img.draft("RGB", (TILE_SIZE[0] // 2 + 1, TILE_SIZE[1] // 2 + 1))
        return img.convert("RGB").resize(TILE_SIZE, Image.Resampling.BILINEAR)


def write_grid(
    cameras: dict[str, Path], out: Path, quality: int = 95, exact: bool = False
) -> tuple[int, int]:
    """Resize the six views to 896x448, label each with its camera name at (0, 0), tile them 2x3.

    Args:
        cameras: Camera name -> image file (all six cameras).
        out: The JPEG to write.
        quality: JPEG quality.
        exact: Decode at full size and resample (slower); by default a JPEG is decoded at a reduced DCT
            scale first (a 1600x900 view at 800x450, then scaled to 896x448), about 2x faster overall.

    Returns:
        The grid's (width, height): (2688, 896).

    Raises:
        OSError: A camera image is missing or cannot be decoded (the message names the file).
    """
    grid = Image.new("RGB", GRID_SIZE)
    for camera in CAMERAS:
        path = cameras[camera]
        try:
            tile = _tile(path, exact)
        except FileNotFoundError:
            raise OSError(f"camera image not found: {path}") from None
        except OSError as e:
            raise OSError(f"cannot decode camera image {path}: {e}") from None
        row, col = GRID_POSITION[camera]
        x, y = col * TILE_SIZE[0], row * TILE_SIZE[1]
        grid.paste(tile, (x, y))
        label = _label(camera)
        grid.paste(label, (x, y), label)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, "JPEG", quality=quality)
    return grid.size


def write_views(cameras: dict[str, Path], out_dir: Path, stem: str) -> dict[str, tuple[str, int, int]]:
    """Copy the six views unchanged (original pixels) as ``out_dir/{stem}_{CAMERA}.jpg``.

    Returns:
        Camera name -> (file name, width, height).

    Raises:
        OSError: A camera image is missing or cannot be read (the message names the file).
    """
    sizes = {}
    for camera in CAMERAS:  # every view is checked before any is copied: a broken frame leaves no file
        path = cameras[camera]
        try:
            with Image.open(path) as img:
                sizes[camera] = img.size
                # Decode (a JPEG at 1/8 scale: every byte is still read) so a truncated file is caught here,
                # not when training loads it; verify() checks the header only.
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
        except FileNotFoundError:
            raise OSError(f"camera image not found: {path}") from None
        except Exception as e:  # PIL raises several types for broken files
            raise OSError(f"cannot read camera image {path}: {e}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for camera in CAMERAS:
        path = cameras[camera]
        name = f"{stem}_{camera}{path.suffix.lower() or '.jpg'}"
        shutil.copyfile(path, out_dir / name)
        written[camera] = (name, *sizes[camera])
    return written

"""Whole images for the non-chipped sources: GeoTIFFs rendered (decimated past --max-size), others copied."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from .raster import RenderOptions, render_whole

RASTER_SUFFIXES = (".tif", ".tiff")


def image_name(source_root: Path, image: Path) -> str:
    """The dataset-relative name of a source image: images/<its path under the source, flattened>[.png].

    Distinct source files get distinct names: a rendered GeoTIFF keeps its suffix (``a.tif.png`` is
    never ``a.png``'s copy), and a file outside the source folder is prefixed with a digest of its
    folder (``../d1/x.png`` and ``../d2/x.png`` are two images).
    """
    resolved = image.resolve()
    try:
        flat = resolved.relative_to(source_root.resolve()).as_posix().replace("/", "__")
    except ValueError:
        folder = hashlib.sha256(str(resolved.parent).encode()).hexdigest()[:10]
        flat = f"external-{folder}__{image.name}"
    if image.suffix.lower() in RASTER_SUFFIXES:
        flat += ".png"
    return f"images/{flat}"


def write_image(
    image: Path, out_root: Path, name: str, options: RenderOptions, max_size: int
) -> dict[str, Any]:
    """Write one source image into the dataset and return its facts (width, height, raster meta).

    A GeoTIFF is rendered to PNG through the same band / stretch / mask rules as chips; a PNG or JPEG is
    copied byte for byte (no re-encoding), its size read from the header.

    Raises:
        FileNotFoundError: The image does not exist.
        Exception: Whatever the reader raises for a corrupt file (the caller records it).
    """
    from PIL import Image

    if not image.is_file():
        raise FileNotFoundError(f"image not found: {image}")
    target = out_root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if image.suffix.lower() in RASTER_SUFFIXES:
        rgb, info = render_whole(image, options, max_size)
        Image.fromarray(rgb).save(target)
        return {"width": rgb.shape[1], "height": rgb.shape[0], "raster": info}
    with Image.open(image) as im:
        width, height = im.size
        im.verify()
    shutil.copyfile(image, target)
    return {"width": width, "height": height}


def write_images(
    jobs: dict[str, Path], out_root: Path, options: RenderOptions, max_size: int, workers: int
) -> dict[str, dict[str, Any] | BaseException]:
    """Write many images in parallel (tqdm bar); name -> facts, or the exception that image raised."""
    from .common import parallel_map

    names = list(jobs)
    results = parallel_map(
        lambda name: write_image(jobs[name], out_root, name, options, max_size), names, workers, desc="images"
    )
    return dict(zip(names, results))

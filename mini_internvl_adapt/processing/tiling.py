"""InternVL dynamic-resolution tiling: choose a tile grid, cut an image into normalised 448x448 tiles.

The rule is InternVL's ``dynamic_preprocess``: among all (cols, rows) grids with
``min_tiles <= cols * rows <= max_tiles`` pick the one whose aspect ratio is closest to the image's; on an
exact tie a later (larger) grid wins only while the image area exceeds half the grid's pixel area. The whole
image is resized (PIL bicubic) to the grid, cut row-major into tiles, and a resized whole-image thumbnail is
appended when there is more than one tile. Tiles are ``ToTensor`` + ImageNet-normalised.

The output matches transformers' PIL-backend ``GotOcr2ImageProcessorPil`` (``crop_to_patches=True``,
``size=448``, ImageNet mean/std): same grid, same tiles, pixel values within float32 rounding. Speed: the only
PIL work is the two bicubic resizes; tiling is a reshape/transpose view, written once into the output tensor
and normalised in place (no per-tile PIL call or copy). `jpeg_reencode` is the official training-time JPEG
augmentation of finished tiles.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Modes holding 16-bit samples: PIL's own convert("RGB") clips them at 255 (a near-white image), so they are
# rescaled to 8 bits first.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def _check_tile_args(min_tiles: int, max_tiles: int, tile_size: int = 448) -> None:
    """Raise ValueError for a tile budget or tile size that cannot produce a grid."""
    if min_tiles < 1:
        raise ValueError(f"min_tiles must be >= 1, got {min_tiles}")
    if max_tiles < min_tiles:
        raise ValueError(f"max_tiles must be >= min_tiles, got min_tiles={min_tiles}, max_tiles={max_tiles}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")


@lru_cache(maxsize=64)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) grids with ``min_tiles <= cols * rows <= max_tiles``, in InternVL's scan order.

    InternVL builds the candidates as a Python set and sorts them by tile count; the sort is stable, so grids
    with the same count keep the set's iteration order. That order decides exact ties between two grids of
    the same count (only reachable when ``min_tiles >= 4``), so it is reproduced by building the same set in
    the same insertion sequence. For ``min_tiles`` 1 to 3 it equals transformers' (cols ascending) order in
    every case that can matter.

    Args:
        min_tiles: Smallest allowed number of tiles (>= 1).
        max_tiles: Largest allowed number of tiles (>= min_tiles).

    Returns:
        The grids as (cols, rows) tuples, sorted by cols * rows.
    """
    _check_tile_args(min_tiles, max_tiles)
    grids = set()
    for n in range(min_tiles, max_tiles + 1):
        for cols in range(1, n + 1):
            for rows in range(1, n + 1):
                if min_tiles <= cols * rows <= max_tiles:
                    grids.add((cols, rows))
    return tuple(sorted(grids, key=lambda grid: grid[0] * grid[1]))


def choose_grid(
    width: int, height: int, *, min_tiles: int = 1, max_tiles: int = 12, tile_size: int = 448
) -> tuple[int, int]:
    """Pick InternVL's tile grid for an image of ``width`` x ``height`` pixels.

    Args:
        width: Image width in pixels (> 0).
        height: Image height in pixels (> 0).
        min_tiles: Smallest allowed number of tiles.
        max_tiles: Largest allowed number of tiles.
        tile_size: Tile side in pixels; only used by the tie-break (area test).

    Returns:
        ``(cols, rows)``: the grid with the closest aspect ratio; on an exact tie the later (larger) grid
        replaces the current one only if ``width * height > 0.5 * tile_size**2 * cols * rows``.

    Raises:
        ValueError: For a non-positive size or an impossible tile budget.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    _check_tile_args(min_tiles, max_tiles, tile_size)
    aspect = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        # Same float expressions as the reference so exact ties are detected identically.
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def num_tiles(
    width: int,
    height: int,
    *,
    min_tiles: int = 1,
    max_tiles: int = 12,
    use_thumbnail: bool = True,
    tile_size: int = 448,
) -> int:
    """Number of tiles ``tile_image`` yields for an image of this size, without decoding any pixels.

    Args:
        width: Image width in pixels.
        height: Image height in pixels.
        min_tiles: Smallest allowed number of grid tiles.
        max_tiles: Largest allowed number of grid tiles.
        use_thumbnail: Whether a thumbnail is appended when the grid has more than one tile.
        tile_size: Tile side in pixels (affects the tie-break only).

    Returns:
        cols * rows, plus one for the thumbnail when it is added.
    """
    cols, rows = choose_grid(width, height, min_tiles=min_tiles, max_tiles=max_tiles, tile_size=tile_size)
    grid = cols * rows
    return grid + 1 if use_thumbnail and grid > 1 else grid


def tiles_per_image(n_images: int, max_tiles: int) -> int:
    """Tile budget of each image in a sample with ``n_images`` images: ``max(1, max_tiles // n_images)``.

    Args:
        n_images: Number of images in the sample (>= 1).
        max_tiles: The sample's total tile budget (>= 1).

    Returns:
        The per-image ``max_tiles`` to pass to ``tile_image`` / ``num_tiles``.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
    return max(1, max_tiles // n_images)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB the way transformers' ``convert_to_rgb`` does.

    Transparency (an alpha band, or a palette/``transparency`` entry) is composited onto white. 16-bit
    greyscale (``I;16*``) is first scaled to 8 bits (``round(v * 255 / 65535)``) because PIL would clip it.

    Args:
        image: Any PIL image.

    Returns:
        An RGB image (the same object when it already is RGB).
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


@lru_cache(maxsize=1)
def _affine() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale and offset with x * scale + offset == (x / 255 - mean) / std."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).to(torch.float32).view(1, 3, 1)
    offset = (-mean / std).to(torch.float32).view(1, 3, 1)
    return scale, offset


def _plane(plane: Image.Image) -> torch.Tensor:
    """Flat uint8 tensor of a single-band image (a writable copy: torch refuses read-only buffers)."""
    return torch.frombuffer(bytearray(plane.tobytes()), dtype=torch.uint8)


def tile_image(
    image: Image.Image,
    *,
    min_tiles: int = 1,
    max_tiles: int = 12,
    tile_size: int = 448,
    use_thumbnail: bool = True,
) -> torch.Tensor:
    """Cut an image into InternVL's dynamic-resolution tiles.

    Args:
        image: A PIL image of any mode (converted to RGB first, see ``to_rgb``).
        min_tiles: Smallest allowed number of grid tiles.
        max_tiles: Largest allowed number of grid tiles.
        tile_size: Tile side in pixels.
        use_thumbnail: Append a whole-image thumbnail when the grid has more than one tile.

    Returns:
        float32 tensor ``(n, 3, tile_size, tile_size)``, ImageNet-normalised: the grid tiles row-major
        (left to right, top to bottom), then the thumbnail.
    """
    image = to_rgb(image)
    width, height = image.size
    cols, rows = choose_grid(width, height, min_tiles=min_tiles, max_tiles=max_tiles, tile_size=tile_size)
    n_grid = cols * rows
    add_thumbnail = use_thumbnail and n_grid > 1
    s = tile_size

    out = torch.empty((n_grid + int(add_thumbnail), 3, s, s), dtype=torch.float32)
    resized = image.resize((cols * s, rows * s), Image.Resampling.BICUBIC)
    tiles = out[:n_grid].view(rows, cols, 3, s, s)
    # Per colour plane, (rows*s, cols*s) -> (rows, s, cols, s) -> (rows, cols, s, s) is a view whose inner
    # axis is contiguous; one copy per plane writes every tile at once and converts uint8 to float32.
    for channel, plane in enumerate(resized.split()):
        tiles[:, :, channel].copy_(_plane(plane).view(rows, s, cols, s).permute(0, 2, 1, 3))
    if add_thumbnail:
        thumbnail = image.resize((s, s), Image.Resampling.BICUBIC)
        for channel, plane in enumerate(thumbnail.split()):
            out[n_grid, channel].copy_(_plane(plane).view(s, s))
    scale, offset = _affine()
    out.view(out.shape[0], 3, s * s).mul_(scale).add_(offset)
    return out


def jpeg_reencode(tiles: torch.Tensor, qualities: Sequence[int]) -> torch.Tensor:
    """Re-encode every tile as a JPEG at its own quality and decode it: the official training augmentation.

    The official ``build_transform(is_train=True)`` (for meta entries with ``data_augment: true``) saves each
    448x448 tile PIL image (grid tiles and thumbnail) as a JPEG at a random quality from 75 to 100 and reads it
    back before ``ToTensor`` and normalisation. Here the tiles' 8-bit values are recovered exactly from the
    normalised tensor (the float error is far below half a grey level), so the result equals that pipeline
    for the same qualities.

    Args:
        tiles: float32 ``(n, 3, s, s)`` from ``tile_image`` (ImageNet-normalised).
        qualities: One JPEG quality (1-100) per tile.

    Returns:
        A new tensor of the same shape: the decoded JPEGs, normalised the same way.

    Raises:
        ValueError: When the number of qualities is not the number of tiles.
    """
    n, _, side_h, side_w = tiles.shape
    if len(qualities) != n:
        raise ValueError(f"{len(qualities)} JPEG qualities for {n} tiles")
    scale, offset = _affine()
    flat = tiles.detach().to(torch.float32).reshape(n, 3, side_h * side_w)
    pixels = ((flat - offset) / scale).round_().clamp_(0, 255).to(torch.uint8)
    images = pixels.view(n, 3, side_h, side_w).permute(0, 2, 3, 1).contiguous().numpy()  # (n, h, w, RGB)
    decoded = np.empty_like(images)
    for index, quality in enumerate(qualities):
        with io.BytesIO() as buffer:
            Image.fromarray(images[index]).save(buffer, format="JPEG", quality=int(quality))
            buffer.seek(0)
            with Image.open(buffer) as image:
                decoded[index] = np.asarray(image.convert("RGB"))
    planar = torch.from_numpy(decoded).permute(0, 3, 1, 2)
    out = planar.to(torch.float32, memory_format=torch.contiguous_format)
    out.view(n, 3, side_h * side_w).mul_(scale).add_(offset)
    return out

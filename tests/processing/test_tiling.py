"""Dynamic-resolution tiling: InternVL's grid rule and tie-break, pixel identity with transformers' PIL
processor, tile order, multi-image budget, non-RGB modes."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from mini_internvl_adapt.processing.tiling import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    candidate_grids,
    choose_grid,
    num_tiles,
    tile_image,
    tiles_per_image,
)

got_ocr2 = pytest.importorskip("transformers.models.got_ocr2.image_processing_pil_got_ocr2")

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _processor(min_tiles: int, max_tiles: int, tile_size: int = 448):
    return got_ocr2.GotOcr2ImageProcessorPil(
        crop_to_patches=True,
        min_patches=min_tiles,
        max_patches=max_tiles,
        size={"height": tile_size, "width": tile_size},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )


def _reference(image: Image.Image, min_tiles: int = 1, max_tiles: int = 12, tile_size: int = 448):
    out = _processor(min_tiles, max_tiles, tile_size)(images=image, return_tensors="pt")
    return out["pixel_values"], int(out["num_patches"][0])


def _photo(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A smooth gradient plus noise: both resampling edges and flat areas are exercised."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    return image if mode == "RGB" else image.convert(mode)


# --- the grid rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "limits", "grid"),
    [
        # Square image: (1,1), (2,2), (3,3) tie at diff 0. 1000*1000 = 1e6 > 0.5*448^2*4 = 401408 -> (2,2),
        # and 1e6 > 0.5*448^2*9 = 903168 -> (3,3).
        ((1000, 1000), (1, 12), (3, 3)),
        # 800*800 = 640000 passes the (2,2) test but not (3,3) (903168).
        ((800, 800), (1, 12), (2, 2)),
        # 448*448 = 200704 does not exceed 401408: stays (1,1).
        ((448, 448), (1, 12), (1, 1)),
        # Aspect 1.5 with max 2: |1.5-1| == |1.5-2| == 0.5; area 240000 > 0.5*448^2*2 = 200704 -> (2,1).
        ((600, 400), (1, 2), (2, 1)),
        # Same aspect, area 60000 < 200704: the earlier (1,1) is kept.
        ((300, 200), (1, 2), (1, 1)),
        # nuScenes 1600x900 (aspect 1.78): (2,1) and (4,2) tie at 0.22; 1.44e6 > 802816 -> (4,2).
        ((1600, 900), (1, 12), (4, 2)),
        ((1600, 900), (1, 6), (2, 1)),
        ((10000, 10), (1, 12), (12, 1)),
        ((10, 10000), (1, 12), (1, 12)),
        ((10, 10000), (1, 6), (1, 6)),
        ((640, 480), (1, 1), (1, 1)),
        ((640, 480), (4, 12), (4, 3)),
    ],
)
def test_choose_grid_hand_computed(size, limits, grid):
    assert choose_grid(*size, min_tiles=limits[0], max_tiles=limits[1]) == grid


def test_same_count_tie_follows_internvl_set_order():
    # min=max=4, aspect 2.5: (2,2) and (4,1) both differ by 1.5. InternVL scans its candidate set in the
    # order (4,1), (1,4), (2,2) and keeps the first (area 10 is far below the switch threshold);
    # transformers scans cols ascending, (1,4), (2,2), (4,1), and keeps (2,2). We follow InternVL.
    assert candidate_grids(4, 4) == ((4, 1), (1, 4), (2, 2))
    assert choose_grid(5, 2, min_tiles=4, max_tiles=4) == (4, 1)
    assert got_ocr2.get_optimal_tiled_canvas((2, 5), (448, 448), 4, 4) == (2, 2)


def test_candidate_grids_cover_the_budget_sorted_by_count():
    grids = candidate_grids(1, 12)
    assert len(grids) == len(set(grids)) == sum(1 for c in range(1, 13) for r in range(1, 13) if c * r <= 12)
    counts = [c * r for c, r in grids]
    assert counts == sorted(counts)
    assert set(candidate_grids(3, 4)) == {g for g in grids if 3 <= g[0] * g[1] <= 4}


def test_choose_grid_matches_transformers_over_random_sizes():
    rng = random.Random(1234)
    sizes = [(rng.randint(1, 5000), rng.randint(1, 5000)) for _ in range(1500)]
    # Extreme aspect ratios and exact ties (multiples of every candidate ratio at several scales).
    sizes += [(rng.randint(1, 20), rng.randint(2000, 20000)) for _ in range(100)]
    sizes += [(rng.randint(2000, 20000), rng.randint(1, 20)) for _ in range(100)]
    sizes += [(c * k, r * k) for c in range(1, 13) for r in range(1, 13) for k in (1, 50, 150, 224, 300, 449)]
    sizes += [
        ((c1 * r2 + c2 * r1) * k, 2 * r1 * r2 * k)
        for c1, r1, c2, r2 in [(1, 1, 2, 1), (3, 2, 2, 1)]
        for k in (10, 100, 300)
    ]
    for min_tiles, max_tiles in [(1, 1), (1, 2), (1, 6), (1, 12), (2, 6), (3, 12), (1, 40)]:
        for width, height in sizes:
            ours = choose_grid(width, height, min_tiles=min_tiles, max_tiles=max_tiles)
            ref = got_ocr2.get_optimal_tiled_canvas((height, width), (448, 448), min_tiles, max_tiles)
            assert ours == ref, (width, height, min_tiles, max_tiles)


def test_tie_break_uses_tile_size():
    # 500x500 vs grid (2,2): 250000 > 0.5*336^2*4 = 225792 with 336 tiles, but not with 448 tiles (401408).
    assert choose_grid(500, 500, tile_size=336) == (2, 2)
    assert choose_grid(500, 500, tile_size=448) == (1, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 0, "height": 10}, "image size must be positive, got 0x10"),
        ({"width": 10, "height": 10, "min_tiles": 0}, "min_tiles must be >= 1"),
        ({"width": 10, "height": 10, "min_tiles": 5, "max_tiles": 4}, "max_tiles must be >= min_tiles"),
        ({"width": 10, "height": 10, "tile_size": 0}, "tile_size must be >= 1"),
    ],
)
def test_choose_grid_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        choose_grid(**kwargs)


# --- counts and budgets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_images", "max_tiles", "budget"),
    [(1, 12, 12), (2, 12, 6), (5, 12, 2), (13, 12, 1), (3, 6, 2), (7, 6, 1)],
)
def test_tiles_per_image_shares_the_budget(n_images, max_tiles, budget):
    assert tiles_per_image(n_images, max_tiles) == budget


def test_tiles_per_image_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_images must be >= 1"):
        tiles_per_image(0, 12)
    with pytest.raises(ValueError, match="max_tiles must be >= 1"):
        tiles_per_image(2, 0)


def test_num_tiles_counts_grid_plus_thumbnail():
    assert num_tiles(1600, 900) == 9  # (4,2) + thumbnail
    assert num_tiles(1600, 900, use_thumbnail=False) == 8
    assert num_tiles(448, 448) == 1  # a single tile never gets a thumbnail
    assert num_tiles(1000, 1000, max_tiles=6) == 5  # (2,2) + thumbnail


def test_num_tiles_matches_transformers_count_over_random_sizes():
    rng = random.Random(7)
    for max_tiles in (1, 2, 6, 12):
        processor = _processor(1, max_tiles)
        for _ in range(300):
            width, height = rng.randint(1, 6000), rng.randint(1, 6000)
            expected = processor.get_number_of_image_patches(height, width, {"crop_to_patches": True})
            assert num_tiles(width, height, max_tiles=max_tiles) == expected, (width, height, max_tiles)


def test_multi_image_budget_gives_each_image_its_share():
    images = [_photo(900, 600, seed=i) for i in range(3)]
    budget = tiles_per_image(len(images), 12)
    counts = [tile_image(image, max_tiles=budget).shape[0] for image in images]
    # Budget 12 // 3 = 4. Aspect 1.5: (1,1), (2,1) and (2,2) all differ by 0.5; 540000 exceeds both
    # 0.5*448^2*2 and 0.5*448^2*4 = 401408, so (2,2) wins; plus the thumbnail. Alone it would be (3,2) + 1.
    assert budget == 4
    assert counts == [5, 5, 5]
    assert num_tiles(900, 600, max_tiles=12) == 7
    assert counts == [num_tiles(900, 600, max_tiles=budget)] * 3


# --- pixels ----------------------------------------------------------------------------------------------


def test_tile_image_equals_transformers_pil_processor_over_random_sizes():
    rng = random.Random(99)
    cases = [(rng.randint(16, 1400), rng.randint(16, 1400), rng.choice([2, 6, 12])) for _ in range(18)]
    cases += [(2000, 40, 12), (30, 1500, 6), (1, 1, 12), (897, 448, 12), (1344, 896, 6), (700, 700, 1)]
    for index, (width, height, max_tiles) in enumerate(cases):
        image = _photo(width, height, seed=index)
        ours = tile_image(image, max_tiles=max_tiles)
        ref, n_ref = _reference(image, max_tiles=max_tiles)
        assert ours.shape == ref.shape == (n_ref, 3, 448, 448), (width, height, max_tiles)
        assert ours.dtype == torch.float32
        assert ours.is_contiguous()
        assert (ours - ref).abs().max().item() < 1e-4, (width, height, max_tiles)
        assert ours.shape[0] == num_tiles(width, height, max_tiles=max_tiles)


def test_tile_image_small_tiles_match_transformers():
    image = _photo(333, 120, seed=5)
    ours = tile_image(image, min_tiles=2, max_tiles=9, tile_size=64)
    ref, n_ref = _reference(image, min_tiles=2, max_tiles=9, tile_size=64)
    assert ours.shape == ref.shape == (n_ref, 3, 64, 64)
    assert (ours - ref).abs().max().item() < 1e-4


def test_tiles_are_row_major_then_thumbnail():
    # A 3x2 grid of flat 448-pixel blocks: the resize to (1344, 896) is the identity, so tile k must be
    # exactly block k (left to right, top to bottom) normalised, and the last tile the 448x448 thumbnail.
    values = [10, 60, 110, 160, 210, 250]
    pixels = np.zeros((896, 1344, 3), dtype=np.uint8)
    for k, value in enumerate(values):
        row, col = divmod(k, 3)
        pixels[row * 448 : (row + 1) * 448, col * 448 : (col + 1) * 448] = (value, 255 - value, value // 2)
    image = Image.fromarray(pixels)
    assert choose_grid(1344, 896, max_tiles=6) == (3, 2)

    tiles = tile_image(image, max_tiles=6)
    assert tiles.shape == (7, 3, 448, 448)
    for k, value in enumerate(values):
        rgb = torch.tensor([value, 255 - value, value // 2], dtype=torch.float32).view(3, 1, 1)
        expected = ((rgb / 255 - MEAN) / STD).expand(3, 448, 448)
        assert torch.allclose(tiles[k], expected, atol=1e-5), k
    thumbnail = torch.from_numpy(np.asarray(image.resize((448, 448), Image.Resampling.BICUBIC)).copy())
    expected_thumb = (thumbnail.permute(2, 0, 1).float() / 255 - MEAN) / STD
    assert torch.allclose(tiles[-1], expected_thumb, atol=1e-5)

    no_thumb = tile_image(image, max_tiles=6, use_thumbnail=False)
    assert no_thumb.shape == (6, 3, 448, 448)
    assert torch.equal(no_thumb, tiles[:6])


def test_single_tile_has_no_thumbnail():
    tiles = tile_image(_photo(300, 300, seed=3))
    assert tiles.shape == (1, 3, 448, 448)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "1"])
def test_non_rgb_modes_match_transformers(mode):
    image = _photo(500, 260, seed=11, mode=mode)
    if mode in ("LA", "RGBA"):
        alpha = Image.linear_gradient("L").resize(image.size)
        image.putalpha(alpha)
    ours = tile_image(image, max_tiles=6)
    ref, _ = _reference(image, max_tiles=6)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (448, 448), (0, 0, 0, 0))
    tiles = tile_image(image)
    white = ((1.0 - MEAN) / STD).expand(3, 448, 448)
    assert torch.allclose(tiles[0], white, atol=1e-5)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16).repeat(224, 0).repeat(224, 1)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    tiles = tile_image(image)
    eight_bit = Image.fromarray(
        np.array([[0, 100], [255, 200]], dtype=np.uint8).repeat(224, 0).repeat(224, 1)
    )
    assert torch.equal(tiles, tile_image(eight_bit))
    # PIL's own conversion would have clipped 25700 to 255 (white); ours keeps it at 100.
    grey = torch.full((3, 1, 1), 100 / 255)
    assert torch.allclose(tiles[0, :, 10, 440], ((grey - MEAN) / STD).flatten(), atol=1e-5)

"""Packed training data: several samples in one sequence, each attending only to itself.

The official domain-adaptation recipe trains on packed data: short samples share a sequence up to the
token budget instead of being padded to the longest of a batch. Samples are assigned to packs once, by
best-fit decreasing on their token counts (the budget check measured them), so packs are full and the
same every run; the sampler then shuffles whole packs per epoch, and resume skips packs as it skips
batches. A pack is one row of model input: the samples' tokens and labels concatenated, their tiles
concatenated in the same order, and position ids restarting at 0 for each sample. With those position
ids and no attention mask, transformers builds a block-diagonal causal mask (eager / sdpa) or uses
variable-length flash attention, so no token attends across samples and each sample sees exactly the
positions it would see alone.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from mini_internvl_adapt.data_format.samples import Sample
from mini_internvl_adapt.processing.tiling import num_tiles, tiles_per_image
from mini_internvl_adapt.processing.transform import ProcessedSample, ProcessingConfig


def pack_indices(
    lengths: Sequence[int],
    capacity: int,
    tiles: Sequence[int] | None = None,
    max_tiles: int | None = None,
) -> list[list[int]]:
    """Group sample indices into packs of at most `capacity` tokens (and `max_tiles` tiles), best-fit decreasing.

    Longest samples are placed first, each into the open pack it fills best (the least token room left that still
    fits, among packs whose tile room also fits; the older pack on a tie), else into a new pack. The official
    packed dataset caps a pack the same two ways (``max_packed_tokens``, ``num_images_expected``). Within a pack,
    indices keep ascending order. Without a tile cap, or with one that never binds, the packs are exactly those
    of tokens alone.

    Args:
        lengths: Token count per sample.
        capacity: Tokens per pack (data.max_packed_tokens).
        tiles: Image tiles per sample (needed with `max_tiles`).
        max_tiles: Tiles per pack (data.max_packed_tiles); None: no cap.

    Returns:
        Packs of sample indices, longest pack contents first.

    Raises:
        ValueError: A sample longer than `capacity` or with more tiles than `max_tiles`, or a cap below 1.
    """
    if capacity < 1:
        raise ValueError(f"pack capacity must be >= 1 token, got {capacity}")
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(
            f"{len(too_long)} sample(s) exceed the pack capacity of {capacity} tokens (first: index {too_long[0]})"
        )
    need_tiles = _tile_needs(len(lengths), tiles, max_tiles)
    packs: list[list[int]] = []
    # Open packs by tile room left (0 throughout without a tile cap), each bucket a sorted list of (token room,
    # pack number), so the best fit is one bisect per bucket away.
    rooms: dict[int, list[tuple[int, int]]] = {}
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need, need_tile = lengths[index], need_tiles[index]
        best: tuple[int, int, int, int] | None = None  # (token room, pack, tile room, position in its bucket)
        for tile_room, bucket in rooms.items():
            if tile_room < need_tile:
                continue
            at = bisect.bisect_left(bucket, (need, -1))
            if at < len(bucket):
                candidate = (bucket[at][0], bucket[at][1], tile_room, at)
                best = candidate if best is None or candidate < best else best
        if best is not None:
            room, pack, tile_room, at = best
            rooms[tile_room].pop(at)
        else:
            room, tile_room, pack = capacity, max_tiles or 0, len(packs)
            packs.append([])
        packs[pack].append(index)
        room -= need
        tile_room -= need_tile
        if room > 0:
            bisect.insort(rooms.setdefault(tile_room, []), (room, pack))
    return [sorted(pack) for pack in packs]


def _tile_needs(n: int, tiles: Sequence[int] | None, max_tiles: int | None) -> list[int]:
    """Tiles each sample takes from a pack's tile room (all 0 without a cap); ValueError for a bad cap."""
    if max_tiles is None:
        return [0] * n
    if max_tiles < 1:
        raise ValueError(f"pack tile cap must be >= 1 tile, got {max_tiles}")
    if tiles is None or len(tiles) != n:
        raise ValueError("a pack tile cap needs the tile count of every sample")
    too_many = [i for i, t in enumerate(tiles) if t > max_tiles]
    if too_many:
        raise ValueError(
            f"{len(too_many)} sample(s) exceed the pack cap of {max_tiles} tiles (first: index {too_many[0]})"
        )
    return list(tiles)


def sample_tiles(sample: Sample, root: Path, config: ProcessingConfig) -> int:
    """Image tiles (thumbnails included) a sample trains with, from its image sizes only (no pixel decoding).

    The rule of `SampleProcessor`: a multi-image sample shares ``max_tiles`` (``tiles_per_image``), and when
    ``min_tiles`` is above an image's share every image is one tile.

    Args:
        sample: The sample.
        root: Its dataset root (image headers are read when the sample has no sizes).
        config: The processing settings it trains with (its source's max_dynamic_patch applied).
    """
    if not sample.images:
        return 0
    share = tiles_per_image(len(sample.images), config.max_tiles)
    low, high = (1, 1) if config.min_tiles > share else (config.min_tiles, share)
    if sample.widths and sample.heights and len(sample.widths) == len(sample.images):
        sizes = list(zip(sample.widths, sample.heights))
    else:
        sizes = []
        for rel in sample.images:
            with Image.open(root / rel) as image:  # reads the header only
                sizes.append(image.size)
    return sum(
        num_tiles(
            w,
            h,
            min_tiles=low,
            max_tiles=high,
            use_thumbnail=config.use_thumbnail,
            tile_size=config.tile_size,
        )
        for w, h in sizes
    )


def pack_samples(samples: Sequence[ProcessedSample]) -> ProcessedSample:
    """One packed row from processed samples: tokens, labels and tiles concatenated, positions restarting.

    Raises:
        ValueError: No samples.
    """
    if not samples:
        raise ValueError("a pack needs at least one sample")
    positions = torch.cat([torch.arange(len(s.input_ids), dtype=torch.long) for s in samples])
    tiles = [s.pixel_values for s in samples if s.pixel_values.shape[0] > 0]
    return ProcessedSample(
        id="+".join(s.id for s in samples),
        input_ids=torch.cat([s.input_ids for s in samples]),
        labels=torch.cat([s.labels for s in samples]),
        pixel_values=torch.cat(tiles) if tiles else samples[0].pixel_values,
        num_tiles=[n for s in samples for n in s.num_tiles],
        position_ids=positions,
        members=[s.id for s in samples],
    )


class PackedDataset(Dataset):
    """Packs of an unpacked dataset: item i is pack i as one ProcessedSample row.

    Args:
        samples: The per-sample dataset (each item a ProcessedSample).
        packs: Sample indices per pack (`pack_indices`).
    """

    def __init__(self, samples: Dataset, packs: Sequence[Sequence[int]]) -> None:
        self.samples = samples
        self.packs = [list(p) for p in packs]

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> ProcessedSample:
        return pack_samples([self.samples[i] for i in self.packs[index]])

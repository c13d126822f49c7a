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

import torch
from torch.utils.data import Dataset

from mini_internvl_adapt.processing.transform import ProcessedSample


def pack_indices(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sample indices into packs of at most `capacity` tokens (best-fit decreasing).

    Longest samples are placed first, each into the open pack it fills best (the least room left that
    still fits), else into a new pack. Within a pack, indices keep ascending order.

    Args:
        lengths: Token count per sample.
        capacity: Tokens per pack (the training max_length).

    Returns:
        Packs of sample indices, longest pack contents first.

    Raises:
        ValueError: A sample longer than `capacity`, or a capacity below 1.
    """
    if capacity < 1:
        raise ValueError(f"pack capacity must be >= 1 token, got {capacity}")
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(
            f"{len(too_long)} sample(s) exceed the pack capacity of {capacity} tokens (first: index {too_long[0]})"
        )
    packs: list[list[int]] = []
    # Open packs as (room left, pack number), kept sorted so the best fit is one bisect away.
    rooms: list[tuple[int, int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need = lengths[index]
        at = bisect.bisect_left(rooms, (need, -1))
        if at < len(rooms):
            room, pack = rooms.pop(at)
        else:
            room, pack = capacity, len(packs)
            packs.append([])
        packs[pack].append(index)
        room -= need
        if room > 0:
            bisect.insort(rooms, (room, pack))
    return [sorted(pack) for pack in packs]


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

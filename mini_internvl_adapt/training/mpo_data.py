"""Preference-pair data for MPO under Lightning: pair sources, their token budget, the dataset, the batch and the
DataModule (mid-epoch resume as in `training.data`).

A batch of B pairs is the official concatenated batch (``trainer_dpo.concatenated_inputs``): rows 0..B-1 are
the chosen conversations and rows B..2B-1 the rejected ones, each pair's image tiles given once per row (the
official ``pixel_values.repeat(2, 1, 1, 1)``). Pair files are read and validated up front (file, line and
problem named); images are decoded lazily.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mini_internvl_adapt.data_format.pairs import PairSample, read_pairs
from mini_internvl_adapt.data_format.sources import DatasetSource
from mini_internvl_adapt.errors import DataError, DatasetError
from mini_internvl_adapt.processing.transform import (
    BudgetReport,
    ProcessedSample,
    SampleProcessor,
    check_token_budget,
    collate,
)
from mini_internvl_adapt.training.data import LengthGroupedSampler, ResumableDataModule


@dataclass
class PairEntry:
    """One training pair and the source it came from; `tokens` (chosen + rejected) set by the budget check."""

    pair: PairSample
    source: DatasetSource
    tokens: int | None = None


def expand_pair_sources(sources: Sequence[DatasetSource], check_files: bool = False) -> list[PairEntry]:
    """Read every pair source, applying its repeat_time as the official loader does (see `training.data`).

    Raises:
        DatasetError: A bad line (file, line, problem), or a repeat_time above 1 that is not whole.
    """
    entries: list[PairEntry] = []
    for source in sources:
        repeat = source.repeat_time
        if repeat > 1 and repeat != int(repeat):
            raise DatasetError(
                source.annotation, f"source '{source.name}': repeat_time above 1 must be whole"
            )
        pairs = read_pairs(source.annotation, source.root, check_files=check_files)
        if repeat < 1:
            pairs = pairs[: int(len(pairs) * repeat)]
        elif repeat > 1:
            pairs = pairs * int(repeat)
        entries += [PairEntry(p, source) for p in pairs]
    return entries


def _processor_for(processor: SampleProcessor, source: DatasetSource) -> SampleProcessor:
    """The meta file's max_dynamic_patch of a source replaces the config's tile budget (official build_datasets)."""
    limit = source.max_dynamic_patch
    if limit is None or limit == processor.config.max_tiles:
        return processor
    config = replace(
        processor.config, max_tiles=int(limit), min_tiles=min(processor.config.min_tiles, int(limit))
    )
    return SampleProcessor(processor.tokenizer, config)


def _pair_error(entry: PairEntry, error: Exception) -> DataError:
    text = str(error)
    for suffix in ("/chosen", "/rejected"):
        text = text.replace(f"sample '{entry.pair.id}{suffix}': ", f"{suffix[1:]} answer: ")
    return DataError(f"pair '{entry.pair.id}' in {entry.source.annotation}: {text}")


def pair_budget_check(
    entries: Sequence[PairEntry], processor: SampleProcessor, *, progress: bool = True
) -> tuple[list[PairEntry], BudgetReport]:
    """Count the tokens of both conversations of every pair; drop pairs either of which cannot train.

    Returns:
        The pairs that fit and the report (tokens per pair id: chosen + rejected; dropped ids with reasons).

    Raises:
        DataError: A pair that cannot even be measured (a missing image), naming it and its file.
    """
    report = BudgetReport(processor.config.max_length, {}, [], {})
    kept: list[PairEntry] = []
    seen: dict[str, int] = {}
    cache: dict[int, SampleProcessor] = {}
    for entry in tqdm(entries, desc="token budget (pairs)", unit="pair", disable=not progress):
        proc = cache.setdefault(id(entry.source), _processor_for(processor, entry.source))
        try:
            both = check_token_budget(list(entry.pair.as_samples()), entry.source.root, proc)
        except (ValueError, OSError) as e:
            raise _pair_error(entry, e) from e
        entry.tokens = sum(both.counts.values())
        seen[entry.pair.id] = seen.get(entry.pair.id, 0) + 1
        key = entry.pair.id if seen[entry.pair.id] == 1 else f"{entry.pair.id}#{seen[entry.pair.id]}"
        report.counts[key] = entry.tokens
        if both.too_long:
            report.too_long.append(key)
            report.reasons[key] = "; ".join(both.reasons[i] for i in both.too_long)
        else:
            report.truncated += both.truncated
            kept.append(entry)
    return kept, report


@dataclass
class ProcessedPair:
    """Model inputs of one pair: its position in the dataset, and both conversations."""

    index: int
    id: str
    chosen: ProcessedSample
    rejected: ProcessedSample
    padding: bool = False


class PairDataset(Dataset):
    """Lazily processed pairs; an index past the end is a padding copy (marked, so validation skips it).

    Args:
        entries: The pairs with their sources.
        processor: The sample processor of the model being trained.
    """

    def __init__(self, entries: Sequence[PairEntry], processor: SampleProcessor) -> None:
        self.entries = list(entries)
        self.processor = processor
        self._per_source: dict[int, SampleProcessor] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> ProcessedPair:
        n = len(self.entries)
        real = index - n if index >= n else index
        entry = self.entries[real]
        key = id(entry.source)
        if key not in self._per_source:
            self._per_source[key] = _processor_for(self.processor, entry.source)
        chosen, rejected = entry.pair.as_samples()
        try:
            processed = [self._per_source[key](s, entry.source.root) for s in (chosen, rejected)]
        except (ValueError, OSError) as e:
            raise _pair_error(entry, e) from e
        return ProcessedPair(real, entry.pair.id, processed[0], processed[1], padding=index >= n)


def collate_pairs(batch: Sequence[ProcessedPair], pad_token_id: int) -> dict[str, Any]:
    """The concatenated batch of B pairs: chosen rows first, then rejected (see the module docstring).

    Returns:
        `processing.collate`'s keys over the 2B conversations, with ``ids`` the B pair ids, ``index`` their
        dataset positions, ``padding`` whether each is a padding copy and ``pairs`` = B.
    """
    out = collate([p.chosen for p in batch] + [p.rejected for p in batch], pad_token_id, padding_side="right")
    out["ids"] = [p.id for p in batch]
    out["index"] = torch.tensor([p.index for p in batch], dtype=torch.long)
    out["padding"] = torch.tensor([p.padding for p in batch], dtype=torch.bool)
    out["pairs"] = len(batch)
    return out


class PairDataModule(ResumableDataModule):
    """Train / validation loaders over preference pairs, resumable mid-epoch like `InternVLDataModule`.

    Args:
        train: Training pairs (after `pair_budget_check`).
        val: Validation pairs (may be empty).
        processor: The sample processor.
        batch_size: Pairs per device per micro-batch.
        num_workers: DataLoader worker processes.
        group_by_length: Group pairs of similar length into batches.
        seed: Sampler seed.
        pad_token_id: Padding id for input_ids.
    """

    def __init__(
        self,
        train: Sequence[PairEntry],
        val: Sequence[PairEntry],
        processor: SampleProcessor,
        *,
        batch_size: int = 1,
        num_workers: int = 0,
        group_by_length: bool = True,
        seed: int = 0,
        pad_token_id: int = 0,
    ) -> None:
        super().__init__()
        if not train:
            raise ValueError("no training pairs left (all over the token budget)")
        self.train_set = PairDataset(train, processor)
        self.val_set = PairDataset(val, processor)
        limit = 2 * processor.config.max_length
        self.train_lengths = [min(e.tokens or 0, limit) for e in train]
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.seed = seed
        self.collate = functools.partial(collate_pairs, pad_token_id=pad_token_id)

    def make_sampler(self, world: int, rank: int) -> LengthGroupedSampler:
        """The length-grouped sampler over the pairs."""
        return LengthGroupedSampler(
            self.train_lengths, self.batch_size, num_replicas=world, rank=rank, seed=self.seed,
            group_by_length=self.group_by_length,
        )  # fmt: skip

    def loader(self, dataset: Dataset, sampler: Any) -> DataLoader:
        """A loader of `dataset` in `sampler`'s order, with its own generator (never the global RNG)."""
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
            collate_fn=self.collate, generator=torch.Generator().manual_seed(self.seed),
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, self.train_sampler())

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_set) == 0:
            return []
        world, rank = self._world()
        sampler = LengthGroupedSampler(
            [0] * len(self.val_set), self.batch_size, num_replicas=world, rank=rank, shuffle=False,
            group_by_length=False, mark_padding=True,
        )  # fmt: skip
        return self.loader(self.val_set, sampler)

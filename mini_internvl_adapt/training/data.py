"""Training data under Lightning: datasets from shared-format sources, a length-grouped sampler, the DataModule.

Annotation lines are read up front (cheap, and a bad line fails before training with its file and line);
images are decoded lazily in ``__getitem__`` through the core processing (tiling, tokens, labels), so
a missing or broken image met during training raises a `DataError` naming the sample, its annotation
file and the image. Several sources train together with the official ``repeat_time`` rule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from mini_internvl_adapt.data_format.dataset import EXCLUDED_SPLITS, VAL_SPLITS
from mini_internvl_adapt.data_format.samples import Sample
from mini_internvl_adapt.data_format.sources import DatasetSource, resolve_sources
from mini_internvl_adapt.errors import DataError, DatasetError
from mini_internvl_adapt.processing.packing import PackedDataset, pack_indices
from mini_internvl_adapt.processing.transform import (
    IGNORE_INDEX,
    BudgetReport,
    ProcessedSample,
    SampleProcessor,
    check_token_budget,
    collate,
)


def _sample_error(entry: Entry, error: Exception) -> DataError:
    """One line naming the sample, its annotation file and the problem (without repeating the id)."""
    text = str(error).removeprefix(f"sample '{entry.sample.id}': ")
    cause = error.__cause__
    if isinstance(cause, OSError) and cause.strerror and str(cause) in text:
        text = text.replace(str(cause), cause.strerror)  # the path is already named once
    return DataError(f"sample '{entry.sample.id}' in {entry.source.annotation}: {text}")


@dataclass
class Entry:
    """One training example: a sample and the source it came from."""

    sample: Sample
    source: DatasetSource
    tokens: int | None = None  # set by budget_check: ids may repeat across sources, so counts live here


def split_sources(
    data: str | Path, val: str | Path | None = None
) -> tuple[list[DatasetSource], list[DatasetSource]]:
    """The train and validation sources behind `--data` (folder, official JSONL or official meta JSON).

    A dataset folder trains on ``train.jsonl`` and validates on ``val.jsonl`` when present; a plain JSONL
    trains on all of it; a meta JSON trains on every entry except those marked as val/test splits.

    Args:
        data: A converted dataset folder, an official-format JSONL file or an official meta JSON.
        val: An explicit validation set (same forms); overrides the one found in `data`.

    Raises:
        DatasetError: When nothing trainable is found.
    """
    path = Path(data)
    if path.is_dir():
        train = resolve_sources(path, "train")
        val_sources = resolve_sources(path, "val") if (path / "val.jsonl").is_file() else []
    else:
        train, val_sources = [], []
        for source in resolve_sources(path):
            split = (source.split or "").lower()
            if split in VAL_SPLITS and path.suffix == ".json":
                val_sources.append(source)
            elif split not in EXCLUDED_SPLITS or path.suffix == ".jsonl":
                train.append(source)
        if not train:
            raise DatasetError(path, "no training entry (every entry is a val or test split)")
    if val is not None:
        # A dataset folder given as the validation set means its val.jsonl, never all of its splits.
        val_sources = resolve_sources(val, "val") if Path(val).is_dir() else resolve_sources(val)
    return train, val_sources


def expand_sources(sources: Sequence[DatasetSource], check_files: bool = False) -> list[Entry]:
    """Read every source and apply its repeat_time as the official ``LazySupervisedDataset`` does.

    repeat_time below 1 keeps the first ``int(len * repeat_time)`` samples of the file (the official loader
    slices, it does not sample); above 1 it must be a whole number and the samples repeat that many times.

    Args:
        sources: The sources (from `split_sources` or `resolve_sources`).
        check_files: Also check that every image file exists.

    Raises:
        DatasetError: A bad line, or a repeat_time above 1 that is not a whole number.
    """
    entries: list[Entry] = []
    for source in sources:
        repeat = source.repeat_time
        if repeat > 1 and repeat != int(repeat):
            raise DatasetError(
                source.annotation,
                f"source '{source.name}': repeat_time above 1 must be a whole number of repeats, got {repeat}",
            )
        samples = source.read(check_files=check_files)
        if repeat < 1:
            samples = samples[: int(len(samples) * repeat)]
        elif repeat > 1:
            samples = samples * int(repeat)
        entries += [Entry(s, source) for s in samples]
    return entries


def _processor_for(processor: SampleProcessor, source: DatasetSource) -> SampleProcessor:
    """A processor with a source's max_dynamic_patch from the meta file in place of the config's tile
    budget, above or below it, as the official build_datasets does (`max_num` is replaced)."""
    limit = source.max_dynamic_patch
    if limit is None or limit == processor.config.max_tiles:
        return processor
    config = replace(
        processor.config, max_tiles=int(limit), min_tiles=min(processor.config.min_tiles, int(limit))
    )
    return SampleProcessor(processor.tokenizer, config)


class SampleDataset(Dataset):
    """Lazily processed samples (images decoded and tiled on access).

    Args:
        entries: The samples with their sources.
        processor: The sample processor of the model being trained.
    """

    def __init__(self, entries: Sequence[Entry], processor: SampleProcessor) -> None:
        self.entries = list(entries)
        self.processor = processor
        self._per_source: dict[int, SampleProcessor] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def processor_of(self, entry: Entry) -> SampleProcessor:
        key = id(entry.source)
        if key not in self._per_source:
            self._per_source[key] = _processor_for(self.processor, entry.source)
        return self._per_source[key]

    def __getitem__(self, index: int) -> ProcessedSample:
        entry = self.entries[index]
        try:
            return self.processor_of(entry)(entry.sample, entry.source.root)
        except (ValueError, OSError) as e:
            raise _sample_error(entry, e) from e


def budget_check(
    entries: Sequence[Entry], processor: SampleProcessor, *, progress: bool = True
) -> tuple[list[Entry], BudgetReport]:
    """Count tokens of every sample before training; drop those that cannot train at max_length.

    Returns:
        The entries that fit, and the report (counts per sample id, the dropped ones with reasons).

    Raises:
        DataError: When a sample cannot even be measured (e.g. its image is missing), naming it and its file.
    """
    report = BudgetReport(processor.config.max_length, {}, [], {})
    kept: list[Entry] = []
    owners: dict[str, str] = {}
    seen: dict[str, int] = {}
    dataset = SampleDataset([], processor)
    for entry in tqdm(entries, desc="token budget", unit="sample", disable=not progress):
        try:
            one = check_token_budget([entry.sample], entry.source.root, dataset.processor_of(entry))
        except (ValueError, OSError) as e:
            raise _sample_error(entry, e) from e
        entry.tokens = one.counts[entry.sample.id]
        # token_budget.json keys counts by id; an id another source already used gets its source's name,
        # an id repeated within a source (repeat_time, or a file reusing ids) its occurrence number.
        key = entry.sample.id
        if owners.setdefault(key, entry.source.name) != entry.source.name:
            key = f"{entry.source.name}/{key}"
        seen[key] = seen.get(key, 0) + 1
        report.counts[key if seen[key] == 1 else f"{key}#{seen[key]}"] = entry.tokens
        if one.too_long:
            report.too_long += one.too_long
            report.reasons.update(one.reasons)
        else:
            report.truncated += one.truncated
            kept.append(entry)
    return kept, report


class LengthGroupedSampler(Sampler[int]):
    """Shuffles, groups similar lengths into the same batch, and shards across ranks (DDP).

    Like the official ``group_by_length``: a seeded permutation is cut into mega-batches of
    ``50 x batch_size x num_replicas`` samples, each sorted by length (longest first), so a global
    batch holds samples of similar length and little padding. Every rank takes its own slice of each
    global batch, so ranks see different samples; the index list is padded by wrapping around so all
    ranks run the same number of steps. `skip_batches` resumes mid-epoch exactly where a run stopped.

    Args:
        lengths: Token count per dataset index.
        batch_size: Per-rank batch size.
        num_replicas: World size.
        rank: This process's global rank.
        seed: Base seed; the epoch is added so every epoch has a new order.
        shuffle: Shuffle at all (False: dataset order, for validation).
        group_by_length: Sort mega-batches by length.
        mark_padding: Yield the padding copies as index + len(lengths), for a `MaskedPadding` dataset
            (validation: every sample counts once in the loss).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        group_by_length: bool = True,
        mark_padding: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside world size {num_replicas}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.mark_padding = mark_padding
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    def skip_batches(self, epoch: int, n_batches: int) -> None:
        """Resume: the next iteration over `epoch` starts after its first `n_batches` batches."""
        self.epoch = epoch
        self._skip = n_batches

    def batches_per_epoch(self) -> int:
        per_step = self.batch_size * self.num_replicas
        return math.ceil(len(self.lengths) / per_step) if self.lengths else 0

    def _global_order(self) -> list[int]:
        n = len(self.lengths)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        if self.group_by_length:
            mega = 50 * self.batch_size * self.num_replicas
            grouped: list[int] = []
            for start in range(0, n, mega):
                chunk = order[start : start + mega]
                grouped += sorted(chunk, key=lambda i: -self.lengths[i])
            order = grouped
        total = self.batches_per_epoch() * self.batch_size * self.num_replicas
        # Padding copies repeat the first indices; marked ones come as index + n (see MaskedPadding).
        offset = n if self.mark_padding else 0
        padding: list[int] = []
        while order and len(order) + len(padding) < total:
            padding += [i + offset for i in order[: total - len(order) - len(padding)]]
        return order + padding

    def __iter__(self) -> Iterator[int]:
        order = self._global_order()
        per_step = self.batch_size * self.num_replicas
        skip, self._skip = self._skip, 0
        for step, start in enumerate(range(0, len(order), per_step)):
            if step < skip:
                continue
            mine = order[start + self.rank * self.batch_size : start + (self.rank + 1) * self.batch_size]
            yield from mine

    def __len__(self) -> int:
        # The whole epoch even while skipping: on resume Lightning restores its own batch counter to the
        # skipped batches and ends the epoch when that counter reaches len(loader); a shortened length
        # would end the resumed epoch early (and shrink an epoch-based cosine schedule).
        return self.batches_per_epoch() * self.batch_size


class MaskedPadding(Dataset):
    """A dataset whose indices past its end are padding copies with every label ignored.

    Samplers pad the last batch (and, under DDP, even out the ranks) by repeating samples; for
    validation those copies must not count twice, so they come with no trained token.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> ProcessedSample:
        n = len(self)
        if index < n:
            return self.base[index]
        item = self.base[index - n]
        return replace(item, labels=torch.full_like(item.labels, IGNORE_INDEX))


class InternVLDataModule(pl.LightningDataModule):
    """Train/val dataloaders over shared-format sources, with resumable mid-epoch position.

    Args:
        train: Training entries (after `budget_check`).
        val: Validation entries (may be empty).
        processor: The sample processor.
        lengths: Token count per training sample id (from the budget report), for entries that
            `budget_check` did not measure (their own `tokens` wins: ids may repeat across sources).
        batch_size: Per-device batch size.
        num_workers: DataLoader worker processes.
        group_by_length: Group similar lengths into batches.
        seed: Sampler seed.
        pad_token_id: Padding id for input_ids.
        packing: Train on packs of samples up to the processor's max_length tokens (packing.py); a
            batch is then `batch_size` packs. Validation stays unpacked.
    """

    def __init__(
        self,
        train: Sequence[Entry],
        val: Sequence[Entry],
        processor: SampleProcessor,
        lengths: dict[str, int],
        *,
        batch_size: int = 1,
        num_workers: int = 0,
        group_by_length: bool = True,
        seed: int = 0,
        pad_token_id: int = 0,
        packing: bool = False,
    ) -> None:
        super().__init__()
        if not train:
            raise ValueError("no training samples left (all missing or over the token budget)")
        samples = SampleDataset(train, processor)
        self.val_set = SampleDataset(val, processor)
        # Samples over max_length that the budget check kept train truncated to it.
        sample_lengths = [
            min(
                e.tokens if e.tokens is not None else lengths.get(e.sample.id, 0), processor.config.max_length
            )
            for e in train
        ]
        self.train_set: Dataset = samples
        self.train_lengths = sample_lengths
        if packing:
            packs = pack_indices(sample_lengths, processor.config.max_length)
            self.train_set = PackedDataset(samples, packs)
            self.train_lengths = [sum(sample_lengths[i] for i in pack) for pack in packs]
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.seed = seed
        self.pad_token_id = pad_token_id
        self._collate = functools.partial(collate, pad_token_id=pad_token_id, padding_side="right")
        self._sampler: LengthGroupedSampler | None = None
        self._position = {"epoch": 0, "batches": 0}
        self._resume: dict[str, int] | None = None

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_sampler(self) -> LengthGroupedSampler:
        """The training sampler (built on first use, with the trainer's world size and rank)."""
        if self._sampler is None:
            world, rank = self._world()
            self._sampler = LengthGroupedSampler(
                self.train_lengths,
                self.batch_size,
                num_replicas=world,
                rank=rank,
                seed=self.seed,
                group_by_length=self.group_by_length,
            )
            if self._resume is not None:
                self._sampler.skip_batches(self._resume["epoch"], self._resume["batches"])
                self._position = dict(self._resume)
        return self._sampler

    def _loader(self, dataset: Dataset, sampler: Sampler[int]) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self._collate,
            persistent_workers=False,
            # Its own generator, so iterating a loader never draws from the global RNG (exact resume).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.train_sampler())

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_set) == 0:
            return []
        world, rank = self._world()
        lengths = [0] * len(self.val_set)
        sampler = LengthGroupedSampler(
            lengths,
            self.batch_size,
            num_replicas=world,
            rank=rank,
            shuffle=False,
            group_by_length=False,
            mark_padding=True,
        )
        return self._loader(MaskedPadding(self.val_set), sampler)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Count batches the training loop really consumed (workers prefetch ahead of it).
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training:
            epoch = trainer.current_epoch
            if epoch != self._position["epoch"]:
                self._position = {"epoch": epoch, "batches": 0}
            self._position["batches"] += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The position in the current epoch, saved in every checkpoint."""
        return dict(self._position)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from a checkpoint: the next epoch iteration skips the batches already trained."""
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
        if self._sampler is not None:
            self._sampler.skip_batches(self._resume["epoch"], self._resume["batches"])
            self._position = dict(self._resume)

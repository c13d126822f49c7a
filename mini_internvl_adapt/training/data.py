"""Training data under Lightning: datasets from shared-format sources, a length-grouped sampler, the DataModule.

Annotation lines are read up front (cheap, and a bad line fails before training with its file and line);
images are decoded lazily in ``__getitem__`` through the core processing (tiling, tokens, labels), so
a missing or broken image met during training raises a `DataError` naming the sample, its annotation
file and the image. Several sources train together with the official ``repeat_time`` rule.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from mini_internvl_adapt.data_format.dataset import EXCLUDED_SPLITS, VAL_SPLITS
from mini_internvl_adapt.data_format.limits import image_size, length_problem, too_large
from mini_internvl_adapt.data_format.samples import Sample, resolve_image
from mini_internvl_adapt.data_format.sources import DatasetSource, resolve_sources
from mini_internvl_adapt.errors import ConfigError, DataError, DatasetError
from mini_internvl_adapt.processing.packing import PackedDataset, pack_indices, pack_samples, sample_tiles
from mini_internvl_adapt.processing.tiling import jpeg_reencode
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


# The official augmentation draws each tile's JPEG quality uniformly from 75..100 (dataset.py `qualities`).
JPEG_QUALITIES = (75, 100)


@dataclass(frozen=True)
class JpegAugment:
    """The official random JPEG re-encoding of training tiles, seeded so every run (and resume) draws the same.

    A sample's tiles are re-encoded when its source's meta entry says ``data_augment: true``, or for every
    training source with `every_source` (``data.augment_jpeg``). Each tile gets its own quality, drawn from a
    generator seeded by (seed, epoch, dataset index): the same sample differs between epochs, never between
    a run and its resumed copy.

    Attributes:
        seed: The run's seed.
        every_source: Augment every source, whatever its meta entry says.
    """

    seed: int = 0
    every_source: bool = False

    def applies(self, entry: Entry) -> bool:
        """Whether `entry`'s tiles are re-encoded."""
        return self.every_source or entry.source.data_augment

    def qualities(self, epoch: int, index: int, n_tiles: int) -> list[int]:
        """The JPEG quality of each of the `n_tiles` tiles of dataset item `index` in `epoch`."""
        generator = np.random.default_rng([self.seed % 2**32, epoch, index, 0x4A504547])  # "JPEG"
        low, high = JPEG_QUALITIES
        return [int(q) for q in generator.integers(low, high + 1, size=n_tiles)]


class SampleDataset(Dataset):
    """Lazily processed samples (images decoded and tiled on access).

    Args:
        entries: The samples with their sources.
        processor: The sample processor of the model being trained.
        augment: The JPEG augmentation of a training set (None: never, as for validation). Its epoch comes
            from `clock` (the training sampler, set by the data module) or is passed to `get`.
    """

    def __init__(
        self, entries: Sequence[Entry], processor: SampleProcessor, augment: JpegAugment | None = None
    ) -> None:
        self.entries = list(entries)
        self.processor = processor
        self.augment = augment
        self.clock: Any = None  # anything with an `epoch` attribute: the sampler feeding this dataset
        self._per_source: dict[int, SampleProcessor] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def processor_of(self, entry: Entry) -> SampleProcessor:
        key = id(entry.source)
        if key not in self._per_source:
            self._per_source[key] = _processor_for(self.processor, entry.source)
        return self._per_source[key]

    def __getitem__(self, index: int) -> ProcessedSample:
        return self.get(index, self.clock.epoch if self.clock is not None else 0)

    def get(self, index: int, epoch: int) -> ProcessedSample:
        """Item `index` as trained in `epoch` (which only the JPEG augmentation depends on)."""
        entry = self.entries[index]
        try:
            item = self.processor_of(entry)(entry.sample, entry.source.root)
        except (ValueError, OSError) as e:
            raise _sample_error(entry, e) from e
        except Image.DecompressionBombError as e:  # a sample whose sizes in the JSONL spared budget_check
            raise _sample_error(entry, _image_too_large(entry, e)) from e
        if self.augment is not None and self.augment.applies(entry) and item.pixel_values.shape[0]:
            qualities = self.augment.qualities(epoch, index, item.pixel_values.shape[0])
            item = replace(item, pixel_values=jpeg_reencode(item.pixel_values, qualities))
        return item


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
            one = _measure(entry, dataset.processor_of(entry))
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


def _measure(entry: Entry, processor: SampleProcessor) -> BudgetReport:
    """One entry's token budget: its lengths checked first (no tokenizer for text far over the budget),
    its image paths kept inside the dataset root, its images' headers within Pillow's pixel limit."""
    sample, config = entry.sample, processor.config
    problem = length_problem(sample, config.max_length, config.num_image_token + 2)
    if problem is not None:
        reason = f"sample '{sample.id}': {problem.reason}"
        return BudgetReport(config.max_length, {sample.id: problem.tokens}, [sample.id], {sample.id: reason})
    for path in sample.images:
        resolve_image(entry.source.root, path)
    try:
        return check_token_budget([sample], entry.source.root, processor)
    except Image.DecompressionBombError as e:
        raise _image_too_large(entry, e) from e


def _image_too_large(entry: Entry, error: Exception) -> ValueError:
    """The error naming which image of `entry` Pillow refused as too large (its own error does not say)."""
    for path in entry.sample.images:
        try:
            image_size(entry.source.root / path)
        except ValueError as e:  # ImageTooLargeError
            return e
        except OSError:
            continue
    return too_large(f"of sample '{entry.sample.id}'", error)


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


def general_per_round(n_domain: int, ratio: float) -> int:
    """General samples to draw beside `n_domain` domain samples so they are `ratio` of all trained samples.

    Args:
        n_domain: Domain samples per epoch.
        ratio: Share of general samples among all (0 <= ratio < 1; 0.2 is the paper's 1:4).

    Returns:
        ``round(n_domain * ratio / (1 - ratio))``.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"general_ratio must be at least 0 and below 1, got {ratio}")
    return round(n_domain * ratio / (1 - ratio))


@dataclass
class MixRound:
    """One round of a general mix (an epoch's worth): its items and their token counts.

    Attributes:
        items: Each item's sample indices in the mixed dataset (domain entry i is i, general pool entry j
            is n_domain + j): one index, or a pack's members.
        lengths: Tokens per item.
        general: The pool indices drawn for this round, in draw order.
    """

    items: list[tuple[int, ...]]
    lengths: list[int]
    general: list[int]


class GeneralMix:
    """Every domain sample plus a fresh, seeded draw of general samples in every round.

    Round r draws `per_round` general samples by walking seeded permutations of the pool (seed, r): without
    repeats while the pool lasts, then a new permutation. General samples are measured against max_length
    only when first drawn (a general meta may list millions); one that cannot train is passed over and
    counted in `too_long`. With packing, each round's samples are packed anew (best-fit decreasing).

    Args:
        domain_lengths: Tokens per domain entry (already budget-checked).
        pool: Every general entry (repeat_time applied), not yet measured.
        ratio: Share of general samples among all trained samples.
        seed: The run's seed.
        processor: Measures general samples (and gives max_length, the pack capacity).
        packing: Pack each round's samples.
        pack: Packs a round's items (mixed-dataset indices and lengths) under the pack caps (`Packer`);
            None: by tokens alone, up to max_length.
    """

    def __init__(
        self,
        domain_lengths: Sequence[int],
        pool: Sequence[Entry],
        ratio: float,
        seed: int,
        processor: SampleProcessor,
        *,
        packing: bool = False,
        pack: Packer | None = None,
    ) -> None:
        self.pack = pack
        self.domain_lengths = list(domain_lengths)
        self.pool = list(pool)
        self.ratio = ratio
        self.seed = seed
        self.processor = processor
        self.packing = packing
        self.per_round = general_per_round(len(self.domain_lengths), ratio)
        self.too_long: set[int] = set()
        self._tokens: dict[int, int] = {}
        self._rounds: dict[int, MixRound] = {}

    def tokens(self, j: int) -> int | None:
        """Tokens pool entry `j` trains with (capped at max_length), or None when it cannot train."""
        if j in self.too_long:
            return None
        if j not in self._tokens:
            kept, _ = budget_check([self.pool[j]], self.processor, progress=False)
            if not kept:
                self.too_long.add(j)
                return None
            self._tokens[j] = min(int(self.pool[j].tokens or 0), self.processor.config.max_length)
        return self._tokens[j]

    def draw(self, round_: int) -> list[int]:
        """The pool indices round `round_` trains (seeded by the run's seed and the round)."""
        taken: list[int] = []
        generator = np.random.default_rng([self.seed % 2**32, round_, 0x4D4958])  # "MIX"
        while len(taken) < self.per_round:
            before = len(taken)
            for j in generator.permutation(len(self.pool)).tolist():
                if self.tokens(j) is not None:
                    taken.append(j)
                    if len(taken) == self.per_round:
                        break
            if len(taken) == before:
                raise DatasetError(
                    self.pool[0].source.annotation if self.pool else Path("."),
                    f"no general sample fits max_length {self.processor.config.max_length}",
                )
        return taken

    def size(self, round_: int) -> int:
        """Items in round `round_` (without drawing it when unpacked: always domain + per_round)."""
        if not self.packing:
            return len(self.domain_lengths) + self.per_round
        return len(self.round(round_).items)

    def round(self, round_: int) -> MixRound:
        """Round `round_`'s items (cached: rounds are visited in order)."""
        if round_ not in self._rounds:
            general = self.draw(round_)
            n = len(self.domain_lengths)
            indices = list(range(n)) + [n + j for j in general]
            lengths = self.domain_lengths + [self._tokens[j] for j in general]
            if self.packing:
                packs = (
                    self.pack(indices, lengths)
                    if self.pack is not None
                    else pack_indices(lengths, self.processor.config.max_length)
                )
                items = [tuple(indices[i] for i in pack) for pack in packs]
                lengths = [sum(lengths[i] for i in pack) for pack in packs]
            else:
                items = [(i,) for i in indices]
            while len(self._rounds) >= 3:
                self._rounds.pop(min(self._rounds))
            self._rounds[round_] = MixRound(items, lengths, general)
        return self._rounds[round_]


class MixedDataset(Dataset):
    """The training set of a general mix: keys are (round, sample index, ...) from a `MixSampler`.

    Args:
        samples: Domain entries then the general pool, as one dataset (indices as in `MixRound.items`).
        packed: Items are packs (built with `pack_samples`, even of one sample).
    """

    def __init__(self, samples: SampleDataset, packed: bool) -> None:
        self.samples = samples
        self.packed = packed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, ...]) -> ProcessedSample:  # type: ignore[override]
        round_, *members = key
        items = [self.samples.get(i, round_) for i in members]
        return pack_samples(items) if self.packed else items[0]


class MixSampler(Sampler[tuple[int, ...]]):
    """The rounds of a `GeneralMix` as one stream of steps, cut into epochs of a fixed number of steps.

    Each round is shuffled and grouped by length like `LengthGroupedSampler` (seed + round) and padded to
    whole global steps; rounds follow each other in one stream, and epoch e is the stream's steps
    ``[e * L, (e + 1) * L)`` with L the steps of round 0. Unpacked, every round has L steps, so a round
    is an epoch; packed, rounds differ by a few packs and epochs drift across them without losing or
    repeating a step. Lightning needs the same length every epoch, and resume needs a position: both are
    the step index in the stream. Yields (round, sample indices...) for `MixedDataset`.

    Args:
        mix: The general mix.
        batch_size: Per-rank batch size.
        num_replicas: World size.
        rank: This process's rank.
        seed: Base seed of the order.
        group_by_length: Sort mega-batches by length.
    """

    def __init__(
        self,
        mix: GeneralMix,
        batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        group_by_length: bool = True,
    ) -> None:
        self.mix = mix
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0
        self._skip = 0
        self._orders: dict[int, list[int]] = {}
        self._starts = [0]  # stream step where round r starts, for the rounds visited so far
        self.steps_per_epoch = self.round_steps(0)

    def round_steps(self, round_: int) -> int:
        """Global steps of round `round_` (its items padded to whole steps of every rank)."""
        return math.ceil(self.mix.size(round_) / (self.batch_size * self.num_replicas))

    def _order(self, round_: int) -> list[int]:
        if round_ not in self._orders:
            sampler = LengthGroupedSampler(
                self.mix.round(round_).lengths,
                self.batch_size,
                num_replicas=self.num_replicas,
                seed=self.seed,
                group_by_length=self.group_by_length,
            )
            sampler.epoch = round_
            while len(self._orders) >= 3:
                self._orders.pop(min(self._orders))
            self._orders[round_] = sampler._global_order()
        return self._orders[round_]

    def locate(self, step: int) -> tuple[int, int]:
        """(round, step within it) of stream step `step`."""
        while self._starts[-1] <= step:
            self._starts.append(self._starts[-1] + self.round_steps(len(self._starts) - 1))
        round_ = bisect.bisect_right(self._starts, step) - 1
        return round_, step - self._starts[round_]

    def step_items(self, step: int, rank: int | None = None) -> Iterator[tuple[int, ...]]:
        """Keys (round, sample indices...) of stream step `step`: one rank's, or every rank's (None)."""
        round_, within = self.locate(step)
        order, items = self._order(round_), self.mix.round(round_).items
        start = within * self.batch_size * self.num_replicas
        if rank is None:
            chosen = order[start : start + self.batch_size * self.num_replicas]
        else:
            chosen = order[start + rank * self.batch_size : start + (rank + 1) * self.batch_size]
        for i in chosen:
            yield (round_, *items[i])

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
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        skip, self._skip = self._skip, 0
        first = self.epoch * self.steps_per_epoch
        for step in range(first + skip, first + self.steps_per_epoch):
            yield from self.step_items(step, self.rank)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def trained(self, epoch: int, batches: int) -> Iterator[tuple[int, ...]]:
        """Keys every rank trained before position (epoch, batches): the stream's first steps."""
        for step in range(epoch * self.steps_per_epoch + batches):
            yield from self.step_items(step)


class Packer:
    """Packs training items under the pack caps: `capacity` tokens and at most `max_tiles` image tiles.

    Items are indices into `entries`; their tile counts are measured from image sizes on first use (only with a
    tile cap), each with its source's tile budget.

    Args:
        entries: Every entry an item index may name (domain entries, then any general pool).
        processor: The sample processor (per-source tile budgets are derived from it).
        capacity: Tokens per pack (data.max_packed_tokens, default data.max_length).
        max_tiles: Tiles per pack (data.max_packed_tiles); None: no cap.
    """

    def __init__(
        self,
        entries: Sequence[Entry],
        processor: SampleProcessor,
        capacity: int,
        max_tiles: int | None = None,
    ) -> None:
        self.measure = SampleDataset(entries, processor)  # only its per-source processors are used
        self.capacity = capacity
        self.max_tiles = max_tiles
        self._tiles: dict[int, int] = {}

    def tiles(self, index: int) -> int:
        """Image tiles item `index` trains with; ConfigError when they exceed the tile cap."""
        if index not in self._tiles:
            entry = self.measure.entries[index]
            config = self.measure.processor_of(entry).config
            try:
                self._tiles[index] = sample_tiles(entry.sample, entry.source.root, config)
            except OSError as e:
                raise _sample_error(entry, e) from e
            if self.max_tiles is not None and self._tiles[index] > self.max_tiles:
                raise ConfigError(
                    f"sample '{entry.sample.id}' in {entry.source.annotation} has {self._tiles[index]} image tiles, "
                    f"more than data.max_packed_tiles={self.max_tiles}: raise it or lower data.max_tiles"
                )
        return self._tiles[index]

    def __call__(self, indices: Sequence[int], lengths: Sequence[int]) -> list[list[int]]:
        """Packs of positions into `indices` / `lengths` (best-fit decreasing, `pack_indices`)."""
        tiles = [self.tiles(i) for i in indices] if self.max_tiles is not None else None
        return pack_indices(lengths, self.capacity, tiles, self.max_tiles)


class ResumableDataModule(pl.LightningDataModule):
    """A datamodule whose position within the training epoch is saved in every checkpoint and restored on resume.

    Subclasses build their training sampler in `make_sampler`; it must offer ``skip_batches(epoch, batches)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sampler: Any = None
        self._position = {"epoch": 0, "batches": 0}
        self._resume: dict[str, int] | None = None

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def make_sampler(self, world: int, rank: int) -> Any:
        """The training sampler for `world` replicas, this one being `rank`."""
        raise NotImplementedError

    def train_sampler(self) -> Any:
        """The training sampler (built on first use, with the trainer's world size and rank)."""
        if self._sampler is None:
            self._sampler = self.make_sampler(*self._world())
            if self._resume is not None:
                self._sampler.skip_batches(self._resume["epoch"], self._resume["batches"])
                self._position = dict(self._resume)
        return self._sampler

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Count the batches the training loop really consumed (workers prefetch ahead of it).
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


class InternVLDataModule(ResumableDataModule):
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
        max_packed_tokens: Tokens per pack (None: the processor's max_length).
        max_packed_tiles: Image tiles per pack (None: no cap).
        general: General entries (repeat_time applied, not budget-checked) to mix in (`GeneralMix`).
        general_ratio: Share of general samples among all trained samples (0: no mix).
        augment_jpeg: JPEG-augment every training source, not only meta entries with data_augment.
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
        general: Sequence[Entry] = (),
        general_ratio: float = 0.0,
        augment_jpeg: bool = False,
        max_packed_tokens: int | None = None,
        max_packed_tiles: int | None = None,
    ) -> None:
        super().__init__()
        if not train:
            raise ValueError("no training samples left (all missing or over the token budget)")
        augment = JpegAugment(seed, every_source=augment_jpeg)
        samples = SampleDataset(train, processor, augment)
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
        self.packer = Packer(
            [*train, *general], processor, max_packed_tokens or processor.config.max_length, max_packed_tiles
        )
        if packing:
            packs = self.packer(range(len(sample_lengths)), sample_lengths)
            self.train_set = PackedDataset(samples, packs)
            self.train_lengths = [sum(sample_lengths[i] for i in pack) for pack in packs]
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.seed = seed
        self.pad_token_id = pad_token_id
        self._collate = functools.partial(collate, pad_token_id=pad_token_id, padding_side="right")
        self.train_entries, self.general_entries = list(train), list(general)
        self.train_samples = samples
        self.mix: GeneralMix | None = None
        if self.general_entries and general_ratio > 0:
            self.mix = GeneralMix(
                sample_lengths,
                self.general_entries,
                general_ratio,
                seed,
                processor,
                packing=packing,
                pack=self.packer,
            )
            self.train_samples = SampleDataset([*train, *self.general_entries], processor, augment)
            self.train_set = MixedDataset(self.train_samples, packed=packing)
            self.train_lengths = self.mix.round(0).lengths

    def make_sampler(self, world: int, rank: int) -> LengthGroupedSampler | MixSampler:
        """The mix's sampler with a general mix, else the length-grouped one over the training samples (packs)."""
        if self.mix is not None:
            return MixSampler(
                self.mix,
                self.batch_size,
                num_replicas=world,
                rank=rank,
                seed=self.seed,
                group_by_length=self.group_by_length,
            )
        sampler = LengthGroupedSampler(
            self.train_lengths,
            self.batch_size,
            num_replicas=world,
            rank=rank,
            seed=self.seed,
            group_by_length=self.group_by_length,
        )
        self.train_samples.clock = sampler  # the epoch of the JPEG augmentation
        return sampler

    def _loader(self, dataset: Dataset, sampler: Sampler[Any]) -> DataLoader:
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

    def trained_samples(self) -> Iterator[int]:
        """The sample index of everything trained so far, over all ranks, once per time it was trained.

        Domain entry i is i, general pool entry j is ``len(train_entries) + j``. Replayed from the sampler's
        seeded order up to the position the checkpoints carry, so a resumed run counts its earlier sessions
        too; padding copies that even out the last step of an epoch count, as they are trained.
        """
        sampler = self.train_sampler()
        epoch, batches = self._position["epoch"], self._position["batches"]
        if isinstance(sampler, MixSampler):
            for key in sampler.trained(epoch, batches):
                yield from key[1:]
            return
        packs = self.train_set.packs if isinstance(self.train_set, PackedDataset) else None
        replay = LengthGroupedSampler(
            self.train_lengths,
            sampler.batch_size,
            num_replicas=sampler.num_replicas,
            seed=sampler.seed,
            group_by_length=sampler.group_by_length,
        )
        for e in range(epoch + 1):
            replay.epoch = e
            order = replay._global_order()
            if e == epoch:
                order = order[: batches * sampler.batch_size * sampler.num_replicas]
            for i in order:
                yield from packs[i] if packs is not None else (i,)

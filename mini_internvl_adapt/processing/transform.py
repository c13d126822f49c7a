"""The model transform: a shared-format Sample -> token ids, labels and pixel tiles.

Each ``<image>`` becomes ``<img>`` + ``<IMG_CONTEXT>`` x (num_image_token x tiles) + ``</img>``, the
variant's chat template wraps the conversation, and labels keep only the assistant replies (with the
separator that ends them). This module knows the model family, never a domain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mini_internvl_adapt.data_format.samples import IMAGE_PLACEHOLDER, Sample, Turn
from mini_internvl_adapt.errors import SampleTooLongError
from mini_internvl_adapt.models.templates import IMG_CONTEXT, IMG_END, IMG_START, ChatTemplate, get_template
from mini_internvl_adapt.models.tokenizer import slow_prompt_prefix_ids
from mini_internvl_adapt.processing.tiling import num_tiles, tile_image, tiles_per_image

IGNORE_INDEX = -100


@dataclass
class ProcessingConfig:
    """How samples become model inputs; saved with every run so inference matches training."""

    template: str = "Hermes-2"
    system_message: str | None = None
    max_tiles: int = 6
    min_tiles: int = 1
    tile_size: int = 448
    use_thumbnail: bool = True
    num_image_token: int = 256
    max_length: int = 4096

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessingConfig:
        """From a saved dict: unknown keys ignored, missing or None keys at their defaults.

        A None system message means the template's default, which is its default anyway.
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names and v is not None})

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any] | Any, **overrides: Any) -> ProcessingConfig:
        """The processing a checkpoint's ModelInfo (or its JSON form) describes, with `overrides` on top.

        Args:
            info: A ModelInfo, or the dict of its fields (a sidecar file).
            **overrides: Fields to set instead (None values keep the ModelInfo's / default value).
        """
        get = info.get if isinstance(info, Mapping) else lambda key: getattr(info, key, None)
        data = {ours: get(theirs) for ours, theirs in _MODEL_INFO_FIELDS.items()}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_json(data)

    def model_info_fields(self) -> dict[str, Any]:
        """The ModelInfo fields this processing sets (template and tile geometry), by ModelInfo's names."""
        return {theirs: getattr(self, ours) for ours, theirs in _MODEL_INFO_FIELDS.items()}


# ProcessingConfig field -> ModelInfo field: the one place the two vocabularies meet.
_MODEL_INFO_FIELDS = {
    "template": "template",
    "tile_size": "image_size",
    "num_image_token": "num_image_token",
    "min_tiles": "min_dynamic_patch",
    "max_tiles": "max_dynamic_patch",
    "use_thumbnail": "use_thumbnail",
}


@dataclass
class ProcessedSample:
    """Model inputs for one sample (unbatched)."""

    id: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    num_tiles: list[int] = field(default_factory=list)
    # A pack of several samples (packing.py): positions restart per sample; members are their ids.
    position_ids: torch.Tensor | None = None
    members: list[str] = field(default_factory=list)


class SampleProcessor:
    """Turns samples into token ids, labels and tiles for one tokenizer and template.

    Args:
        tokenizer: A tokenizer holding the InternVL special tokens (``<img>``, ``</img>``, ``<IMG_CONTEXT>``).
        config: Template, tile and length settings.
    """

    def __init__(self, tokenizer: Any, config: ProcessingConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.template: ChatTemplate = get_template(config.template)
        if not getattr(tokenizer, "is_fast", False):
            # Labels come from character offsets, which only tokenizers-backed ("fast") tokenizers give.
            raise ValueError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; load it with use_fast=True"
            )
        ids = tokenizer.convert_tokens_to_ids([IMG_START, IMG_END, IMG_CONTEXT])
        unk = getattr(tokenizer, "unk_token_id", None)
        if any(i is None or (unk is not None and i == unk) for i in ids):
            raise ValueError("the tokenizer lacks the InternVL image tokens <img>, </img>, <IMG_CONTEXT>")
        self.img_start_id, self.img_end_id, self.img_context_id = ids
        # Real InternLM2 / Phi-3 tokenizers prepend BOS to every text; mirror what the tokenizer itself does.
        probe = tokenizer("a")["input_ids"]
        bos = getattr(tokenizer, "bos_token_id", None)
        self.bos_id: int | None = bos if bos is not None and probe and probe[0] == bos else None

    # -- public API -------------------------------------------------------------------------------

    def __call__(self, sample: Sample, root: Path) -> ProcessedSample:
        """Training inputs for the whole conversation; raises SampleTooLongError (see class)."""
        pixel_values, tiles = self._load_tiles(sample, root)
        input_ids, labels = self._tokenize(sample.conversations, tiles)
        input_ids, labels = self._truncate(sample.id, input_ids, labels)
        return ProcessedSample(sample.id, torch.tensor(input_ids), torch.tensor(labels), pixel_values, tiles)

    def generation_inputs(self, sample: Sample, root: Path) -> ProcessedSample:
        """Inputs for generating the last answer: the prompt up to the last assistant role, no labels."""
        turns = _prompt_turns(sample.conversations)
        pixel_values, tiles = self._load_tiles(sample, root)
        input_ids, _ = self._tokenize(turns, tiles)
        empty = torch.full((len(input_ids),), IGNORE_INDEX, dtype=torch.long)
        return ProcessedSample(sample.id, torch.tensor(input_ids), empty, pixel_values, tiles)

    def count_tokens(self, sample: Sample, root: Path) -> int:
        """Token count of the training sequence, from image sizes only (no pixel decoding)."""
        tiles = [self._tiles_for(w, h, len(sample.images)) for w, h in _image_sizes(sample, root)]
        ids, _ = self._tokenize(sample.conversations, tiles)
        return len(ids)

    def render(self, conversations: Sequence[Turn]) -> str:
        """The prompt text before image expansion (what a chat template must reproduce)."""
        return self.template.render(conversations, self.config.system_message)

    # -- internals --------------------------------------------------------------------------------

    def _tiles_for(self, width: int, height: int, n_images: int) -> int:
        c = self.config
        min_tiles, max_tiles = self._tile_range(n_images)
        return num_tiles(
            width,
            height,
            min_tiles=min_tiles,
            max_tiles=max_tiles,
            use_thumbnail=c.use_thumbnail,
            tile_size=c.tile_size,
        )

    def _tile_range(self, n_images: int) -> tuple[int, int]:
        """(min, max) grid tiles per image: a multi-image sample shares max_tiles as the official code does.

        When min_tiles is above an image's share the official code finds no candidate grid and falls back
        to one tile (1x1, no thumbnail); so does this.
        """
        budget = tiles_per_image(n_images, self.config.max_tiles)
        return (1, 1) if self.config.min_tiles > budget else (self.config.min_tiles, budget)

    def _load_tiles(self, sample: Sample, root: Path) -> tuple[torch.Tensor, list[int]]:
        c = self.config
        if not sample.images:
            return torch.empty(0, 3, c.tile_size, c.tile_size), []
        min_tiles, max_tiles = self._tile_range(len(sample.images))
        tensors = []
        for rel in sample.images:
            path = root / rel
            try:
                with Image.open(path) as image:
                    tensors.append(
                        tile_image(
                            image,
                            min_tiles=min_tiles,
                            max_tiles=max_tiles,
                            tile_size=c.tile_size,
                            use_thumbnail=c.use_thumbnail,
                        )
                    )
            except (OSError, ValueError) as e:
                raise ValueError(f"sample '{sample.id}': cannot read image {path}: {e}") from e
        return torch.cat(tensors), [t.shape[0] for t in tensors]

    def _tokenize(self, turns: Sequence[Turn], tiles: Sequence[int]) -> tuple[list[int], list[int]]:
        """Token ids and labels of the rendered conversation, images expanded.

        The whole prompt is tokenized in one call, as the official preprocessing does, with each
        ``<image>`` written as ``<img><IMG_CONTEXT></img>`` whose one context token is then repeated
        (special tokens split the text, so the count does not change the text's tokens). Labels come from
        character spans: tokenizing template segments one by one would differ for SentencePiece
        tokenizers (InternLM2, Phi-3), which prefix "▁" at the start of every call.
        """
        n_placeholders = sum(t.value.count(IMAGE_PLACEHOLDER) for t in turns)
        if n_placeholders > len(tiles):
            raise ValueError(f"{n_placeholders} <image> placeholders but {len(tiles)} images")
        image_text = IMG_START + IMG_CONTEXT + IMG_END
        text, trained_spans = "", []
        for segment, trained in self.template.segments(turns, self.config.system_message):
            segment = segment.replace(IMAGE_PLACEHOLDER, image_text)
            if trained:
                trained_spans.append((len(text), len(text) + len(segment)))
            text += segment
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        # After BOS, what the official slow tokenizer puts before the prompt and the fast one does not (the
        # 4B's lone "▁" before its leading <|system|>; nothing for the others). Never trained.
        input_ids: list[int] = [] if self.bos_id is None else [self.bos_id]
        input_ids += slow_prompt_prefix_ids(self.tokenizer, text)
        labels: list[int] = [IGNORE_INDEX] * len(input_ids)
        image_index = 0
        for token, (start, _) in zip(enc["input_ids"], enc["offset_mapping"]):
            if token == self.img_context_id:
                n = self.config.num_image_token * tiles[image_index]
                image_index += 1
                input_ids += [token] * n
                labels += [IGNORE_INDEX] * n
                continue
            input_ids.append(token)
            labels.append(token if any(a <= start < b for a, b in trained_spans) else IGNORE_INDEX)
        return input_ids, labels

    def _truncate(
        self, sample_id: str, input_ids: list[int], labels: list[int]
    ) -> tuple[list[int], list[int]]:
        limit = self.config.max_length
        if len(input_ids) <= limit:
            return input_ids, labels
        last_image_end = max((i for i, t in enumerate(input_ids) if t == self.img_end_id), default=-1)
        if last_image_end >= limit:
            raise SampleTooLongError(
                f"sample '{sample_id}': {len(input_ids)} tokens > max_length {limit}, and truncation would cut "
                "through its image tokens (lower max_tiles or raise max_length)"
            )
        input_ids, labels = input_ids[:limit], labels[:limit]
        if all(label == IGNORE_INDEX for label in labels):
            raise SampleTooLongError(
                f"sample '{sample_id}': {len(input_ids)} tokens > max_length {limit}; no answer token is left "
                "after truncation, so it would train with zero loss"
            )
        return input_ids, labels


def _prompt_turns(conversations: Sequence[Turn]) -> list[Turn]:
    """The turns before the last assistant reply (the prompt a model answers)."""
    last_gpt = max(i for i, t in enumerate(conversations) if t.role == "gpt")
    return list(conversations[:last_gpt])


def _image_sizes(sample: Sample, root: Path) -> list[tuple[int, int]]:
    if sample.widths and sample.heights and len(sample.widths) == len(sample.images):
        return list(zip(sample.widths, sample.heights))
    sizes = []
    for rel in sample.images:
        with Image.open(root / rel) as image:  # reads the header only
            sizes.append(image.size)
    return sizes


def collate(
    batch: Sequence[ProcessedSample], pad_token_id: int, padding_side: str = "right"
) -> dict[str, Any]:
    """Pad a list of processed samples into a batch.

    Args:
        batch: Processed samples.
        pad_token_id: Id used for padding input_ids.
        padding_side: "right" for training, "left" for batched generation.

    Returns:
        input_ids, attention_mask, labels (padded with -100), pixel_values (all tiles concatenated, or None
        when the batch has no image), num_tiles, ids (of every sample, packed ones included) and tokens
        (the real, unpadded count). For packs
        (samples with position_ids): position_ids instead of an attention mask (None), the padding of a
        row being a segment of its own, so transformers keeps every sample's attention to itself.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got '{padding_side}'")
    packed = any(s.position_ids is not None for s in batch)
    if packed and padding_side != "right":
        raise ValueError("packed samples are for training: pad them on the right")
    length = max(len(s.input_ids) for s in batch)
    input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, s in enumerate(batch):
        n = len(s.input_ids)
        span = slice(length - n, length) if padding_side == "left" else slice(0, n)
        input_ids[row, span] = s.input_ids
        labels[row, span] = s.labels
        attention_mask[row, span] = 1
    tiles = [s.pixel_values for s in batch if s.pixel_values.shape[0] > 0]
    out: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": torch.cat(tiles) if tiles else None,
        "num_tiles": [s.num_tiles for s in batch],
        "ids": [i for s in batch for i in (s.members or [s.id])],
        "tokens": sum(len(s.input_ids) for s in batch),  # real (unpadded) tokens
    }
    if packed:
        position_ids = torch.arange(length, dtype=torch.long).repeat(len(batch), 1)
        for row, s in enumerate(batch):
            n = len(s.input_ids)
            position_ids[row, :n] = s.position_ids if s.position_ids is not None else torch.arange(n)
            position_ids[row, n:] -= n  # the padding restarts at 0: a segment apart from the samples
        out["position_ids"], out["attention_mask"] = position_ids, None
    return out


@dataclass
class BudgetReport:
    """Per-sample token counts against max_length, and the samples that cannot be trained as they are."""

    max_length: int
    counts: dict[str, int]
    too_long: list[str]
    reasons: dict[str, str] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        values = sorted(self.counts.values())
        return {
            "max_length": self.max_length,
            "samples": len(self.counts),
            "max_tokens": values[-1] if values else 0,
            "mean_tokens": sum(values) / len(values) if values else 0.0,
            "too_long": [{"id": i, "reason": self.reasons.get(i, "")} for i in self.too_long],
            "truncated": list(self.truncated),
            "counts": self.counts,
        }


def check_token_budget(samples: Sequence[Sample], root: Path, processor: SampleProcessor) -> BudgetReport:
    """Count every sample's tokens; list those truncation would break (image tokens cut, or no answer left:
    `too_long`, skipped in training) and those that only lose the end of an answer (`truncated`, still trained).
    """
    limit = processor.config.max_length
    counts: dict[str, int] = {}
    too_long: list[str] = []
    truncated: list[str] = []
    reasons: dict[str, str] = {}
    for sample in samples:
        tiles = [processor._tiles_for(w, h, len(sample.images)) for w, h in _image_sizes(sample, root)]
        ids, labels = processor._tokenize(sample.conversations, tiles)
        counts[sample.id] = len(ids)
        if len(ids) > limit:
            try:
                processor._truncate(sample.id, ids, labels)
                truncated.append(sample.id)
            except SampleTooLongError as e:
                too_long.append(sample.id)
                reasons[sample.id] = str(e)
    return BudgetReport(limit, counts, too_long, reasons, truncated)

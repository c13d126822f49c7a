"""Packed training: packs are full and exact, and a packed row computes what each sample computes alone."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from test_training_run import _train, make_dataset
from test_tuning import FAMILIES, build_tiny

from mini_internvl_adapt.processing.packing import PackedDataset, pack_indices, pack_samples
from mini_internvl_adapt.processing.transform import IGNORE_INDEX, ProcessedSample, collate

IMAGE_TOKEN, IMAGE_TOKENS = 5, 256  # build_tiny: image_token_id 5, 256 tokens per tile


def test_packs_hold_every_sample_once_within_capacity_and_are_nearly_full() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(50, 1500) for _ in range(2000)]
    packs = pack_indices(lengths, 4096)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 4096 for pack in packs)
    lower_bound = -(-sum(lengths) // 4096)
    assert len(packs) <= lower_bound * 1.02  # best-fit decreasing: within 2% of the ideal count here
    assert pack_indices(lengths, 4096) == packs  # deterministic
    assert pack_indices([4096, 1, 4095], 4096) == [[0], [1, 2]]
    with pytest.raises(ValueError, match="1 sample\\(s\\) exceed the pack capacity of 100 tokens"):
        pack_indices([50, 101], 100)


def sample(seed: int, text_before: int, text_after: int, tiles: int) -> ProcessedSample:
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat(
        [
            torch.randint(6, 120, (text_before,), generator=g),
            torch.full((IMAGE_TOKENS * tiles,), IMAGE_TOKEN),
            torch.randint(6, 120, (text_after,), generator=g),
        ]
    )
    labels = ids.clone()
    labels[: text_before + IMAGE_TOKENS * tiles] = IGNORE_INDEX  # train on the answer only
    pixels = torch.randn(tiles, 3, 448, 448, generator=g)
    return ProcessedSample(f"s{seed}", ids, labels, pixels, [tiles] if tiles else [])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_packed_row_gives_each_sample_its_own_logits_and_the_token_mean_loss(family: str) -> None:
    model = build_tiny(family)
    samples = [sample(1, 7, 9, 1), sample(2, 4, 12, 0), sample(3, 5, 6, 1)]
    batch = collate([pack_samples(samples)], pad_token_id=0)
    assert batch["attention_mask"] is None and batch["ids"] == ["s1", "s2", "s3"]
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
            use_cache=False,
        )
        start, total_loss, total_tokens = 0, 0.0, 0
        for s in samples:
            alone = model(
                input_ids=s.input_ids[None],
                pixel_values=s.pixel_values if len(s.pixel_values) else None,
                labels=s.labels[None],
                use_cache=False,
            )
            n = len(s.input_ids)
            torch.testing.assert_close(
                packed.logits[0, start : start + n], alone.logits[0], atol=2e-5, rtol=1e-4
            )
            tokens = int((s.labels[1:] != IGNORE_INDEX).sum())  # shifted labels, as the loss counts them
            total_loss, total_tokens, start = (
                total_loss + alone.loss.item() * tokens,
                total_tokens + tokens,
                start + n,
            )
        assert packed.loss.item() == pytest.approx(total_loss / total_tokens, rel=1e-4)
        # Without the restarting positions the samples would attend to each other: the logits differ.
        leaky = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], use_cache=False)
        second = slice(len(samples[0].input_ids), len(samples[0].input_ids) + len(samples[1].input_ids))
        assert not torch.allclose(leaky.logits[0, second], packed.logits[0, second], atol=1e-3)


def test_collate_pads_packs_with_a_segment_of_their_own() -> None:
    a = pack_samples([sample(1, 3, 4, 0), sample(2, 2, 2, 0)])
    b = pack_samples([sample(3, 3, 3, 0)])
    batch = collate([a, b], pad_token_id=0)
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3],
        [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4],
    ]
    assert (batch["labels"][1, 6:] == IGNORE_INDEX).all() and batch["pixel_values"] is None
    assert batch["ids"] == ["s1", "s2", "s3"]
    with pytest.raises(ValueError, match="pad them on the right"):
        collate([a], pad_token_id=0, padding_side="left")


def test_packed_dataset_items_are_the_packs() -> None:
    items = [sample(i, 2, 3, 0) for i in range(5)]
    dataset = PackedDataset(items, [[0, 3], [1], [2, 4]])
    assert len(dataset) == 3
    assert dataset[2].members == ["s2", "s4"]
    assert torch.equal(dataset[0].input_ids, torch.cat([items[0].input_ids, items[3].input_ids]))


def test_adapt_train_with_packing_trains_every_sample_in_fewer_steps(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_train=12)
    out = tmp_path / "run"
    # 456- and 968-token samples (1 or 2 tiles) in packs of 2048 tokens: 2 + 2 + 2 long, 4 + 2 short.
    argv = ["--max-steps", "-1", "--batch-size", "1", "--max-length", "2048", "data.packing=true"]
    assert _train("lora", data, out, *argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 12 and summary["steps"] == 5


def test_samples_sharing_ids_across_sources_keep_their_own_token_counts(tmp_path: Path) -> None:
    # Two official-format files whose ids are both 0..3 (as official JSONL often are): one holds
    # 1344x448 images (many tiles), the other 48x48. Packs must be built from each entry's own count.
    from PIL import Image

    from mini_internvl_adapt.models.tokenizer import build_tiny_tokenizer
    from mini_internvl_adapt.processing.transform import ProcessingConfig, SampleProcessor
    from mini_internvl_adapt.training.data import (
        InternVLDataModule,
        budget_check,
        expand_sources,
        split_sources,
    )

    meta = {}
    for name, size in (("big", (1344, 448)), ("small", (48, 48))):
        (tmp_path / name).mkdir()
        Image.new("RGB", size, "blue").save(tmp_path / name / "x.png")
        turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A thing."}]
        rows = [{"id": i, "image": "x.png", "conversations": turns} for i in range(4)]
        (tmp_path / name / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        meta[name] = {"root": str(tmp_path / name), "annotation": str(tmp_path / name / "train.jsonl")}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    processor = SampleProcessor(
        build_tiny_tokenizer("qwen2"), ProcessingConfig(template="Hermes-2", max_tiles=6, max_length=2048)
    )
    train, _ = split_sources(tmp_path / "meta.json")
    entries, report = budget_check(expand_sources(train), processor, progress=False)
    assert len(report.counts) == 8 and report.counts["0"] > 1000 > report.counts["small/0"]
    module = InternVLDataModule(entries, [], processor, report.counts, batch_size=1, packing=True)
    for i, believed in enumerate(module.train_lengths):
        assert len(module.train_set[i].input_ids) == believed <= 2048

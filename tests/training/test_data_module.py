"""data.py: sources (folder / JSONL / meta with repeat_time), lazy samples, the length-grouped sampler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import write_image_dataset
from PIL import Image

from mini_internvl_adapt.errors import DataError, DatasetError
from mini_internvl_adapt.models.loading import load_model
from mini_internvl_adapt.processing.transform import ProcessingConfig, SampleProcessor
from mini_internvl_adapt.training.data import (
    InternVLDataModule,
    LengthGroupedSampler,
    SampleDataset,
    budget_check,
    expand_sources,
    split_sources,
)


def write_dataset(root: Path, n_train: int = 6, n_val: int = 2, prefix: str = "s") -> Path:
    return write_image_dataset(
        root,
        n_train,
        n_val,
        ids=lambda i: f"{prefix}{i}",
        image_name=lambda i: f"{prefix}{i}.png",
        size=lambda i: (64, 48) if i % 2 else (40, 80),
        color=lambda i: (i * 30 % 255, 90, 20),
        answer=lambda i: "There is a car to the front." * (1 + i % 3),
    )


@pytest.fixture(scope="module")
def processor() -> SampleProcessor:
    loaded = load_model("tiny")
    return SampleProcessor(loaded.tokenizer, ProcessingConfig(template=loaded.info.template, max_tiles=2))


def test_folder_splits_into_train_and_val(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    train, val = split_sources(tmp_path)
    assert [s.annotation.name for s in train] == ["train.jsonl"]
    assert [s.annotation.name for s in val] == ["val.jsonl"]
    train, val = split_sources(tmp_path / "train.jsonl")
    assert len(train) == 1 and val == []
    # --val FOLDER means the folder's val.jsonl: never its training (or test) split.
    (tmp_path / "test.jsonl").write_text((tmp_path / "val.jsonl").read_text())
    train, val = split_sources(tmp_path / "train.jsonl", val=tmp_path)
    assert [s.annotation.name for s in val] == ["val.jsonl"]
    with pytest.raises(DatasetError, match="no val.jsonl in this dataset folder"):
        split_sources(tmp_path, val=write_dataset(tmp_path / "other", n_val=0))


def test_meta_json_repeat_time_and_val_entries(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", n_train=4, n_val=2, prefix="a")
    b = write_dataset(tmp_path / "b", n_train=4, n_val=0, prefix="b")
    meta = {
        "a_train": {"root": str(a), "annotation": str(a / "train.jsonl"), "repeat_time": 2},
        "b_train": {"root": str(b), "annotation": str(b / "train.jsonl"), "repeat_time": 0.5},
        "a_val": {"root": str(a), "annotation": str(a / "val.jsonl"), "split": "val"},
    }
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(meta))
    train, val = split_sources(path)
    entries = expand_sources(train)
    ids = [e.sample.id for e in entries]
    assert len(ids) == 4 * 2 + 2  # a repeated twice, half of b
    assert sum(i.startswith("a") for i in ids) == 8 and sum(i.startswith("b") for i in ids) == 2
    assert [e.sample.id for e in expand_sources(val)] == ["a4", "a5"]


def test_repeat_time_follows_the_official_loader(tmp_path: Path) -> None:
    # Below 1 the official LazySupervisedDataset keeps the first int(len * repeat_time) lines (a slice, not a
    # random subset); above 1 it repeats a whole number of times and refuses anything else.
    a = write_dataset(tmp_path / "a", n_train=10, n_val=0, prefix="a")
    path = tmp_path / "meta.json"
    path.write_text(
        json.dumps({"a": {"root": str(a), "annotation": str(a / "train.jsonl"), "repeat_time": 0.35}})
    )
    train, _ = split_sources(path)
    assert [e.sample.id for e in expand_sources(train)] == ["a0", "a1", "a2"]
    assert [e.sample.id for e in expand_sources(train)] == ["a0", "a1", "a2"]
    path.write_text(
        json.dumps({"a": {"root": str(a), "annotation": str(a / "train.jsonl"), "repeat_time": 1.5}})
    )
    with pytest.raises(
        DatasetError, match=r"meta\.json: entry 'a': 'repeat_time' above 1 must be a whole number"
    ):
        split_sources(path)
    [source] = train
    source.repeat_time = 2.5  # a source built in code gets the same check
    with pytest.raises(DatasetError, match=r"source 'a': repeat_time above 1 must be a whole number"):
        expand_sources([source])


def test_meta_without_training_entries_is_an_error(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a")
    path = tmp_path / "meta.json"
    path.write_text(json.dumps({"t": {"root": str(a), "annotation": str(a / "val.jsonl"), "split": "test"}}))
    with pytest.raises(DatasetError, match="no training entry"):
        split_sources(path)


def test_dataset_processes_lazily_and_names_broken_samples(
    tmp_path: Path, processor: SampleProcessor
) -> None:
    write_dataset(tmp_path)
    entries = expand_sources(split_sources(tmp_path)[0])
    dataset = SampleDataset(entries, processor)
    item = dataset[0]
    assert item.id == "s0" and item.pixel_values.shape[1:] == (3, 448, 448)
    assert (item.labels != -100).any()
    (tmp_path / "images" / "s3.png").unlink()
    with pytest.raises(DataError) as info:
        dataset[3]
    message = str(info.value)
    assert "'s3'" in message and "train.jsonl" in message and "s3.png" in message


def test_budget_check_drops_samples_that_cannot_fit(tmp_path: Path, processor: SampleProcessor) -> None:
    write_dataset(tmp_path)
    entries = expand_sources(split_sources(tmp_path)[0])
    small = SampleProcessor(
        processor.tokenizer, ProcessingConfig(template="Hermes-2", max_tiles=2, max_length=300)
    )
    kept, report = budget_check(entries, small, progress=False)
    assert len(report.counts) == 6
    assert report.too_long and len(kept) + len(report.too_long) == 6
    assert all(report.counts[e.sample.id] <= 300 or e.sample.id not in report.too_long for e in kept)
    assert "max_length 300" in report.reasons[report.too_long[0]]
    # A sample that fits once its answer's end is cut trains, and token_budget.json names it.
    long_answer = {"id": "long", "conversations": [
        {"from": "human", "value": "Describe the scene."}, {"from": "gpt", "value": "car " * 400}]}  # fmt: skip
    (tmp_path / "train.jsonl").write_text(json.dumps(long_answer) + "\n")
    kept, report = budget_check(expand_sources(split_sources(tmp_path)[0]), small, progress=False)
    assert [e.sample.id for e in kept] == ["long"] and report.counts["long"] > 300
    assert report.truncated == ["long"] and report.to_json()["truncated"] == ["long"]


def test_budget_report_counts_every_entry_of_a_repeated_id(
    tmp_path: Path, processor: SampleProcessor
) -> None:
    question = {"from": "human", "value": "Describe the scene."}
    lines = [
        {"id": "same", "conversations": [question, {"from": "gpt", "value": "car"}]},
        {"id": "same", "conversations": [question, {"from": "gpt", "value": "car " * 40}]},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    [source] = split_sources(tmp_path)[0]
    source.repeat_time = 2
    entries = expand_sources([source])
    kept, report = budget_check(entries, processor, progress=False)
    summary = report.to_json()
    assert len(kept) == 4 and summary["samples"] == 4
    assert list(report.counts) == ["same", "same#2", "same#3", "same#4"]
    assert summary["mean_tokens"] == sum(e.tokens for e in kept) / 4
    assert summary["max_tokens"] == max(e.tokens for e in kept) > min(e.tokens for e in kept)


def test_sampler_shards_ranks_and_groups_lengths() -> None:
    lengths = [(i * 37) % 101 for i in range(40)]
    ranks = [
        list(LengthGroupedSampler(lengths, 2, num_replicas=2, rank=r, seed=3, group_by_length=True))
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 20
    assert set(ranks[0]).isdisjoint(ranks[1]) and set(ranks[0]) | set(ranks[1]) == set(range(40))
    # Global batch k = rank0's pair k + rank1's pair k: lengths never increase inside a mega-batch.
    global_order = []
    for k in range(10):
        global_order += ranks[0][2 * k : 2 * k + 2] + ranks[1][2 * k : 2 * k + 2]
    assert [lengths[i] for i in global_order] == sorted((lengths[i] for i in global_order), reverse=True)
    sampler = LengthGroupedSampler(lengths, 2, seed=3, group_by_length=False)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(first) == list(range(40))


def test_sampler_pads_uneven_sizes_and_resumes_mid_epoch() -> None:
    sampler = LengthGroupedSampler([1] * 7, 2, num_replicas=2, rank=1, seed=0)
    assert len(list(sampler)) == 4  # 7 samples padded to 8 so both ranks take 2 steps
    full = LengthGroupedSampler(list(range(10)), 2, seed=9)
    order = list(full)
    resumed = LengthGroupedSampler(list(range(10)), 2, seed=9)
    resumed.skip_batches(0, 3)
    # The length stays the whole epoch (Lightning counts the skipped batches itself on resume).
    assert len(resumed) == len(full) == 10
    assert list(resumed) == order[6:]
    assert list(resumed) == order  # the skip applies once


def test_datamodule_position_survives_a_checkpoint(tmp_path: Path, processor: SampleProcessor) -> None:
    write_dataset(tmp_path, n_train=6, n_val=0)
    entries = expand_sources(split_sources(tmp_path)[0])
    dm = InternVLDataModule(entries, [], processor, {}, batch_size=2, seed=1)
    batches = list(dm.train_dataloader())
    assert [len(b["ids"]) for b in batches] == [2, 2, 2]
    assert batches[0]["pixel_values"].shape[0] == sum(sum(t) for t in batches[0]["num_tiles"])
    resumed = InternVLDataModule(entries, [], processor, {}, batch_size=2, seed=1)
    resumed.load_state_dict({"epoch": 0, "batches": 2})
    rest = list(resumed.train_dataloader())
    assert [b["ids"] for b in rest] == [batches[2]["ids"]]
    assert torch.equal(rest[0]["input_ids"], batches[2]["input_ids"])


def test_validation_loss_counts_every_sample_once(tmp_path: Path, processor: SampleProcessor) -> None:
    # 3 validation samples in batches of 2: the last batch is padded with a copy of the first, whose
    # labels are all ignored, so val_loss is the token mean over the 3 samples, each once.
    import lightning.pytorch as pl

    from mini_internvl_adapt.processing.transform import IGNORE_INDEX, collate
    from mini_internvl_adapt.training.task import InternVLTask, OptimConfig
    from mini_internvl_adapt.tuning import TuningConfig

    write_dataset(tmp_path, n_train=2, n_val=3)
    train, val = split_sources(tmp_path)
    train_entries, report = budget_check(expand_sources(train), processor, progress=False)
    val_entries, _ = budget_check(expand_sources(val), processor, progress=False)
    module = InternVLDataModule(train_entries, val_entries, processor, report.counts, batch_size=2)
    batches = list(module.val_dataloader())
    assert [b["ids"] for b in batches] == [["s2", "s3"], ["s4", "s2"]]
    assert (batches[1]["labels"][1] == IGNORE_INDEX).all() and (batches[0]["labels"][0] != IGNORE_INDEX).any()

    model = load_model("tiny").model
    task = InternVLTask(model, TuningConfig(method="full"), OptimConfig())
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    logged = trainer.validate(task, datamodule=module, verbose=False)[0]["val_loss"]
    model.eval()
    total = tokens = 0.0
    with torch.no_grad():
        for entry in val_entries:
            batch = collate([processor(entry.sample, entry.source.root)], pad_token_id=0)
            n = int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())
            loss = model(
                **{k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
            ).loss
            total, tokens = total + float(loss) * n, tokens + n
    assert logged == pytest.approx(total / tokens, rel=1e-5)


@pytest.mark.parametrize(("meta_tiles", "tiles"), [(12, 9), (2, 3), (1, 1), (None, 3)])
def test_meta_max_dynamic_patch_replaces_the_config_budget(
    tmp_path: Path, processor: SampleProcessor, meta_tiles: int | None, tiles: int
) -> None:
    # As the official build_datasets: a meta entry's max_dynamic_patch replaces max_num, above or below it.
    (tmp_path / "images").mkdir()
    Image.new("RGB", (1792, 896), (20, 90, 20)).save(tmp_path / "images" / "wide.png")
    line = {"id": "w", "image": "images/wide.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A field."}]}  # fmt: skip
    (tmp_path / "train.jsonl").write_text(json.dumps(line) + "\n")
    entry = {"root": str(tmp_path), "annotation": str(tmp_path / "train.jsonl"), "repeat_time": 1}
    if meta_tiles is not None:
        entry["max_dynamic_patch"] = meta_tiles
    (tmp_path / "meta.json").write_text(json.dumps({"wide": entry}))
    entries = expand_sources(split_sources(tmp_path / "meta.json")[0])
    assert processor.config.max_tiles == 2
    assert SampleDataset(entries, processor)[0].pixel_values.shape[0] == tiles  # 4x2 grid + thumbnail at 12

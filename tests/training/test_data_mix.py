"""The general data mix: `data.general` + `data.general_ratio` (`--general SRC --general-ratio R`).

Seeded draws, redrawn every epoch, exact across resume, recorded in RUN/data_mix.json (what was trained)
and RUN/meta.json (the same mix for the official scripts, via repeat_time).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mini_internvl_adapt.cli import main
from mini_internvl_adapt.cli.train import train_main
from mini_internvl_adapt.models.loading import load_model
from mini_internvl_adapt.processing.transform import ProcessingConfig, SampleProcessor
from mini_internvl_adapt.training.config import add_train_arguments, config_from_args, load_config
from mini_internvl_adapt.training.data import (
    GeneralMix,
    InternVLDataModule,
    MixSampler,
    budget_check,
    expand_sources,
    general_per_round,
    split_sources,
)
from mini_internvl_adapt.training.mix import official_meta

REPO = Path(__file__).resolve().parents[2]


def _write_set(root: Path, n: int, prefix: str, answer: str = "Yes.", preamble: str = "") -> Path:
    """n samples with 1-tile images; every third gets `preamble` before its image (to push it past a budget)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        size = (64, 32) if i % 3 else (32, 64)
        Image.new("RGB", size, (i * 7 % 255, 30, 200)).save(root / "images" / f"{prefix}{i}.png")
        rows.append(
            {
                "id": f"{prefix}{i}",
                "image": f"images/{prefix}{i}.png",
                "width": size[0],
                "height": size[1],
                "conversations": [
                    {"from": "human", "value": f"{preamble if i % 3 == 2 else ''}<image>\nWhat is shown?"},
                    {"from": "gpt", "value": answer * (1 + i % 3)},
                ],
            }
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def processor() -> SampleProcessor:
    loaded = load_model("tiny")
    return SampleProcessor(
        loaded.tokenizer, ProcessingConfig(template=loaded.info.template, max_tiles=1, max_length=2048)
    )


def _mix(tmp_path: Path, processor: SampleProcessor, n_domain: int, n_general: int, ratio: float, **kw):
    domain = _write_set(tmp_path / "domain", n_domain, "d")
    general = _write_set(tmp_path / "general", n_general, "g", answer="A general answer. ")
    entries, _ = budget_check(expand_sources(split_sources(domain)[0]), processor, progress=False)
    pool = expand_sources(split_sources(general)[0])
    lengths = [e.tokens for e in entries]
    return GeneralMix(lengths, pool, ratio, kw.pop("seed", 0), processor, **kw), entries, pool


def test_general_count_gives_the_ratio() -> None:
    assert general_per_round(80, 0.2) == 20  # the paper's general:domain 1:4
    assert general_per_round(80, 0.5) == 80
    assert general_per_round(80, 0.0) == 0
    assert general_per_round(7, 0.2) == 2  # round(1.75)
    with pytest.raises(ValueError, match="below 1"):
        general_per_round(8, 1.0)


def test_draws_are_seeded_redrawn_each_round_and_without_repeats(
    tmp_path: Path, processor: SampleProcessor
) -> None:
    mix, _, pool = _mix(tmp_path, processor, 16, 40, 0.2)
    assert mix.per_round == 4
    rounds = [mix.draw(r) for r in range(6)]
    assert all(len(d) == 4 == len(set(d)) for d in rounds)
    assert len({tuple(d) for d in rounds}) == 6  # a new draw every round
    again, _, _ = _mix(tmp_path / "again", processor, 16, 40, 0.2)
    assert [again.draw(r) for r in range(6)] == rounds  # same seed: same draws
    other, _, _ = _mix(tmp_path / "other", processor, 16, 40, 0.2, seed=1)
    assert [other.draw(r) for r in range(6)] != rounds
    # Only drawn samples were measured against max_length (a general meta may list millions).
    assert sum(e.tokens is not None for e in pool) <= 24


def test_a_small_pool_repeats_and_too_long_samples_are_passed_over(tmp_path: Path) -> None:
    loaded = load_model("tiny")
    # 520 tokens: the general samples whose image tokens a long preamble pushes past it cannot train.
    small = SampleProcessor(
        loaded.tokenizer, ProcessingConfig(template=loaded.info.template, max_tiles=1, max_length=520)
    )
    domain = _write_set(tmp_path / "domain", 12, "d")
    general = _write_set(tmp_path / "general", 6, "g", preamble="Some context to read first. " * 40)
    entries, _ = budget_check(expand_sources(split_sources(domain)[0]), small, progress=False)
    pool = expand_sources(split_sources(general)[0])
    mix = GeneralMix([e.tokens for e in entries], pool, 0.5, 0, small)
    drawn = mix.draw(0)
    assert len(drawn) == 12  # 12 general for 12 domain samples, from a pool of 6 ...
    usable = {j for j in range(6) if j not in mix.too_long}
    assert mix.too_long and set(drawn) == usable  # ... of which only the short ones can train
    assert all(
        c in (len(drawn) // len(usable), len(drawn) // len(usable) + 1) for c in Counter(drawn).values()
    )


def test_sampler_epochs_shard_ranks_and_resume_mid_epoch(tmp_path: Path, processor: SampleProcessor) -> None:
    mix, entries, _ = _mix(tmp_path, processor, 10, 30, 0.2)  # 10 + 2 samples an epoch (a round)
    ranks = [MixSampler(mix, 2, num_replicas=2, rank=r, seed=3) for r in range(2)]
    assert len(ranks[0]) == 6 and ranks[0].batches_per_epoch() == 3
    for epoch in range(3):
        keys = []
        for sampler in ranks:
            sampler.set_epoch(epoch)
            keys += list(sampler)
        assert {k[0] for k in keys} == {epoch}  # unpacked: every round is exactly one epoch
        members = Counter(k[1] for k in keys)
        assert sorted(i for i in members if i < 10) == list(range(10))  # every domain sample once
        assert sorted(i - 10 for i in members if i >= 10) == sorted(mix.draw(epoch))  # the round's draw
    # Mid-epoch resume: skipping the first batch yields exactly the rest of the epoch.
    full = list(MixSampler(mix, 2, num_replicas=2, rank=1, seed=3))
    resumed = MixSampler(mix, 2, num_replicas=2, rank=1, seed=3)
    resumed.skip_batches(0, 1)
    assert list(resumed) == full[2:]


def test_packed_rounds_form_one_stream_of_equal_epochs(tmp_path: Path, processor: SampleProcessor) -> None:
    mix, _, _ = _mix(tmp_path, processor, 12, 40, 0.25, packing=True)
    sampler = MixSampler(mix, 1, seed=0)
    stream = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert len(keys) == len(sampler)  # Lightning's fixed epoch length
        stream += keys
    # Epochs cut one stream: each round appears whole and in order, none lost or repeated.
    rounds = [k[0] for k in stream]
    assert rounds == sorted(rounds)
    for round_ in sorted(set(rounds))[:-1]:
        members = sorted(i for k in stream if k[0] == round_ for i in k[1:])
        n = len(mix.domain_lengths)
        assert members == sorted([*range(n), *(n + j for j in mix.draw(round_))])
    assert all(len(k) >= 2 for k in stream)  # (round, members...): packs hold one or more samples


def test_config_and_command_line(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(
        ["--data", "d", "--general", "a", "--general", "b.json", "--general-ratio", "0.3"]
    )
    config = config_from_args(args)
    assert config.data.general == ["a", "b.json"] and config.data.general_ratio == 0.3
    assert config_from_args(parser.parse_args(["data.general=one"])).data.general == ["one"]
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  general: x.json\n  augment_jpeg: true\n")
    loaded = load_config(path)
    assert loaded.data.general == ["x.json"] and loaded.data.augment_jpeg and loaded.data.general_ratio == 0.2
    with pytest.raises(ValueError, match=r"data\.general_ratio must be at least 0 and below 1"):
        config_from_args(parser.parse_args(["--general-ratio", "1"]))
    path.write_text("data:\n  general: [1, 2]\n")
    with pytest.raises(ValueError, match="'general' must be a path or a list of paths"):
        load_config(path)


def test_official_meta_expresses_the_mix_with_repeat_time(tmp_path: Path, processor: SampleProcessor) -> None:
    domain = _write_set(tmp_path / "domain", 16, "d")
    general = _write_set(tmp_path / "general", 40, "g")
    entries, _ = budget_check(expand_sources(split_sources(domain)[0]), processor, progress=False)
    pool = expand_sources(split_sources(general)[0])
    # 0.2: 4 general per 16 domain samples, the first tenth of the general file for the official loader.
    module = InternVLDataModule(entries, [], processor, {}, general=pool, general_ratio=0.2)
    meta = official_meta(module)
    assert meta["domain_train"]["repeat_time"] == 1 and meta["general_train"]["repeat_time"] == 0.1
    assert meta["general_train"]["length"] == 40 and meta["general_train"]["data_augment"] is False
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(meta))
    read = Counter(e.source.name for e in expand_sources(split_sources(path)[0]))  # our official-rule reader
    assert read == {"domain_train": 16, "general_train": 4}
    # A pool smaller than a round's draw repeats a whole number of times (the official loader asserts an int):
    # 16 general per 16 domain samples from a 5-line file is 3.2 repeats, written as 3.
    small = _write_set(tmp_path / "small", 5, "s")
    pool = expand_sources(split_sources(small)[0])
    module = InternVLDataModule(entries, [], processor, {}, general=pool, general_ratio=0.5)
    assert official_meta(module, augment_jpeg=True)["small_train"] == {
        "root": str(small.resolve()),
        "annotation": str((small / "train.jsonl").resolve()),
        "data_augment": True,
        "repeat_time": 3,
        "length": 5,
    }


def _train_args(domain: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--config", str(REPO / "configs" / "tiny" / "lora.yaml"), "--data", str(domain), "--out", str(out),
        "--max-steps", str(steps), "--batch-size", "2", "--checkpoint-every", "100",
        "train.progress_bar=false", "train.warmup_ratio=0", "train.min_lr_ratio=1", *extra,
    ]  # fmt: skip


def _losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")}


def test_a_mixed_run_records_what_it_trained(tmp_path: Path) -> None:
    domain = _write_set(tmp_path / "domain", 8, "d")
    general = _write_set(tmp_path / "general", 20, "g", answer="A general answer. ")
    run = tmp_path / "run"
    # Two whole epochs of 8 domain + 2 general samples (5 steps of 2 each).
    args = _train_args(domain, run, 10, "--general", str(general), "--general-ratio", "0.2")
    assert train_main(args) == 0
    record = json.loads((run / "data_mix.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert record["mixed"] and record["general_ratio"] == 0.2 and record["general_per_epoch"] == 2
    rows = {(r["role"], r["name"]): r for r in record["sources"]}
    assert set(rows) == {("domain", "domain_train"), ("general", "general_train")}
    assert (
        rows[("domain", "domain_train")]["samples"] == 16
        and rows[("general", "general_train")]["samples"] == 4
    )
    assert record["general_share"] == 0.2 and record["samples"] == summary["samples"] == 20
    assert all(r["tokens"] > 0 for r in rows.values())
    assert summary["data_mix"]["mixed"] and summary["data_mix"]["general_samples"] == 4
    meta = json.loads((run / "meta.json").read_text())
    assert meta["general_train"]["repeat_time"] == 0.1 and meta["domain_train"]["repeat_time"] == 1
    assert load_config(run / "run_config.yaml").data.general == [str(general.resolve())]

    plain = tmp_path / "plain"
    assert train_main(_train_args(domain, plain, 2)) == 0
    record = json.loads((plain / "data_mix.json").read_text())
    assert not record["mixed"] and [r["role"] for r in record["sources"]] == ["domain"]
    assert record["sources"][0]["samples"] == 4 and "no general data mix" in record["note"]
    assert json.loads((plain / "summary.json").read_text())["data_mix"] == {
        "mixed": False,
        "note": record["note"],
    }
    assert list(json.loads((plain / "meta.json").read_text())) == ["domain_train"]


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed-augmented"])
def test_a_mixed_run_resumes_exactly(tmp_path: Path, packed: bool) -> None:
    # Stopped after 3 steps, extended to 8 with --resume: the same losses and the same data as an
    # uninterrupted 8-step run, across the epoch boundary where the general draw changes.
    domain = _write_set(tmp_path / "domain", 8, "d")
    general = _write_set(tmp_path / "general", 20, "g", answer="A general answer. ")
    extra = ["--general", str(general), "--general-ratio", "0.2"]
    if packed:
        extra += ["data.packing=true", "data.augment_jpeg=true", "--batch-size", "1"]
    assert train_main(_train_args(domain, tmp_path / "extended", 3, *extra)) == 0
    resume = ["--resume", str(tmp_path / "extended"), "train.max_steps=8", "train.progress_bar=false"]
    assert train_main(resume) == 0
    assert train_main(_train_args(domain, tmp_path / "straight", 8, *extra)) == 0
    extended, straight = _losses(tmp_path / "extended"), _losses(tmp_path / "straight")
    assert sorted(extended) == sorted(straight) and len(straight) == 8
    assert all(abs(extended[s] - straight[s]) < 1e-5 for s in straight), (extended, straight)
    a = json.loads((tmp_path / "extended" / "data_mix.json").read_text())
    b = json.loads((tmp_path / "straight" / "data_mix.json").read_text())
    assert a == b and sum(r["samples"] for r in a["sources"] if r["role"] == "general") > 0


def test_the_whole_job_mixes_general_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    general = _write_set(tmp_path / "general", 6, "g", answer="A general answer. ")
    out = tmp_path / "job"
    argv = ["--domain", "medical", "--demo", "--out", str(out), "--max-steps", "2", "--no-export"]
    assert main([*argv, "--general", str(general), "--general-ratio", "0.5"]) == 0
    record = json.loads((out / "data_mix.json").read_text())
    assert record["mixed"] and record["general_ratio"] == 0.5
    assert json.loads((out / "summary.json").read_text())["data_mix"]["general_samples"] == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["run"] == str(out.resolve())
    assert f"data mix          {out.resolve() / 'data_mix.json'}" in captured.err


def test_a_missing_general_source_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    domain = _write_set(tmp_path / "domain", 4, "d")
    args = _train_args(domain, tmp_path / "run", 2, "--general", str(tmp_path / "nowhere.json"))
    assert train_main(args) == 2
    assert "nowhere.json: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

"""The official JPEG augmentation (meta ``data_augment: true`` / ``data.augment_jpeg``), checked on pixels.

Officially (internvl_chat/internvl/train/dataset.py, build_transform(is_train=True)) every 448x448 tile,
thumbnail included, is saved as a JPEG at a quality drawn from 75..100 and read back before ToTensor and
normalisation; only for training. Here the draws are seeded by (seed, epoch, dataset index).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mini_internvl_adapt.cli.train import train_main
from mini_internvl_adapt.data_format.samples import Sample
from mini_internvl_adapt.errors import DatasetError
from mini_internvl_adapt.models.loading import load_model
from mini_internvl_adapt.processing.tiling import IMAGENET_MEAN, IMAGENET_STD, jpeg_reencode
from mini_internvl_adapt.processing.transform import ProcessingConfig, SampleProcessor
from mini_internvl_adapt.training.data import (
    InternVLDataModule,
    JpegAugment,
    SampleDataset,
    budget_check,
    expand_sources,
    split_sources,
)

REPO = Path(__file__).resolve().parents[2]
SIDE = 448


@pytest.fixture(scope="module")
def processor() -> SampleProcessor:
    loaded = load_model("tiny")
    config = ProcessingConfig(template=loaded.info.template, max_tiles=2, tile_size=SIDE)
    return SampleProcessor(loaded.tokenizer, config)


def _noise_image(path: Path, width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like image (smooth gradients and noise): JPEG changes it visibly at any quality."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    pixels = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return image


def _write_set(root: Path, n: int, prefix: str) -> Path:
    rows = []
    for i in range(n):
        _noise_image(root / "images" / f"{prefix}{i}.png", 2 * SIDE, SIDE, seed=i)
        rows.append(
            {
                "id": f"{prefix}{i}",
                "image": f"images/{prefix}{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the scene."},
                    {
                        "from": "gpt",
                        "value": "A gradient." if i % 2 else "Noise over a gradient, left to right.",
                    },
                ],
            }
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _official_tile(tile: Image.Image, quality: int) -> torch.Tensor:
    """The official path for one tile, written with PIL and numpy only: JPEG round trip, ToTensor, Normalize."""
    with io.BytesIO() as buffer:
        tile.convert("RGB").save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0
    normalised = (decoded - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(normalised.transpose(2, 0, 1).copy())


def _plain_tile(tile: Image.Image) -> torch.Tensor:
    array = np.asarray(tile.convert("RGB"), dtype=np.float32) / 255.0
    array = (array - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def test_augmented_tiles_equal_an_independent_pil_reencode(
    tmp_path: Path, processor: SampleProcessor
) -> None:
    # A 2:1 image with max_tiles 2 is cut into a 2x1 grid plus the thumbnail: three tiles.
    image = _noise_image(tmp_path / "images" / "x.png", 2 * SIDE, SIDE)
    sample = Sample.from_json(
        {
            "id": "x",
            "image": "images/x.png",
            "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello."}],
        }
    )
    plain = processor(sample, tmp_path).pixel_values
    assert plain.shape == (3, 3, SIDE, SIDE)
    official_tiles = [
        image.crop((0, 0, SIDE, SIDE)),
        image.crop((SIDE, 0, 2 * SIDE, SIDE)),
        image.resize((SIDE, SIDE), Image.Resampling.BICUBIC),
    ]
    for index, tile in enumerate(official_tiles):  # the plain tiles are the official ones
        torch.testing.assert_close(plain[index], _plain_tile(tile), atol=1e-5, rtol=0)

    augment = JpegAugment(seed=7)
    qualities = augment.qualities(epoch=0, index=0, n_tiles=3)
    assert all(75 <= q <= 100 for q in qualities)
    augmented = jpeg_reencode(plain, qualities)
    assert not torch.equal(augmented, plain)
    assert (augmented - plain).abs().mean() > 1e-3  # visibly re-encoded, not a rounding difference
    torch.testing.assert_close(jpeg_reencode(plain, qualities), augmented, atol=0, rtol=0)
    for index, (tile, quality) in enumerate(zip(official_tiles, qualities, strict=True)):
        torch.testing.assert_close(augmented[index], _official_tile(tile, quality), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="2 JPEG qualities for 3 tiles"):
        jpeg_reencode(plain, qualities[:2])


def test_qualities_are_seeded_per_sample_and_epoch() -> None:
    augment = JpegAugment(seed=3)
    draws = {(e, i): augment.qualities(e, i, 13) for e in range(3) for i in range(3)}
    assert all(75 <= q <= 100 for qs in draws.values() for q in qs)
    assert augment.qualities(1, 2, 13) == draws[(1, 2)]  # the same again (a resumed run draws the same)
    assert len({tuple(qs) for qs in draws.values()}) == len(draws)  # every sample and epoch its own
    assert JpegAugment(seed=4).qualities(1, 2, 13) != draws[(1, 2)]
    many = [q for i in range(200) for q in augment.qualities(0, i, 13)]
    assert min(many) == 75 and max(many) == 100  # the official range, both ends included


def _meta(tmp_path: Path) -> Path:
    a = _write_set(tmp_path / "a", 2, "a")
    b = _write_set(tmp_path / "b", 2, "b")
    meta = {
        "a": {"root": str(a), "annotation": str(a / "train.jsonl"), "data_augment": True, "repeat_time": 1},
        "b": {"root": str(b), "annotation": str(b / "train.jsonl"), "data_augment": False, "repeat_time": 1},
    }
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(meta))
    return path


def test_meta_data_augment_selects_the_augmented_sources(tmp_path: Path, processor: SampleProcessor) -> None:
    train, _ = split_sources(_meta(tmp_path))
    assert [(s.name, s.data_augment) for s in train] == [("a", True), ("b", False)]
    entries = expand_sources(train)
    plain = SampleDataset(entries, processor)
    augmented = SampleDataset(entries, processor, JpegAugment(seed=0))
    for index, entry in enumerate(entries):
        same = torch.equal(augmented.get(index, 0).pixel_values, plain[index].pixel_values)
        assert same is (not entry.source.data_augment), entry.sample.id
    # Deterministic per (epoch, index), different between epochs.
    first = augmented.get(0, 0).pixel_values
    assert torch.equal(augmented.get(0, 0).pixel_values, first)
    assert not torch.equal(augmented.get(0, 1).pixel_values, first)
    # data.augment_jpeg: every source, the meta's false included.
    everything = SampleDataset(entries, processor, JpegAugment(seed=0, every_source=True))
    assert not torch.equal(everything.get(3, 0).pixel_values, plain[3].pixel_values)


def test_a_non_boolean_data_augment_is_refused(tmp_path: Path) -> None:
    path = _meta(tmp_path)
    meta = json.loads(path.read_text())
    meta["a"]["data_augment"] = "yes"
    path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"entry 'a': 'data_augment' must be true or false"):
        split_sources(path)


def test_only_training_augments_and_the_epoch_comes_from_the_sampler(
    tmp_path: Path, processor: SampleProcessor
) -> None:
    train, _ = split_sources(_meta(tmp_path))
    entries, _ = budget_check(expand_sources(train), processor, progress=False)
    module = InternVLDataModule(entries, entries, processor, {}, seed=5, group_by_length=False)
    sampler = module.train_sampler()
    plain = SampleProcessor(processor.tokenizer, processor.config)
    reference = plain(entries[0].sample, entries[0].source.root).pixel_values
    # Validation never augments, even a data_augment source.
    assert torch.equal(module.val_set[0].pixel_values, reference)
    epoch0 = module.train_set[0].pixel_values
    assert not torch.equal(epoch0, reference)
    expected = jpeg_reencode(reference, JpegAugment(seed=5).qualities(0, 0, reference.shape[0]))
    torch.testing.assert_close(epoch0, expected, atol=0, rtol=0)
    sampler.set_epoch(1)  # what Lightning calls at every epoch
    epoch1 = module.train_set[0].pixel_values
    assert not torch.equal(epoch1, epoch0)
    sampler.set_epoch(0)
    assert torch.equal(module.train_set[0].pixel_values, epoch0)


def test_an_augmented_run_resumes_exactly(tmp_path: Path) -> None:
    # 6 samples, batches of 2: 3 steps an epoch. A run stopped after 2 steps and extended to 5 crosses into
    # the second epoch (new draws) and must train what an uninterrupted 5-step run trains.
    data = _write_set(tmp_path / "data", 6, "r")

    def args(out: Path, steps: int) -> list[str]:
        return [
            "--config", str(REPO / "configs" / "tiny" / "lora.yaml"), "--data", str(data), "--out", str(out),
            "--max-steps", str(steps), "--batch-size", "2", "--checkpoint-every", "100",
            "train.progress_bar=false", "train.warmup_ratio=0", "train.min_lr_ratio=1", "data.augment_jpeg=true",
        ]  # fmt: skip

    assert train_main(args(tmp_path / "extended", 2)) == 0
    assert (
        train_main(["--resume", str(tmp_path / "extended"), "train.max_steps=5", "train.progress_bar=false"])
        == 0
    )
    assert train_main(args(tmp_path / "straight", 5)) == 0

    def losses(run: Path) -> dict[int, float]:
        with open(run / "metrics.csv", newline="") as f:
            return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")}

    extended, straight = losses(tmp_path / "extended"), losses(tmp_path / "straight")
    assert sorted(extended) == sorted(straight) and len(straight) == 5
    assert all(abs(extended[s] - straight[s]) < 1e-5 for s in straight), (extended, straight)
    meta = json.loads((tmp_path / "straight" / "meta.json").read_text())
    assert [entry["data_augment"] for entry in meta.values()] == [True]

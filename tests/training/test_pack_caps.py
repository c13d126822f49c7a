"""Pack caps: data.max_packed_tokens and data.max_packed_tiles are both honoured by the packer and the data module."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.errors import ConfigError
from mini_internvl_adapt.models.tokenizer import build_tiny_tokenizer
from mini_internvl_adapt.processing.packing import pack_indices, sample_tiles
from mini_internvl_adapt.processing.transform import ProcessingConfig, SampleProcessor
from mini_internvl_adapt.training.config import load_config
from mini_internvl_adapt.training.data import InternVLDataModule, budget_check, expand_sources, split_sources


def test_packs_keep_both_caps_and_stay_nearly_full() -> None:
    rng = random.Random(1)
    tiles = [rng.choice([0, 1, 2, 5, 7, 13]) for _ in range(3000)]
    lengths = [t * 258 + rng.randint(30, 600) for t in tiles]
    packs = pack_indices(lengths, 16384, tiles, 48)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 16384 for pack in packs)
    assert all(sum(tiles[i] for i in pack) <= 48 for pack in packs)
    ideal = max(-(-sum(lengths) // 16384), -(-sum(tiles) // 48))
    assert len(packs) <= ideal * 1.03
    assert pack_indices(lengths, 16384, tiles, 48) == packs  # deterministic
    # The tile cap binds: the same samples by tokens alone would put more tiles in some pack.
    assert max(sum(tiles[i] for i in pack) for pack in pack_indices(lengths, 16384)) > 48


def test_a_tile_cap_that_never_binds_gives_the_packs_of_tokens_alone() -> None:
    rng = random.Random(2)
    lengths = [rng.randint(50, 1500) for _ in range(500)]
    tiles = [1] * len(lengths)
    assert pack_indices(lengths, 4096, tiles, 10_000) == pack_indices(lengths, 4096)


def test_tile_cap_errors() -> None:
    assert pack_indices([10, 10, 10], 100, [3, 2, 2], 4) == [[0], [1, 2]]
    with pytest.raises(
        ValueError, match="1 sample\\(s\\) exceed the pack cap of 4 tiles \\(first: index 1\\)"
    ):
        pack_indices([10, 10], 100, [3, 5], 4)
    with pytest.raises(ValueError, match="needs the tile count of every sample"):
        pack_indices([10, 10], 100, None, 4)
    with pytest.raises(ValueError, match=">= 1 tile"):
        pack_indices([10], 100, [0], 0)


def _image(root: Path, name: str, size: tuple[int, int]) -> str:
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (30, 60, 90)).save(root / "images" / name)
    return f"images/{name}"


@pytest.mark.parametrize(
    ("sizes", "max_tiles", "min_tiles", "with_sizes"),
    [
        ([(1344, 448)], 6, 1, True),  # 3x1 grid + thumbnail
        ([(900, 900), (60, 40)], 12, 1, False),  # two images share 12 tiles; sizes read from the headers
        ([(2000, 500), (500, 2000), (800, 600)], 6, 3, True),  # min_tiles above the share: one tile each
        ([], 6, 1, True),
    ],
)
def test_sample_tiles_counts_what_the_processor_tiles(
    tmp_path: Path, sizes: list[tuple[int, int]], max_tiles: int, min_tiles: int, with_sizes: bool
) -> None:
    images = [_image(tmp_path, f"{i}.png", size) for i, size in enumerate(sizes)]
    question = "".join(f"Image-{i + 1}: <image>\n" for i in range(len(images))) + "What?"
    sample = Sample(
        "x",
        [Turn("human", question), Turn("gpt", "A thing.")],
        images=images,
        widths=[w for w, _ in sizes] if with_sizes else None,
        heights=[h for _, h in sizes] if with_sizes else None,
    )
    config = ProcessingConfig(template="Hermes-2", max_tiles=max_tiles, min_tiles=min_tiles)
    processed = SampleProcessor(build_tiny_tokenizer("qwen2"), config)(sample, tmp_path)
    assert (
        sample_tiles(sample, tmp_path, config) == processed.pixel_values.shape[0] == sum(processed.num_tiles)
    )


def _dataset(root: Path, n: int = 12) -> Path:
    rows = []
    for i in range(n):
        size = (1344, 448) if i % 3 == 0 else (48, 48)  # 4 tiles (3x1 + thumbnail) or 1
        rows.append(
            {
                "id": f"c{i}",
                "image": _image(root, f"{i}.png", size),
                "width": size[0],
                "height": size[1],
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is shown?"},
                    {"from": "gpt", "value": "A plain colour." * (1 + i % 4)},
                ],
            }
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _module(data: Path, **caps: int | None) -> InternVLDataModule:
    processor = SampleProcessor(
        build_tiny_tokenizer("qwen2"), ProcessingConfig(template="Hermes-2", max_tiles=6, max_length=2048)
    )
    train, _ = split_sources(data)
    entries, report = budget_check(expand_sources(train), processor, progress=False)
    return InternVLDataModule(entries, [], processor, report.counts, batch_size=1, packing=True, **caps)


def test_the_data_module_packs_up_to_max_packed_tokens_and_tiles(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    by_length = _module(data)
    assert len(by_length.train_entries) == 12 and max(by_length.train_lengths) <= 2048  # default: max_length
    bigger = _module(data, max_packed_tokens=8192)
    assert max(bigger.train_lengths) > 2048 and len(bigger.train_lengths) < len(by_length.train_lengths)
    capped = _module(data, max_packed_tokens=8192, max_packed_tiles=5)
    for i, believed in enumerate(capped.train_lengths):
        pack = capped.train_set[i]
        assert len(pack.input_ids) == believed <= 8192
        assert pack.pixel_values.shape[0] <= 5
    assert (
        max(p.pixel_values.shape[0] for p in (bigger.train_set[i] for i in range(len(bigger.train_set)))) > 5
    )
    with pytest.raises(
        ConfigError, match="sample 'c0' in .*train.jsonl has 4 image tiles, more than data.max_pack"
    ):
        _module(data, max_packed_tiles=3)


def test_pack_settings_are_checked_when_the_config_is_read(tmp_path: Path) -> None:
    config = load_config(None, {"data.max_packed_tokens": 16384, "data.max_packed_tiles": 48})
    assert (config.data.max_packed_tokens, config.data.max_packed_tiles) == (16384, 48)
    assert (
        load_config(None).data.max_packed_tokens is None and load_config(None).data.max_packed_tiles is None
    )
    with pytest.raises(
        ValueError, match="data.max_packed_tiles must be null \\(no cap\\) or at least 1, got 0"
    ):
        load_config(None, {"data.max_packed_tiles": 0})
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  max_length: 8192\n  max_packed_tokens: 4096\n")
    with pytest.raises(
        ConfigError, match="c.yaml: data.max_packed_tokens \\(4096\\) is less than data.max_length"
    ):
        load_config(path)

"""On a CUDA device: bf16-mixed LoRA and QLoRA training of the tiny model (opt in with -m gpu)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mini_internvl_adapt.cli.train import train_main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_bf16_training_on_gpu(method: str, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from PIL import Image

    (tmp_path / "data" / "images").mkdir(parents=True)
    rows = []
    for i in range(6):
        Image.new("RGB", (448, 448), (i * 40, 10, 90)).save(tmp_path / "data" / "images" / f"{i}.png")
        rows.append(
            {
                "id": f"g{i}",
                "image": f"images/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is it?"},
                    {"from": "gpt", "value": f"Colour number {i}."},
                ],
            }
        )
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--config", str(REPO / "configs" / "tiny" / f"{method}.yaml"), "--data", str(tmp_path / "data")]
    argv += [
        "--out",
        str(tmp_path / "run"),
        "--accelerator",
        "gpu",
        "--precision",
        "auto",
        "--max-steps",
        "4",
    ]
    argv += ["model.dtype=auto", "train.progress_bar=false"]
    assert train_main(argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["precision"].startswith("bf16") and summary["steps"] == 4
    assert summary["peak_memory"]["gpu_max_allocated_bytes"] > 0
    assert summary["last_loss"] == summary["last_loss"]  # finite, not NaN

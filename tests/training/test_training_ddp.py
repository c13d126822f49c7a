"""DDP with 2 CPU processes (gloo): ranks see different samples and end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


def _dataset(root: Path, n: int = 16) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (48, 48), (i * 13 % 255, 80, 10)).save(root / "images" / f"{i}.png")
        rows.append(
            {
                "id": f"p{i}",
                "image": f"images/{i}.png",
                "width": 48,
                "height": 48,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": "A plain colour." * (1 + i % 4)},
                ],
            }
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_ddp_two_cpu_processes_shard_data_and_stay_in_sync(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "mini_internvl_adapt.training",
        "--config",
        str(REPO / "configs" / "tiny" / "lora.yaml"),
        "--data",
        str(data),
        "--out",
        str(run),
        "--max-steps",
        "4",
        "--batch-size",
        "1",
        "--strategy",
        "ddp",
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "train.progress_bar=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    seen = [r["sample_ids"] for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 4
    assert set(seen[0]).isdisjoint(seen[1])
    assert ranks[0]["trainable_checksum"] == ranks[1]["trainable_checksum"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4 and summary["samples"] == 8
    adapter = load_file(run / "final" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert all(torch.isfinite(v).all() for v in adapter.values())

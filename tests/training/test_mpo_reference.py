"""The MPO reference model: with LoRA the policy with its adapters disabled gives exactly the base model's
log-probs (no second copy), in eval mode whatever the training mode, and the adapters are back on after."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from mini_internvl_adapt.models.loading import load_model
from mini_internvl_adapt.processing.transform import ProcessingConfig, SampleProcessor
from mini_internvl_adapt.training.data import split_sources
from mini_internvl_adapt.training.mpo import MPOTask, eval_mode, sequence_logps
from mini_internvl_adapt.training.mpo_config import MPOSection
from mini_internvl_adapt.training.mpo_data import PairDataset, collate_pairs, expand_pair_sources
from mini_internvl_adapt.training.task import OptimConfig
from mini_internvl_adapt.tuning import TuningConfig, apply_tuning


def _batch(tmp_path: Path, tokenizer, info) -> dict:
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(2):
        Image.new("RGB", (64, 48), (200, i * 90, 40)).save(tmp_path / "images" / f"{i}.png")
        rows.append(
            {"id": f"p{i}", "image": f"images/{i}.png", "question": "What is ahead?",
             "chosen": "A red car." if i else "Nothing.", "rejected": "A green tree on the left."}
        )  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    processor = SampleProcessor(tokenizer, ProcessingConfig.from_model_info(info, max_tiles=1))
    dataset = PairDataset(expand_pair_sources(split_sources(tmp_path / "pairs.jsonl")[0]), processor)
    return collate_pairs([dataset[0], dataset[1]], pad_token_id=tokenizer.pad_token_id or 0)


def _logps(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
        )
    return sequence_logps(out.logits, batch["labels"])[0]


def test_lora_reference_is_the_base_model(tmp_path: Path) -> None:
    base = load_model("tiny")
    batch = _batch(tmp_path, base.tokenizer, base.info)
    expected = _logps(base.model.eval(), batch)

    tuning = TuningConfig(method="lora", use_llm_lora=8, drop_path_rate=0.3).resolved()
    policy = apply_tuning(load_model("tiny").model, tuning)
    torch.manual_seed(0)
    with torch.no_grad():  # adapters that change the answers (LoRA starts as the identity)
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    task = MPOTask(policy, tuning, OptimConfig(), MPOSection(), reference="adapter")
    assert task.model.training  # the task trains: dropout and drop path are on

    reference = task.reference_forward(batch)
    torch.testing.assert_close(reference, expected, atol=1e-5, rtol=1e-5)
    assert task.model.training  # back in training mode, adapters on again
    with eval_mode(task.model):
        adapted = _logps(task.model, batch)
    assert (adapted - expected).abs().max() > 1e-2
    # The same again: nothing random in the reference (eval mode, no drop path), nothing left disabled.
    torch.testing.assert_close(task.reference_forward(batch), expected, atol=1e-5, rtol=1e-5)
    with eval_mode(task.model):
        torch.testing.assert_close(_logps(task.model, batch), adapted)

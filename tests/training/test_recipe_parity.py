"""Every shipped recipe against the official InternVL script it follows.

Each row of `OFFICIAL` is one official script (github.com/OpenGVLab/InternVL, path relative to the repository) with
the values it trains with, written in the script's own flag names: what it passes, and the defaults of
``internvl_chat_finetune.py`` / transformers' TrainingArguments where it passes nothing (marked "default").
`FLAG_TO_CONFIG` says which key of ours each flag is. The Mini-InternVL domain-adaptation scripts govern the
``*_full.yaml`` configs (12: DriveLM, BDD-X, medical, remote sensing x 1B / 2B / 4B); the 2nd-stage LoRA scripts
govern ``*_lora.yaml`` and ``*_qlora.yaml`` (QLoRA: the same recipe over a 4-bit LLM; no official script has it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mini_internvl_adapt.training.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
# Not an official recipe: the tiny random model of the tests and the demo.
NOT_OFFICIAL = {"tiny/full.yaml", "tiny/lora.yaml", "tiny/qlora.yaml"}

DA = "internvl_chat/shell/mini_internvl/domain_adaptation"
LORA = "internvl_chat/shell/internvl2.0/2nd_finetune"
MODELS = {
    "1b": ("internvl2_1b_qwen2_0_5b", "./pretrained/InternVL2-1B", "Hermes-2"),
    "2b": ("internvl2_2b_internlm2_1_8b", "./pretrained/InternVL2-2B", "internlm2-chat"),
    "4b": ("internvl2_4b_phi3_3_8b", "./pretrained/InternVL2-4B", "phi3-chat"),
}
OUR_MODELS = {"./pretrained/InternVL2-1B": "mini-internvl-1b", "./pretrained/InternVL2-2B": "mini-internvl-2b",
              "./pretrained/InternVL2-4B": "mini-internvl-4b"}  # fmt: skip

# Flags every domain-adaptation script passes alike (and the defaults it relies on).
DA_COMMON: dict[str, Any] = {
    "drop_path_rate": 0.1,
    "freeze_llm": False,
    "freeze_mlp": False,
    "freeze_backbone": False,
    "per_device_train_batch_size": 1,
    "learning_rate": 1e-5,
    "weight_decay": 0.01,
    "warmup_ratio": 0.03,
    "lr_scheduler_type": "cosine",
    "max_seq_length": 8192,
    "grad_checkpoint": True,
    "group_by_length": False,
    "use_thumbnail": True,
    "use_packed_ds": True,
    "num_images_expected": 48,
    "max_packed_tokens": 16384,
    "loss_reduction": "square",
    "loss_reduction_all_gather": True,
    "bf16": True,
    "max_dynamic_patch (default)": 12,
    "min_dynamic_patch (default)": 1,
    "max_grad_norm (default)": 1.0,
    "use_llm_lora (default)": 0,
}
# Flags every 2nd-stage LoRA script passes alike.
LORA_COMMON: dict[str, Any] = {
    "max_dynamic_patch": 6,
    "drop_path_rate": 0.0,
    "freeze_llm": True,
    "freeze_mlp": True,
    "freeze_backbone": True,
    "use_llm_lora": 16,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 4,  # PER_DEVICE_BATCH_SIZE
    "learning_rate": 4e-5,
    "weight_decay": 0.01,
    "warmup_ratio": 0.03,
    "lr_scheduler_type": "cosine",
    "max_seq_length": 4096,
    "grad_checkpoint": True,
    "group_by_length": True,
    "use_thumbnail": True,
    "bf16": True,
    "min_dynamic_patch (default)": 1,
    "max_grad_norm (default)": 1.0,
    "use_packed_ds (default)": False,
    "loss_reduction (default)": "token",
    "loss_reduction_all_gather (default)": False,
}
# (dataset word in the script name, max_steps, gradient_accumulation_steps) of the domain-adaptation scripts;
# each runs on GPUS=8, so its global batch is 8 x 1 x accumulation.
DA_DATA = {
    "drivelm": ("driving/{size}_full.yaml", 15100, 1),
    "bdd": ("driving/{size}_bdd_full.yaml", 240, 8),
    "medical": ("medical/{size}_full.yaml", 2200, 8),
    "remote": ("remote_sensing/{size}_full.yaml", 2500, 8),
}


def _official() -> list[dict[str, Any]]:
    """The table: one row per official script, with the configs of ours it governs."""
    rows = []
    for size, (prefix, model, conv) in MODELS.items():
        for word, (config, steps, accumulation) in DA_DATA.items():
            flags = {**DA_COMMON, "model_name_or_path": model, "conv_style": conv, "max_steps": steps,
                     "gradient_accumulation_steps": accumulation, "GPUS": 8}  # fmt: skip
            rows.append({"script": f"{DA}/{prefix}_dynamic_res_finetune_{word}.sh", "flags": flags,
                         "configs": [config.format(size=size)]})  # fmt: skip
        lora = {**LORA_COMMON, "model_name_or_path": model, "conv_style": conv, "BATCH_SIZE": 16, "GPUS": 2}
        rows.append({"script": f"{LORA}/{prefix}_dynamic_res_2nd_finetune_lora.sh", "flags": lora,
                     "configs": [f"{domain}/{size}_{method}.yaml" for domain in ("driving", "medical", "remote_sensing")
                                 for method in ("lora", "qlora")]})  # fmt: skip
    return rows


OFFICIAL = _official()


def _global_batch(flags: dict[str, Any]) -> int:
    if "BATCH_SIZE" in flags:  # the LoRA scripts: GRADIENT_ACC = BATCH_SIZE / PER_DEVICE_BATCH_SIZE / GPUS
        return flags["BATCH_SIZE"]
    return flags["GPUS"] * flags["per_device_train_batch_size"] * flags["gradient_accumulation_steps"]


# Official flag -> how to read ours from a loaded config (tuning resolved: the method's defaults filled in).
FLAG_TO_CONFIG: dict[str, Any] = {
    "model_name_or_path": lambda c: c.model.name,
    "conv_style": lambda c: c.data.template,
    "drop_path_rate": lambda c: c.tuning.drop_path_rate,
    "freeze_llm": lambda c: c.tuning.resolved().freeze_llm,
    "freeze_mlp": lambda c: c.tuning.resolved().freeze_mlp,
    "freeze_backbone": lambda c: c.tuning.resolved().freeze_backbone,
    "use_llm_lora": lambda c: c.tuning.resolved().use_llm_lora,
    "per_device_train_batch_size": lambda c: c.train.batch_size,
    "learning_rate": lambda c: c.train.lr,
    "weight_decay": lambda c: c.train.weight_decay,
    "warmup_ratio": lambda c: c.train.warmup_ratio,
    # Our schedule is always linear warmup then cosine; "cosine" means down to 0.
    "lr_scheduler_type": lambda c: (
        "cosine" if c.train.min_lr_ratio == 0 else f"cosine to {c.train.min_lr_ratio}"
    ),
    "max_seq_length": lambda c: c.data.max_length,
    "grad_checkpoint": lambda c: c.tuning.gradient_checkpointing,
    "group_by_length": lambda c: c.data.group_by_length,
    "use_thumbnail": lambda c: c.data.use_thumbnail,
    "use_packed_ds": lambda c: c.data.packing,
    "num_images_expected": lambda c: c.data.max_packed_tiles,
    "max_packed_tokens": lambda c: c.data.max_packed_tokens,
    "loss_reduction": lambda c: c.train.loss_reduction,
    "loss_reduction_all_gather": lambda c: c.train.loss_reduction_all_gather,
    "bf16": lambda c: c.train.precision == "auto",  # auto: bf16-mixed on a GPU that has it
    "max_dynamic_patch": lambda c: c.data.max_tiles,
    "min_dynamic_patch": lambda c: c.data.min_tiles,
    "max_grad_norm": lambda c: c.train.gradient_clip_val,
    "max_steps": lambda c: c.train.max_steps,
    "num_train_epochs": lambda c: c.train.max_epochs if c.train.max_steps == -1 else None,
}
# Flags that are not settings of ours: the machine (GPUS) and the accumulation, which the global batch covers.
NOT_SETTINGS = {"GPUS", "BATCH_SIZE", "gradient_accumulation_steps"}


def _governing(name: str) -> dict[str, Any]:
    rows = [row for row in OFFICIAL if name in row["configs"]]
    assert len(rows) == 1, f"{name}: {len(rows)} official rows"
    return rows[0]


def test_every_shipped_config_is_in_the_table_or_says_why_not() -> None:
    names = {p.relative_to(REPO / "configs").as_posix() for p in CONFIGS}
    governed = {name for row in OFFICIAL for name in row["configs"]}
    assert names - NOT_OFFICIAL == governed
    assert len(OFFICIAL) == 15 and len(governed) == 30


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_config_matches_its_official_script(path: Path) -> None:
    name = path.relative_to(REPO / "configs").as_posix()
    if name in NOT_OFFICIAL:
        pytest.skip("the tiny test model has no official recipe")
    row = _governing(name)
    config: TrainConfig = load_config(path)
    flags = row["flags"]
    differences = []
    for flag, value in flags.items():
        key = flag.removesuffix(" (default)")
        if key in NOT_SETTINGS:
            continue
        ours = FLAG_TO_CONFIG[key](config)
        official = OUR_MODELS.get(value, value) if key == "model_name_or_path" else value
        if ours != official:
            differences.append(f"{flag}: official {official!r}, ours {ours!r}")
    if config.train.global_batch_size != _global_batch(flags):
        differences.append(
            f"global batch: official {_global_batch(flags)}, ours {config.train.global_batch_size}"
        )
    assert not differences, f"{name} differs from {row['script']}:\n" + "\n".join(differences)
    assert row["script"].rsplit("/", 1)[-1] in path.read_text(), f"{name} must name its official script"

"""What trains: freeze flags, LoRA, QLoRA and full fine-tuning (the only module importing peft and bitsandbytes).

The options mirror the official InternVL fine-tuning flags (freeze_backbone, freeze_mlp, freeze_llm,
unfreeze_vit_layers, unfreeze_lm_head, use_llm_lora, use_backbone_lora with alpha = 2r, dropout 0.05),
applied to the transformers-native ``InternVLForConditionalGeneration`` whose parts are
``model.vision_tower`` (the ViT), ``model.multi_modal_projector`` (mlp1), ``model.language_model``
and ``lm_head``. LoRA targets are chosen per LLM family from the module names actually present, so
Qwen2/Llama (and InternLM2 converted to Llama), Phi-3's fused ``qkv_proj``/``gate_up_proj`` and the
original InternLM2 names all work. InternLM2's LoRA is the official one on its fused ``wqkv`` (one A shared
by q, k and v, one B over their rows) although our checkpoints hold q/k/v split: see `FusedQKVLora` below.
"""

from __future__ import annotations

import math
import re
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mini_internvl_adapt.models.drop_path import add_vision_drop_path
from mini_internvl_adapt.models.swiglu import lean_swiglu

METHODS = ("lora", "qlora", "full")
COMPONENTS = ("vision_tower", "multi_modal_projector", "language_model", "lm_head")

# LoRA target leaf names per LLM family (official recipe), and the ViT's in both layouts.
LLM_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "internlm2": (
        "wqkv",
        "wo",
        "w1",
        "w2",
        "w3",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
}
VIT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "projection_layer", "qkv", "proj", "fc1", "fc2")

# Official per-method defaults (2nd-stage LoRA scripts freeze everything but the adapters; the full
# scripts keep the ViT frozen and train projector + LLM).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"freeze_backbone": True, "freeze_mlp": True, "freeze_llm": True, "use_llm_lora": 16},
    "qlora": {"freeze_backbone": True, "freeze_mlp": True, "freeze_llm": True, "use_llm_lora": 16},
    "full": {"freeze_backbone": True, "freeze_mlp": False, "freeze_llm": False, "use_llm_lora": 0},
}


@dataclass
class TuningConfig:
    """Which parameters train and how.

    As in the official scripts, LoRA on a part keeps that part's base weights frozen: with
    ``use_llm_lora`` the base LLM stays frozen whatever ``freeze_llm`` says (only its adapters and,
    with ``unfreeze_lm_head``, lm_head train), and with ``use_backbone_lora`` the base ViT stays frozen
    whatever ``freeze_backbone`` says. Under LoRA/QLoRA every part that does train in full (lm_head,
    the projector with freeze_mlp false, the last ViT layers, an un-adapted LLM or ViT left unfrozen)
    is saved beside the adapter (peft ``modules_to_save``) and restored by `load_adapter`.

    Attributes:
        method: "lora", "qlora" (4-bit NF4 LLM + LoRA) or "full".
        freeze_backbone: Freeze the vision tower (None: the method's official default; ignored with
            use_backbone_lora, whose base ViT is always frozen).
        freeze_mlp: Freeze the projector (None: default).
        freeze_llm: Freeze the language model (None: default; ignored with use_llm_lora, whose base
            LLM is always frozen).
        unfreeze_vit_layers: Train the last k ViT layers in full even when the backbone is frozen.
        unfreeze_lm_head: Train lm_head in full.
        use_llm_lora: LoRA rank on the LLM (0: none; None: the method's default, 16 for LoRA/QLoRA).
        use_backbone_lora: LoRA rank on the ViT (0: none).
        lora_alpha: LoRA alpha (None: 2 x rank, the official rule).
        lora_dropout: LoRA dropout.
        lr_vit: Learning rate of the ViT (None: the base rate).
        lr_mlp: Learning rate of the projector (None: the base rate).
        lr_llm: Learning rate of the LLM, lm_head and adapters on it (None: the base rate).
        gradient_checkpointing: Recompute activations in backward to save memory.
        drop_path_rate: Stochastic depth in the ViT, the official ``drop_path_rate``: layer i of L drops
            its attention and MLP branches per tile with probability rate * i / (L - 1) while training
            (0: off; the Mini-InternVL domain-adaptation recipe uses 0.1). See models/drop_path.py.
        fused_qkv_lora: One LoRA over q, k and v together, as officially on InternLM2's fused ``wqkv``
            (a shared A, one B split into the q, k, v rows; None or true: on for the InternLM2 LLM of
            the 2B, false: three LoRAs on q_proj, k_proj, v_proj; ignored for the other families).
    """

    method: str = "lora"
    freeze_backbone: bool | None = None
    freeze_mlp: bool | None = None
    freeze_llm: bool | None = None
    unfreeze_vit_layers: int = 0
    unfreeze_lm_head: bool = False
    use_llm_lora: int | None = None
    use_backbone_lora: int = 0
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    lr_vit: float | None = None
    lr_mlp: float | None = None
    lr_llm: float | None = None
    gradient_checkpointing: bool = False
    drop_path_rate: float = 0.0
    fused_qkv_lora: bool | None = None

    def resolved(self) -> TuningConfig:
        """A copy with every None replaced by the method's default; raises ValueError on bad values."""
        if self.method not in METHODS:
            raise ValueError(f"tuning method must be one of {', '.join(METHODS)}, got '{self.method}'")
        values = asdict(self)
        for key, default in METHOD_DEFAULTS[self.method].items():
            if values[key] is None:
                values[key] = default
        out = TuningConfig(**values)
        if out.method == "full" and (out.use_llm_lora or out.use_backbone_lora):
            raise ValueError("method 'full' takes no LoRA ranks; use method 'lora' to combine them")
        if out.method == "qlora" and not out.freeze_llm:
            raise ValueError(
                "method 'qlora' keeps the 4-bit LLM frozen: set freeze_llm true (adapters train)"
            )
        if out.method in ("lora", "qlora") and not (out.use_llm_lora or out.use_backbone_lora):
            raise ValueError(f"method '{out.method}' needs use_llm_lora > 0 or use_backbone_lora > 0")
        if out.unfreeze_vit_layers < 0:
            raise ValueError("unfreeze_vit_layers counts the last k ViT layers and must be >= 0")
        if not 0.0 <= out.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {out.drop_path_rate}")
        if out.use_backbone_lora and out.unfreeze_vit_layers:
            raise ValueError(
                "use_backbone_lora and unfreeze_vit_layers cannot be combined on the same ViT layers"
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TuningConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"unknown tuning option(s): {', '.join(unknown)}")
        return cls(**obj)


def model_llm_family(model: nn.Module) -> str:
    """The LLM family of an InternVL model from its text config ("qwen2", "llama", "phi3", ...)."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or getattr(config, "llm_config", None)
    model_type = getattr(text, "model_type", None)
    if model_type in ("qwen2", "qwen2_5", "qwen3"):
        return "qwen2"
    if model_type in ("internlm2",):
        return "internlm2"
    if model_type in ("phi3",):
        return "phi3"
    if model_type in ("llama",):
        return "llama"
    raise ValueError(f"unsupported LLM family '{model_type}' (expected qwen2, llama/internlm2 or phi3)")


def component_of(name: str) -> str:
    """The component a parameter or module name belongs to (one of COMPONENTS, or "other")."""
    for component in COMPONENTS:
        if f"{component}." in f"{name}." and (component != "lm_head" or ".lm_head" in f".{name}"):
            return component
    return "other"


def _linear_names(model: nn.Module, component: str, leaves: Iterable[str]) -> list[str]:
    leaf_set = set(leaves)
    out = []
    for name, module in model.named_modules():
        if component_of(name) != component or name.rsplit(".", 1)[-1] not in leaf_set:
            continue
        # bitsandbytes Linear4bit subclasses nn.Linear, so QLoRA layers are found too.
        if isinstance(module, nn.Linear):
            out.append(name)
    return out


def lora_target_regex(model: nn.Module, *, llm: bool, vision: bool) -> str:
    """A peft target_modules regex that matches the LoRA targets present in `model`.

    Args:
        model: An InternVLForConditionalGeneration (possibly with a 4-bit LLM).
        llm: Target the LLM's attention and MLP projections (per family).
        vision: Target the ViT's attention and MLP projections.

    Raises:
        ValueError: When a requested part has no matching linear layer (an unknown architecture).
    """
    patterns = []
    if llm:
        family = model_llm_family(model)
        names = _linear_names(model, "language_model", LLM_LORA_TARGETS[family])
        if not names:
            raise ValueError(f"no LoRA target layers found in the {family} language model")
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        patterns.append(rf".*language_model\..*\.({'|'.join(leaves)})")
    if vision:
        names = _linear_names(model, "vision_tower", VIT_LORA_TARGETS)
        if not names:
            raise ValueError("no LoRA target layers found in the vision tower")
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        patterns.append(rf".*vision_tower\..*\.({'|'.join(leaves)})")
    if not patterns:
        raise ValueError("LoRA needs the LLM or the vision tower as a target")
    return "|".join(f"(?:{p})" for p in patterns)


def _vit_layers(model: nn.Module) -> list[str]:
    """Module names of the ViT's transformer layers, in order."""
    names = [n for n, _ in model.named_modules() if re.search(r"vision_tower\.encoder\.layers?\.\d+$", n)]
    return sorted(names, key=lambda n: int(n.rsplit(".", 1)[-1]))


def _trained_modules(model: nn.Module, cfg: TuningConfig) -> list[str]:
    """Names of whole modules that train in full under a LoRA method (saved beside the adapter).

    peft copies each into a trainable ``modules_to_save`` module, so it lands in the adapter file. A part
    carrying LoRA keeps its base weights frozen (the official scripts wrap it with peft, which freezes it).
    """
    out = []
    if not cfg.freeze_mlp:
        out.append("multi_modal_projector")
    if cfg.unfreeze_lm_head or not (cfg.freeze_llm or cfg.use_llm_lora):
        out.append("lm_head")
    if not (cfg.freeze_llm or cfg.use_llm_lora):
        out.append("language_model")
    if not (cfg.freeze_backbone or cfg.use_backbone_lora):
        out.append("vision_tower")
    elif cfg.unfreeze_vit_layers:
        out += [n.split("vision_tower.", 1)[1] for n in _vit_layers(model)[-cfg.unfreeze_vit_layers :]]
    return out


def _set_trainable(model: nn.Module, cfg: TuningConfig) -> None:
    """Apply the freeze flags to a plain (non-peft) model."""
    for name, param in model.named_parameters():
        component = component_of(name)
        if component == "vision_tower":
            param.requires_grad = not cfg.freeze_backbone
        elif component == "multi_modal_projector":
            param.requires_grad = not cfg.freeze_mlp
        elif component == "language_model":
            param.requires_grad = not cfg.freeze_llm
        elif component == "lm_head":
            param.requires_grad = (not cfg.freeze_llm) or cfg.unfreeze_lm_head
        else:
            param.requires_grad = True
    if cfg.unfreeze_vit_layers:
        for layer in _vit_layers(model)[-cfg.unfreeze_vit_layers :]:
            for param in model.get_submodule(layer).parameters():
                param.requires_grad = True


def quantization_config(compute_dtype: torch.dtype = torch.float32) -> Any:
    """The bitsandbytes 4-bit NF4 config for QLoRA: only the LLM's linear layers are quantized.

    The vision tower, projector and lm_head stay in full precision (as in the official QLoRA setups),
    which also keeps their odd shapes away from the 4-bit kernels.
    """
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        # transformers matches these from the start of the full module name ("model.vision_tower..."),
        # so plain "vision_tower" would silently quantize the ViT too.
        llm_int8_skip_modules=[r".*vision_tower", r".*multi_modal_projector", "lm_head"],
    )


def is_quantized(model: nn.Module) -> bool:
    """Whether any layer of `model` is a bitsandbytes 4-bit or 8-bit linear layer."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())


def apply_tuning(model: nn.Module, config: TuningConfig, *, llm_family: str | None = None) -> nn.Module:
    """Freeze, wrap with LoRA or leave for full training, as `config` says.

    Args:
        model: An InternVLForConditionalGeneration; for QLoRA it must have been loaded with
            `quantization_config()` (its LLM layers are 4-bit).
        config: The tuning options (None values take the method's defaults).
        llm_family: The checkpoint's LLM family (``ModelInfo.llm_family``); decides the fused qkv LoRA
            of InternLM2 (see `uses_fused_qkv_lora`). None: read from the model's config.

    Returns:
        The model to train: a peft model for LoRA/QLoRA, `model` itself for full fine-tuning.

    Raises:
        ValueError: On inconsistent options, or QLoRA on a model whose LLM is not quantized.
    """
    cfg = config.resolved()
    if cfg.method == "qlora" and not is_quantized(model):
        raise ValueError("method 'qlora' needs the model loaded in 4-bit (pass tuning.quantization_config())")
    if cfg.gradient_checkpointing:
        # use_reentrant=False works with frozen inputs (LoRA) without enable_input_require_grads tricks.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
    lean_swiglu(model)  # the LLM MLPs keep gate and up for backward, not silu(gate) too (the same gradients)
    if cfg.method == "full":
        _set_trainable(model, cfg)
        add_vision_drop_path(model, cfg.drop_path_rate)
        return model

    from peft import LoraConfig, get_peft_model

    if cfg.method == "qlora":
        # 4-bit weights never train; keep the other parameters frozen too and train adapters in full precision.
        for param in model.parameters():
            param.requires_grad = False
    rank = cfg.use_llm_lora or cfg.use_backbone_lora
    lora = LoraConfig(
        r=rank,
        lora_alpha=cfg.lora_alpha if cfg.lora_alpha is not None else 2 * rank,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_regex(
            model, llm=bool(cfg.use_llm_lora), vision=bool(cfg.use_backbone_lora)
        ),
        rank_pattern=_rank_pattern(cfg),
        alpha_pattern=_alpha_pattern(cfg),
        modules_to_save=_trained_modules(model, cfg) or None,
        bias="none",
    )
    if uses_fused_qkv_lora(model, cfg, llm_family):
        register_fused_qkv_lora(lora, model)
    # Whatever trains besides the adapters is a modules_to_save copy, so save_pretrained writes it too.
    tuned = get_peft_model(model, lora)
    add_vision_drop_path(tuned, cfg.drop_path_rate)  # after wrapping: copies of trained layers get it too
    lean_lora_dropout(tuned)
    return tuned


class BoolMaskDropout(nn.Dropout):
    """`nn.Dropout` keeping a one-byte mask for backward (``torch.native_dropout``): the same values and gradients
    from the same random state, where nn.Dropout on a CPU keeps a float32 mask.

    Each LoRA layer drops its input before lora_A: the 1B model's 168 LoRA layers kept 455 MiB of float32 masks
    in a step on a 491-token sample, a quarter of all it saved for backward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0 < self.p < 1:
            return super().forward(x)
        return torch.native_dropout(x, self.p, True)[0]


def lean_lora_dropout(model: nn.Module) -> int:
    """Replace the LoRA layers' dropout with `BoolMaskDropout`, in place; returns how many were replaced."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, dropout in dropouts.items():
                if type(dropout) is nn.Dropout:
                    dropouts[name] = BoolMaskDropout(dropout.p)
                    replaced += 1
    return replaced


def _rank_pattern(cfg: TuningConfig) -> dict[str, int]:
    """Different ranks on the LLM and the ViT (peft keys are regexes over module names)."""
    if cfg.use_llm_lora and cfg.use_backbone_lora and cfg.use_llm_lora != cfg.use_backbone_lora:
        return {r".*vision_tower\..*": cfg.use_backbone_lora}
    return {}


def _alpha_pattern(cfg: TuningConfig) -> dict[str, int]:
    """The ViT's own alpha 2r when its rank differs (the official wrap_backbone_lora), unless alpha is set."""
    if cfg.lora_alpha is None and _rank_pattern(cfg):
        return {r".*vision_tower\..*": 2 * cfg.use_backbone_lora}
    return {}


def _numel(param: torch.Tensor) -> int:
    """Parameter count, counting a packed 4-bit weight by its logical shape."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return math.prod(quant_state.shape)
    return param.numel()


def upcast_trainable(model: nn.Module) -> int:
    """Give every trainable parameter held in bf16/fp16 float32 weights; returns how many were cast.

    Lightning's mixed precision keeps no float32 copy of the weights: a module trained in full on a bf16
    base (the projector, lm_head or last ViT layers beside LoRA) would take each optimizer step in bf16,
    where steps under half the bf16 spacing of a weight vanish. Float32 masters are what the official
    DeepSpeed runs keep; autocast still runs their matmuls in bf16. LoRA weights are float32 already.
    """
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
            cast += 1
    return cast


def parameter_summary(model: nn.Module) -> dict[str, dict[str, int]]:
    """Trainable and total parameters per component (vision_tower, projector, LLM, lm_head, LoRA, total).

    LoRA adapter weights are counted under "lora" (they are new parameters, not part of a component).
    Tied weights are counted once, and so is a module trained in full beside LoRA: peft's
    modules_to_save keeps the frozen original beside the trainable copy, and only the copy counts,
    so each component's total is the plain model's.
    """
    summary = {c: {"trainable": 0, "total": 0} for c in (*COMPONENTS, "lora", "other")}
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen or ".original_module." in name:
            continue
        seen.add(id(param))
        key = "lora" if "lora_" in name else component_of(name)
        n = _numel(param)
        summary[key]["total"] += n
        if param.requires_grad:
            summary[key]["trainable"] += n
    if not summary["other"]["total"]:
        del summary["other"]
    summary["total"] = {
        "trainable": sum(v["trainable"] for v in summary.values()),
        "total": sum(v["total"] for v in summary.values()),
    }
    return summary


def format_summary(summary: dict[str, dict[str, int]]) -> str:
    """The parameter summary as an aligned table for the console."""
    lines = [f"{'component':24s} {'trainable':>14s} {'total':>14s} {'%':>7s}"]
    for component, counts in summary.items():
        total, trainable = counts["total"], counts["trainable"]
        pct = 100.0 * trainable / total if total else 0.0
        lines.append(f"{component:24s} {trainable:14,d} {total:14,d} {pct:6.2f}%")
    return "\n".join(lines)


def parameter_groups(
    model: nn.Module, config: TuningConfig, lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups: one learning rate per component, no weight decay on biases and norms.

    Args:
        model: The model returned by `apply_tuning`.
        config: The tuning options (lr_vit / lr_mlp / lr_llm override `lr` for their component).
        lr: The base learning rate.
        weight_decay: Weight decay for matrices.

    Returns:
        Non-empty groups, each with "params", "lr", "weight_decay" and a "name".
    """
    cfg = config.resolved()
    rates = {
        "vision_tower": cfg.lr_vit if cfg.lr_vit is not None else lr,
        "multi_modal_projector": cfg.lr_mlp if cfg.lr_mlp is not None else lr,
        "language_model": cfg.lr_llm if cfg.lr_llm is not None else lr,
        "lm_head": cfg.lr_llm if cfg.lr_llm is not None else lr,
        "other": lr,
    }
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")
        groups.setdefault((component_of(name), no_decay), []).append(param)
    if not groups:
        raise ValueError("no trainable parameters: check the freeze options")
    return [
        {
            "name": f"{component}{'_no_decay' if no_decay else ''}",
            "params": params,
            "lr": rates[component],
            "weight_decay": 0.0 if no_decay else weight_decay,
        }
        for (component, no_decay), params in sorted(groups.items())
    ]


def is_peft_model(model: nn.Module) -> bool:
    """Whether `model` is a peft wrapper (LoRA / QLoRA)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save_trained(model: nn.Module, out: Path) -> list[str]:
    """Save what was trained: the peft adapter (LoRA/QLoRA) or the full HF-native weights.

    Returns:
        The names of the files written under `out`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)  # type: ignore[operator]  # a PreTrainedModel or peft model
    return sorted(p.name for p in out.iterdir())


def load_adapter(base: nn.Module, adapter_dir: Path, *, merge: bool = False) -> nn.Module:
    """Put a saved LoRA adapter (and the modules trained beside it) on a freshly loaded base model.

    A fused qkv LoRA (InternLM2's, see `FusedQKVLora`) is recognised by its weights and rebuilt as such;
    merged, it leaves plain q/k/v linear layers like any other adapter.

    Args:
        base: The base model, loaded as it was for training.
        adapter_dir: A folder with adapter_config.json and adapter_model.safetensors.
        merge: Merge the adapter into the weights and return a plain transformers model.
    """
    from peft import LoraConfig, PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a LoRA run folder)")
    if saved_fused_qkv_lora(adapter_dir, base):
        config = LoraConfig.from_pretrained(str(adapter_dir))
        register_fused_qkv_lora(config, base)
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False, config=config)
    else:
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False)
    return model.merge_and_unload() if merge else model


# -- InternLM2's LoRA on the fused wqkv, on the split q/k/v projections -----------------------------------------
#
# The official 2B LoRA (wrap_llm_lora) adapts InternLM2's fused ``attention.wqkv``: one A (r x hidden) shared by
# q, k and v, and one B whose rows are wqkv's rows, grouped per kv head. Our checkpoints hold q_proj, k_proj and
# v_proj, split by models/conversion.py, which reorders wqkv's rows into the q, k and v blocks. The same
# reordering of B's rows gives B = [B_q; B_k; B_v] in that layout, and then q = W_q x + s B_q A x, and so on for k
# and v: the official output, de-interleaved. So the adapter (A and the whole B, the official parameter count)
# sits on q_proj, and k_proj and v_proj carry parts that use its A and their own rows of its B. One dropout mask
# and one A x serve q, k and v, as in one fused linear layer. peft builds these layers through its custom-module
# hook (`register_fused_qkv_lora`), so saving, loading, merging and unloading are peft's own.

FUSED_QKV_FAMILIES = ("internlm2",)
_QKV_ROLES = ("q", "k", "v")
_QKV_TARGET = re.compile(r"(.*language_model\..*)\.([qkv])_proj")
_ADAPTER_PREFIX = "base_model.model."


def uses_fused_qkv_lora(model: nn.Module, config: TuningConfig, llm_family: str | None = None) -> bool:
    """Whether `apply_tuning` gives the LLM's q, k and v one fused LoRA (the official InternLM2 adapter).

    It does under LLM LoRA for the InternLM2 family unless ``fused_qkv_lora`` is false. InternLM2 is loaded
    converted to Llama, so when no family is named, a Llama LLM counts as InternLM2: it is the only
    Llama-architecture LLM of the Mini-InternVL models (the 2B). Name ``llm_family`` to decide otherwise.

    Args:
        model: The model about to be wrapped.
        config: The tuning options.
        llm_family: The checkpoint's LLM family, or None to read it from the model's config.
    """
    cfg = config.resolved()
    if not cfg.use_llm_lora or cfg.fused_qkv_lora is False:
        return False
    if llm_family is not None:
        return llm_family in FUSED_QKV_FAMILIES
    return model_llm_family(model) in (*FUSED_QKV_FAMILIES, "llama")


def qkv_blocks(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    """The LLM's attention modules with q_proj, k_proj and v_proj linear layers, and their output sizes."""
    blocks = {}
    for name, module in model.named_modules():
        if component_of(name) != "language_model":
            continue
        parts = [getattr(module, f"{role}_proj", None) for role in _QKV_ROLES]
        if all(isinstance(part, nn.Linear) for part in parts):
            blocks[name] = tuple(int(part.out_features) for part in parts)  # type: ignore[union-attr]
    return blocks  # type: ignore[return-value]


def register_fused_qkv_lora(lora_config: Any, model: nn.Module) -> None:
    """Make peft build the fused qkv LoRA on `model`'s LLM attention when it applies `lora_config`.

    Args:
        lora_config: A peft LoraConfig whose targets include the LLM's q_proj, k_proj and v_proj.
        model: The model it will be applied to (by get_peft_model or PeftModel.from_pretrained).

    Raises:
        ValueError: When the LLM has no attention with q_proj, k_proj and v_proj.
    """
    blocks = qkv_blocks(model)
    if not blocks:
        raise ValueError("fused qkv LoRA: no attention with q_proj, k_proj and v_proj in the language model")
    lora_config._register_custom_module({nn.Module: _FusedQKVDispatch(blocks)})


def saved_fused_qkv_lora(adapter_dir: Path, base: nn.Module) -> bool:
    """Whether a saved adapter is a fused qkv LoRA for `base`: a q_proj B with the rows of q, k and v."""
    from safetensors import safe_open

    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        return False
    blocks = qkv_blocks(base)
    suffix = ".q_proj.lora_B.weight"
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
            prefix = key.removeprefix(_ADAPTER_PREFIX).removesuffix(suffix)
            if key.endswith(suffix) and prefix in blocks:
                return int(f.get_slice(key).get_shape()[0]) == sum(blocks[prefix])
    return False


class _FusedQKVDispatch:
    """peft's custom-module hook: the fused adapter on each LLM q_proj, its parts on k_proj and v_proj.

    peft calls it for every target and takes any other layer (o_proj, the MLP, the ViT) the usual way when it
    answers None. Targets come in module order, so q_proj (the adapter) precedes k_proj and v_proj.
    """

    def __init__(self, blocks: dict[str, tuple[int, int, int]]) -> None:
        self.blocks = blocks
        self.adapters: dict[str, Any] = {}

    def __call__(self, target: nn.Module, adapter_name: str, config: Any, **kwargs: Any) -> nn.Module | None:
        match = _QKV_TARGET.fullmatch(str(kwargs.get("target_name") or ""))
        if match is None or match.group(1) not in self.blocks:
            return None
        prefix, role = match.groups()
        adapter_cls, part_cls = fused_qkv_layer_classes()
        if role == "q":
            adapter = adapter_cls(
                target,
                adapter_name,
                config,
                self.blocks[prefix],
                r=kwargs["r"],
                lora_alpha=kwargs["lora_alpha"],
            )
            self.adapters[prefix] = adapter
            return adapter
        if prefix not in self.adapters:
            raise ValueError(f"fused qkv LoRA: {prefix}.{role}_proj came before its q_proj")
        return part_cls(target, adapter_name, self.adapters[prefix], role)


class _FusedQKVPart:
    """What the fused qkv LoRA's layers share; `fused_qkv_layer_classes` makes them peft LoRA layers.

    Each wraps one of q_proj, k_proj and v_proj (its ``base_layer``) and adds its rows of B (A x), scaled,
    from the adapter on q_proj (`fused`); merging adds the same rows of B A to its own weight. The methods
    are peft's LoraLayer interface (forward, merge, unmerge, get_delta_weight).
    """

    role: str

    def _init_part(self: Any, base_layer: nn.Module, adapter_name: str, role: str) -> None:
        from peft.tuners.lora import LoraLayer

        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer)
        self.role = role
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name

    def fused(self) -> Any:
        """The layer holding A and B (on q_proj)."""
        raise NotImplementedError

    def forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("the fused qkv LoRA does not take mixed-adapter batches (adapter_names)")
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        delta = self.fused().delta(x, self.role, self.active_adapters)
        return result if delta is None else (result + delta).to(result.dtype)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """scaling x B_rows A for this layer's rows of B."""
        return self.fused().delta_weight(adapter, self.role)

    def merge(self: Any, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the active (or named) adapters' deltas to this layer's weight."""
        from peft.tuners.tuners_utils import check_adapters_to_merge

        adapter_names = check_adapters_to_merge(self, adapter_names)
        weight = self.get_base_layer().weight
        if adapter_names and getattr(weight, "quant_state", None) is not None:
            raise ValueError(
                "the fused qkv LoRA cannot merge into 4-bit weights: merge it into a full-precision base"
            )
        for adapter in adapter_names:
            if adapter not in self.fused().lora_A:
                continue
            merged = weight.data + self.get_delta_weight(adapter).to(weight.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs in the merged weights: the adapter {adapter} seems to be broken")
            weight.data = merged
            self.merged_adapters.append(adapter)

    def unmerge(self: Any) -> None:
        """Take the merged adapters' deltas out of this layer's weight again."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.fused().lora_A:
                weight.data -= self.get_delta_weight(adapter).to(weight.dtype)


class _FusedQKVAdapter(_FusedQKVPart):
    """The fused adapter, on q_proj: A (r x hidden) and B ((q + k + v) x r, rows in q, k, v order)."""

    def __init__(
        self: Any,
        base_layer: nn.Module,
        adapter_name: str,
        config: Any,
        blocks: tuple[int, int, int],
        r: int,
        lora_alpha: int,
    ) -> None:
        self._init_part(base_layer, adapter_name, "q")
        self.blocks = tuple(int(b) for b in blocks)
        # adapter -> (a weak reference to the input, A (dropout x)): from q's call to v's.
        self._projections: dict[str, tuple[weakref.ref, torch.Tensor]] = {}
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

    def fused(self) -> Any:
        return self

    def update_layer(
        self: Any, adapter_name: str, r: int, lora_alpha: int, config: Any, **kwargs: Any
    ) -> None:
        """peft's LoRA update_layer with B over the rows of q, k and v (vanilla LoRA only)."""
        from peft.tuners.lora import LoraLayer

        if config.use_dora or config.lora_bias or config.init_lora_weights not in (True, False, "gaussian"):
            raise ValueError("the fused qkv LoRA is plain LoRA: no DoRA, LoRA bias or data-driven init")
        q_features = self.out_features
        self.out_features = sum(self.blocks)
        try:
            LoraLayer.update_layer(self, adapter_name, r, lora_alpha, config, **kwargs)
        finally:
            self.out_features = q_features

    def rows(self: Any, role: str) -> slice:
        """B's rows of q, k or v."""
        index = _QKV_ROLES.index(role)
        start = sum(self.blocks[:index])
        return slice(start, start + self.blocks[index])

    def _projection(self: Any, adapter: str, x: torch.Tensor, role: str) -> torch.Tensor:
        """A (dropout x), computed at q and reused by k and v when they get the same input tensor."""
        stored = self._projections.get(adapter)
        if role != "q" and stored is not None and stored[0]() is x:
            projected = stored[1]
        else:
            lora_a = self.lora_A[adapter]
            projected = lora_a(self.lora_dropout[adapter](self._cast_input_dtype(x, lora_a.weight.dtype)))
        if role == "v":
            self._projections.pop(adapter, None)
        else:
            self._projections[adapter] = (weakref.ref(x), projected)
        return projected

    def delta(self: Any, x: torch.Tensor, role: str, adapters: Iterable[str]) -> torch.Tensor | None:
        """scaling x B_rows A (dropout x) of q, k or v, summed over `adapters` (None when none is here)."""
        out = None
        for adapter in adapters:
            if adapter not in self.lora_A:
                continue
            projected = self._projection(adapter, x, role)
            part = nn.functional.linear(projected, self.lora_B[adapter].weight[self.rows(role)])
            part = part * self.scaling[adapter]
            out = part if out is None else out + part
        return out

    def delta_weight(self: Any, adapter: str, role: str) -> torch.Tensor:
        """scaling x B_rows A, the weight change of q, k or v (computed in float32 on the CPU)."""
        weight_a = self.lora_A[adapter].weight
        weight_b = self.lora_B[adapter].weight[self.rows(role)]
        dtype = weight_a.dtype
        if weight_a.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
            weight_a, weight_b = weight_a.float(), weight_b.float()
        return ((weight_b @ weight_a) * self.scaling[adapter]).to(dtype)


class _FusedQKVShare(_FusedQKVPart):
    """k_proj's or v_proj's part: no weights of its own, its rows of the adapter on q_proj."""

    def __init__(self: Any, base_layer: nn.Module, adapter_name: str, adapter: Any, role: str) -> None:
        self._init_part(base_layer, adapter_name, role)
        self.__dict__["_fused_adapter"] = adapter  # not a submodule: it lives on q_proj

    def fused(self) -> Any:
        return self.__dict__["_fused_adapter"]

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: Any, **kwargs: Any) -> None:
        """Nothing to add for another adapter: its weights live on q_proj."""


_FUSED_QKV_CLASSES: list[type] = []


def fused_qkv_layer_classes() -> tuple[type, type]:
    """The peft LoRA layer classes of the fused qkv LoRA: (`FusedQKVLora`, `FusedQKVPart`).

    Built on first use, so that importing this module does not import peft (seconds, and bitsandbytes).
    """
    if not _FUSED_QKV_CLASSES:
        from peft.tuners.lora import LoraLayer

        for name, mixin in (("FusedQKVLora", _FusedQKVAdapter), ("FusedQKVPart", _FusedQKVShare)):
            cls = type(
                name, (mixin, nn.Module, LoraLayer), {"__module__": __name__, "__doc__": mixin.__doc__}
            )
            _FUSED_QKV_CLASSES.append(cls)
    return _FUSED_QKV_CLASSES[0], _FUSED_QKV_CLASSES[1]


def __getattr__(name: str) -> type:
    """`FusedQKVLora` and `FusedQKVPart` by name (pickle finds them so), built on first access."""
    if name in ("FusedQKVLora", "FusedQKVPart"):
        return dict(zip(("FusedQKVLora", "FusedQKVPart"), fused_qkv_layer_classes()))[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

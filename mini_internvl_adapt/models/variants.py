"""The known Mini-InternVL / InternVL variants and their facts (LLM family, template, hub id)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One model variant.

    Attributes:
        name: Short name used on the command line (``--model mini-internvl-2b``).
        hub_id: Hugging Face repository id, or None for variants built locally (``tiny-*``).
        llm_family: "qwen2", "internlm2" or "phi3": decides LoRA targets and key conversion.
        llm: The language model it was built on.
        template: Official chat template name.
        layout: "original" (remote-code checkpoint, converted on load) or "hf" (transformers-native).
        params: Approximate parameter count, for display.
    """

    name: str
    hub_id: str | None
    llm_family: str
    llm: str
    template: str
    layout: str = "original"
    params: str = ""


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "mini-internvl-1b",
            "OpenGVLab/InternVL2-1B",
            "qwen2",
            "Qwen2-0.5B-Instruct",
            "Hermes-2",
            params="0.9B",
        ),
        Variant(
            "mini-internvl-2b",
            "OpenGVLab/InternVL2-2B",
            "internlm2",
            "internlm2-chat-1.8b",
            "internlm2-chat",
            params="2.2B",
        ),
        Variant(
            "mini-internvl-4b",
            "OpenGVLab/InternVL2-4B",
            "phi3",
            "Phi-3-mini-128k-instruct",
            "phi3-chat",
            params="4.2B",
        ),
        Variant(
            "mini-internvl-1.5-2b",
            "OpenGVLab/Mini-InternVL-Chat-2B-V1-5",
            "internlm2",
            "InternLM2-1.8B",
            "internlm2-chat",
            params="2.2B",
        ),
        Variant(
            "mini-internvl-1.5-4b",
            "OpenGVLab/Mini-InternVL-Chat-4B-V1-5",
            "phi3",
            "Phi-3-mini-128k-instruct",
            "phi3-chat",
            params="4.2B",
        ),
        Variant(
            "internvl2.5-1b",
            "OpenGVLab/InternVL2_5-1B",
            "qwen2",
            "Qwen2.5-0.5B-Instruct",
            "internvl2_5",
            params="0.9B",
        ),
        Variant(
            "internvl2.5-2b",
            "OpenGVLab/InternVL2_5-2B",
            "internlm2",
            "internlm2.5-1.8b-chat",
            "internvl2_5",
            params="2.2B",
        ),
        Variant(
            "internvl2.5-4b",
            "OpenGVLab/InternVL2_5-4B",
            "qwen2",
            "Qwen2.5-3B-Instruct",
            "internvl2_5",
            params="3.7B",
        ),
        Variant(
            "internvl3-1b-hf",
            "OpenGVLab/InternVL3-1B-hf",
            "qwen2",
            "Qwen2.5-0.5B",
            "internvl2_5",
            layout="hf",
            params="0.9B",
        ),
        Variant("tiny", None, "qwen2", "random tiny Qwen2", "Hermes-2", layout="hf", params="~1M"),
        Variant("tiny-qwen2", None, "qwen2", "random tiny Qwen2", "Hermes-2", layout="hf", params="~1M"),
        Variant(
            "tiny-internlm2",
            None,
            "internlm2",
            "random tiny InternLM2 (as Llama)",
            "internlm2-chat",
            layout="hf",
            params="~1M",
        ),
        Variant("tiny-phi3", None, "phi3", "random tiny Phi-3", "phi3-chat", layout="hf", params="~1M"),
    )
}


def get_variant(name: str) -> Variant | None:
    """The variant called `name` (case-insensitive), or None when it is a path or hub id."""
    return VARIANTS.get(name.lower())

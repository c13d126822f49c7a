"""Chat templates reproduce the official InternVL conversation strings exactly, system messages included."""

from __future__ import annotations

import pytest

from mini_internvl_adapt.models.templates import (
    INTERNVL2_5_SYSTEM_MESSAGE,
    INTERNVL_SYSTEM_MESSAGE,
    get_template,
)
from mini_internvl_adapt.schema import Turn

CONV = [Turn("human", "<image>\nQ1"), Turn("gpt", "A1"), Turn("human", "Q2"), Turn("gpt", "A2")]

EXPECTED = {
    "Hermes-2": (
        f"<|im_start|>system\n{INTERNVL_SYSTEM_MESSAGE}<|im_end|><|im_start|>user\n<image>\nQ1<|im_end|>"
        "<|im_start|>assistant\nA1<|im_end|><|im_start|>user\nQ2<|im_end|><|im_start|>assistant\nA2<|im_end|>"
    ),
    "internlm2-chat": (
        f"<|im_start|>system\n{INTERNVL_SYSTEM_MESSAGE}<|im_end|><|im_start|>user\n<image>\nQ1<|im_end|>"
        "<|im_start|>assistant\nA1<|im_end|><|im_start|>user\nQ2<|im_end|><|im_start|>assistant\nA2<|im_end|>"
    ),
    "phi3-chat": (
        f"<|system|>\n{INTERNVL_SYSTEM_MESSAGE}<|end|><|user|>\n<image>\nQ1<|end|><|assistant|>\nA1<|end|>"
        "<|user|>\nQ2<|end|><|assistant|>\nA2<|end|>"
    ),
    "internvl2_5": (
        f"<|im_start|>system\n{INTERNVL2_5_SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n<image>\nQ1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n"
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_render_matches_official_string(name: str) -> None:
    assert get_template(name).render(CONV) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_only_replies_and_their_end_of_turn_token_are_trained(name: str) -> None:
    template = get_template(name)
    trained = [text for text, is_trained in template.segments(CONV) if is_trained]
    end_of_turn = {"Hermes-2": "<|im_end|>", "internlm2-chat": "<|im_end|>", "internvl2_5": "<|im_end|>"}.get(
        name, "<|end|>"
    )
    # internvl2_5's "\n" after <|im_end|> is masked, as the official preprocess_internvl2_5 does.
    assert trained == ["A1" + end_of_turn, "A2" + end_of_turn]


def test_generation_prompt_ends_with_assistant_role_and_system_turn_overrides() -> None:
    template = get_template("Hermes-2")
    prompt = template.render([Turn("system", "Be brief."), Turn("human", "Q")])
    assert (
        prompt
        == "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nQ<|im_end|><|im_start|>assistant\n"
    )
    assert template.render([Turn("human", "Q")], system_message="S").startswith(
        "<|im_start|>system\nS<|im_end|>"
    )


def test_unknown_template_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="Hermes-2"):
        get_template("vicuna")

"""Chat templates reproduce the official InternVL conversation strings exactly, system messages included."""

from __future__ import annotations

import pytest

from mini_internvl_adapt.data_format.samples import Turn
from mini_internvl_adapt.models.templates import (
    INTERNVL2_5_SYSTEM_MESSAGE,
    INTERNVL_SYSTEM_MESSAGE,
    get_template,
)

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


def test_internlm2_chat_strips_messages_as_the_official_preprocessing() -> None:
    # preprocess_internlm strips every user and assistant value; the other templates keep them as given.
    conversation = [
        Turn("human", "  <image>\nWhat is it? \n"),
        Turn("gpt", " A car.\n"),
        Turn("human", "Why?\n"),
    ]
    internlm = get_template("internlm2-chat")
    assert internlm.render(conversation) == (
        f"<|im_start|>system\n{INTERNVL_SYSTEM_MESSAGE}<|im_end|><|im_start|>user\n<image>\nWhat is it?<|im_end|>"
        "<|im_start|>assistant\nA car.<|im_end|><|im_start|>user\nWhy?<|im_end|><|im_start|>assistant\n"
    )
    assert [text for text, trained in internlm.segments(conversation) if trained] == ["A car.<|im_end|>"]
    assert "What is it? \n<|im_end|>" in get_template("Hermes-2").render(conversation)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exported_jinja_template_renders_the_training_prompt(name: str) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    from mini_internvl_adapt.processing.hf_files import chat_template_jinja

    template = get_template(name)
    conversation = [
        Turn("human", " <image>\nWhat is it? \n"),
        Turn("gpt", " A car.\n"),
        Turn("human", "Why? "),
    ]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it? \n"}]},
        {"role": "assistant", "content": " A car.\n"},
        {"role": "user", "content": "Why? "},
    ]
    if not template.strip_values:  # the leading space before <image> only exists in string content
        conversation[0] = Turn("human", "<image>\nWhat is it? \n")
    rendered = render_jinja_template(
        [messages], chat_template=chat_template_jinja(template), add_generation_prompt=True
    )[0][0]
    assert rendered == template.render(conversation).replace("<image>", "<IMG_CONTEXT>")

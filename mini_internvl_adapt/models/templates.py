"""InternVL chat templates (MPT style), reproducing the official conversation strings exactly.

MPT style: ``system_template.format(system) + sep``, then for each turn ``role + message + sep``;
a generation prompt ends with the assistant role and no message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mini_internvl_adapt.data_format.samples import GPT, HUMAN, SYSTEM, Turn
from mini_internvl_adapt.errors import UnknownTemplateError

INTERNVL_SYSTEM_MESSAGE = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
INTERNVL2_5_SYSTEM_MESSAGE = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

# The image strings of the InternVL family: each image becomes IMG_START + IMG_CONTEXT x N + IMG_END.
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"


@dataclass(frozen=True)
class ChatTemplate:
    """One official InternVL conversation template.

    Attributes:
        name: The template name used in InternVL configs ("Hermes-2", "internlm2-chat", ...).
        system_template: Format string with ``{system_message}``.
        system_message: Default system message.
        user_role: Prefix of a user turn.
        assistant_role: Prefix of an assistant turn.
        sep: Appended after the system block and after every message.
        strip_values: Strip each user and assistant message first, as the official preprocessing of
            this template does (preprocess_internlm: ``sentence['value'].strip()``).
    """

    name: str
    system_template: str
    system_message: str
    user_role: str
    assistant_role: str
    sep: str
    strip_values: bool = False

    def segments(
        self, conversations: Sequence[Turn], system_message: str | None = None
    ) -> list[tuple[str, bool]]:
        """Render a conversation as (text, trained) segments; concatenated they are the official prompt.

        Only assistant replies and the end-of-turn token that ends them are trained (not a newline after
        it); a leading system turn in the conversation replaces the system message.
        """
        turns = list(conversations)
        system = self.system_message if system_message is None else system_message
        if turns and turns[0].role == SYSTEM:
            system = turns.pop(0).value
        segments: list[tuple[str, bool]] = [
            (self.system_template.format(system_message=system) + self.sep, False)
        ]
        for turn in turns:
            value = turn.value.strip() if self.strip_values else turn.value
            if turn.role == HUMAN:
                segments.append((self.user_role + value + self.sep + self.assistant_role, False))
            elif turn.role == GPT:
                # The end-of-turn token is trained; a newline after it (internvl2_5) is not, as officially.
                end_of_turn = self.sep.rstrip("\n")
                segments.append((value + end_of_turn, True))
                if end_of_turn != self.sep:
                    segments.append((self.sep[len(end_of_turn) :], False))
            else:
                raise ValueError(f"unexpected role '{turn.role}' in a conversation")
        return segments

    def render(self, conversations: Sequence[Turn], system_message: str | None = None) -> str:
        """The full prompt string; ends with the assistant role when the last turn is human."""
        return "".join(text for text, _ in self.segments(conversations, system_message))


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate(
            name="Hermes-2",
            system_template="<|im_start|>system\n{system_message}",
            system_message=INTERNVL_SYSTEM_MESSAGE,
            user_role="<|im_start|>user\n",
            assistant_role="<|im_start|>assistant\n",
            sep="<|im_end|>",
        ),
        ChatTemplate(
            name="internlm2-chat",
            system_template="<|im_start|>system\n{system_message}",
            system_message=INTERNVL_SYSTEM_MESSAGE,
            user_role="<|im_start|>user\n",
            assistant_role="<|im_start|>assistant\n",
            sep="<|im_end|>",
            strip_values=True,
        ),
        ChatTemplate(
            name="phi3-chat",
            system_template="<|system|>\n{system_message}",
            system_message=INTERNVL_SYSTEM_MESSAGE,
            user_role="<|user|>\n",
            assistant_role="<|assistant|>\n",
            sep="<|end|>",
        ),
        ChatTemplate(
            name="internvl2_5",
            system_template="<|im_start|>system\n{system_message}",
            system_message=INTERNVL2_5_SYSTEM_MESSAGE,
            user_role="<|im_start|>user\n",
            assistant_role="<|im_start|>assistant\n",
            sep="<|im_end|>\n",
        ),
    )
}


def get_template(name: str) -> ChatTemplate:
    """Look up a template by its official name; the error lists the known ones."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UnknownTemplateError(f"unknown chat template '{name}'; known: {', '.join(TEMPLATES)}") from None

"""The one rule for free text a converter puts into a conversation: no string of the model's template.

Labels, manifest questions and answers, reports and DriveLM QA text come from the user's sources. Written
verbatim, an ``<image>`` in them would count as an image placeholder (the dataset then fails to load), and a
``<box>``, ``<IMG_CONTEXT>`` or ``<|im_end|>`` would reach the tokenizer as a special token. Every such
string is escaped by a space after its ``<`` (``<image>`` -> ``< image>``): the text keeps its meaning and
no longer holds the special string. Converters call `ConversionReport.free_text`, which applies this rule
and records each rewrite in report.json.
"""

from __future__ import annotations

import re

# The InternVL image and grounding tokens, the sentencepiece control tokens of InternLM2 / Phi-3, and every
# chat-template token of the form <|name|> (<|im_start|>, <|im_end|>, <|user|>, <|end|>, <|endoftext|> ...).
SPECIAL_STRINGS = (
    "<image>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<quad>",
    "</quad>",
    "<s>",
    "</s>",
    "<unk>",
)
_NAMES = "|".join(re.escape(s[1:-1]) for s in SPECIAL_STRINGS)
_SPECIAL = re.compile(rf"<(?=(?:{_NAMES}|\|[^<>|\s]{{1,40}}\|)>)")
_FOUND = re.compile(rf"<(?:{_NAMES}|\|[^<>|\s]{{1,40}}\|)>")


def special_strings(text: str) -> list[str]:
    """The template's special strings in `text`, each once, in order of first appearance."""
    return list(dict.fromkeys(_FOUND.findall(text)))


def clean_free_text(text: str) -> tuple[str, bool]:
    """Escape every special string of the template in `text` (``<image>`` -> ``< image>``).

    Args:
        text: Free text from a source (a label, a question, an answer, a report).

    Returns:
        The text without any special string, and whether anything was rewritten.
    """
    cleaned = _SPECIAL.sub("< ", text)
    return cleaned, cleaned != text

"""VLMEvalKit's multiple-choice answer extraction without an LLM judge (``exact_matching``).

Rules of ``vlmeval/utils/matching_util.py`` (``can_infer_option``, ``can_infer_text``, ``can_infer``) and
``extract_answer_from_item`` in ``vlmeval/dataset/utils/multiple_choice.py``, at VLMEvalKit commit
e8e78f05 (the mirror this package was checked against):

1. An answer containing "Failed to obtain answer via API" infers nothing; one containing a refusal phrase
   infers "Z".
2. The answer with ``.()[],:;!*#{}`` replaced by spaces is split on whitespace; when exactly one option
   letter is among the words and it is among the last four words, that letter is the answer; when no
   option letter is there but "Z" is, the answer is "Z".
3. Else "answer is X" / "correct answer is X" (X in A-D, any case, optional ``**``) gives X when X is an
   option.
4. Else, unless the answer is longer than twice the options' total length, the one option whose text
   (lower case) is inside the answer (lower case) is the answer.
5. Nothing inferred: the answer is "Z" (no judge), which matches no ground truth.

VLMEvalKit skips its "A might be a quantifier" check unless the VERBOSE environment variable is set; it is
skipped here always, so a score does not depend on the environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

API_FAILURE = "Failed to obtain answer via API"
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_PUNCTUATION = ".()[],:;!*#{}"
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
NO_ANSWER = "Z"


def can_infer_option(answer: str, choices: Mapping[str, str]) -> str | None:
    """The option letter the answer names (rules 1-3), "Z", or None when it names none."""
    if API_FAILURE in answer:
        return None
    if any(refusal in answer for refusal in REFUSALS):
        return NO_ANSWER
    cleaned = answer
    for char in _PUNCTUATION:
        cleaned = cleaned.replace(char, " ")
    splits = [x.strip() for x in cleaned.split()]
    count = sum(1 for c in choices if c in splits)
    if count == 1:
        for ch in choices:
            if ch in splits and splits.index(ch) > len(splits) - 5:
                return ch
    elif count == 0 and NO_ANSWER in splits:
        return NO_ANSWER
    match = _VERBOSE_ANSWER.search(answer)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def can_infer_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """The one option whose text is inside the answer (rule 4), or None."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    candidates = [k for k, v in choices.items() if str(v).lower() in answer]
    return candidates[0] if len(candidates) == 1 else None


def can_infer(answer: str, choices: Mapping[str, str]) -> str | None:
    """``can_infer``: option letters first, then option texts; None when neither infers an answer."""
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def extract_option(answer: str, choices: Mapping[str, str]) -> str:
    """The option VLMEvalKit scores for an answer without a judge: the inferred letter, else "Z"."""
    return can_infer(answer, choices) or NO_ANSWER

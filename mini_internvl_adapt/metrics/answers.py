"""Answer metrics shared by the VQA-style domains: normalisation, exact match, token recall,
closed (yes/no) answers, multiple-choice letter extraction and classification scores.

Every function is strict on purpose: an answer that cannot be parsed scores as wrong, and nothing
is matched by substring (the LLaVA-Med evaluation counted "normal" as "no").
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

# Punctuation becomes a space, except a decimal point between digits ("2.5 cm" keeps its number).
_PUNCT = re.compile(rf"(?<!\d)\.|\.(?!\d)|[{re.escape(string.punctuation.replace('.', ''))}]")
_SPACES = re.compile(r"\s+")
# Quotes, brackets and markdown emphasis may wrap the yes/no word ('"Yes"', "(no)", "**No**").
_WRAP_OPEN = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb\u201e([{<*_"
_WRAP_CLOSE = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb)]}>*_"
# A leading yes/no, its closing wrappers, then the end or one of , . ; : ! (anything may follow those).
_CLOSED = re.compile(
    rf"^\s*[{re.escape(_WRAP_OPEN)}\s]*(yes|no)[{re.escape(_WRAP_CLOSE)}]*\s*(?:$|[,.;:!])",
    re.IGNORECASE,
)
_LETTER_ALONE = re.compile(r"^\s*[\(\[]?([A-Za-z])[\)\]]?\s*[.:)]?\s*$")
_LETTER_LEADING = re.compile(r"^\s*(?:\(([A-Za-z])\)|([A-Za-z])\s*[.:)])")
# A lower-case letter after "answer is" counts only at the very end ("the answer is a lesion" picks nothing).
_LETTER_PHRASE = re.compile(
    r"\b(?i:answer|option|choice)\s*(?i:is|would be)?\s*:?\s*(?i:option\s*)?"
    r"(?:[\(\[]([A-Za-z])[\)\]]|([A-Z])(?=$|[\s.,:;!)])|([a-z])(?=\s*[.!]?\s*$))"
)


def normalize_answer(text: str) -> str:
    """Lower-case, Unicode-compatibility fold, punctuation to spaces, whitespace collapsed.

    Args:
        text: Any answer text.

    Returns:
        The normalised text ("Left  Lung." -> "left lung"; "2.5 cm" keeps "2.5").
    """
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = _PUNCT.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def exact_match(pred: str, gold: str) -> bool:
    """Whether two answers are equal after `normalize_answer`."""
    return normalize_answer(pred) == normalize_answer(gold)


def token_recall(pred: str, gold: str) -> float:
    """Token recall of an open answer, as the LLaVA-Med evaluation defines it.

    Both texts are normalised and split on whitespace. With counts c (prediction) and r (reference),
    tp sums c[w] over words in both, fn sums r[w] over reference words missing from the prediction;
    recall = tp / (tp + fn). An empty prediction or reference scores 0.

    Args:
        pred: The predicted answer.
        gold: The reference answer.

    Returns:
        A value in [0, 1].
    """
    cand = Counter(normalize_answer(pred).split())
    ref = Counter(normalize_answer(gold).split())
    if not cand or not ref:
        return 0.0
    tp = sum(n for w, n in cand.items() if w in ref)
    fn = sum(n for w, n in ref.items() if w not in cand)
    return tp / (tp + fn) if tp + fn else 0.0


def closed_answer(text: str) -> str | None:
    """The yes/no a closed answer gives, or None when it gives neither.

    The rule (after Unicode NFKC folding, any case): optional leading whitespace, quotes, opening
    brackets or ``*``/``_``; the word "yes" or "no"; optional closing quotes, brackets or ``*``/``_``;
    then either the end of the text or one of ``, . ; : !`` (after which anything may follow).
    So '"Yes"', "(no)", "yes;", "No!", "Yes, there is" and "Yes. There is a mass." parse, while
    "normal", "not sure", "nothing", "yes and no", "Yes there is", "yes?" and "yes/no" return None.

    Args:
        text: The answer text.

    Returns:
        "yes", "no" or None.
    """
    match = _CLOSED.match(unicodedata.normalize("NFKC", str(text)))
    return match.group(1).lower() if match else None


def extract_choice(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter a multiple-choice answer picks, or None when it picks none unambiguously.

    Accepts "B", "B.", "(B)", "B) text", "B. text", "The answer is B", "Answer: (B)", or the text of
    exactly one option ("left lung", matched after normalisation, whole words only).

    Args:
        text: The answer text.
        options: Option letter -> option text (e.g. {"A": "CT", "B": "MRI"}).

    Returns:
        The letter as spelled in `options`, or None.
    """
    letters = {k.strip().upper(): k for k in options}
    for pattern in (_LETTER_ALONE, _LETTER_LEADING):
        match = pattern.match(text)
        if match:
            letter = next(g for g in match.groups() if g).upper()
            if letter in letters:
                return letters[letter]
    found = {next(g for g in m.groups() if g).upper() for m in _LETTER_PHRASE.finditer(text)} & set(letters)
    if len(found) == 1:
        return letters[found.pop()]
    norm = normalize_answer(text)
    texts = {k: normalize_answer(v) for k, v in options.items() if normalize_answer(v)}
    exact = [k for k, v in texts.items() if v == norm]
    if len(exact) == 1:
        return exact[0]
    padded = f" {norm} "
    contained = [k for k, v in texts.items() if f" {v} " in padded]
    # Keep the longest contained option only if every other contained one is part of it ("lung" in "left lung").
    if contained:
        longest = max(contained, key=lambda k: len(texts[k]))
        if all(f" {texts[k]} " in f" {texts[longest]} " for k in contained):
            return longest
    return None


def classification_metrics(golds: Sequence[str], preds: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class recall of predicted labels.

    Labels compare after `normalize_answer`. The classes are the gold labels; a prediction outside
    them is simply wrong (it lowers recall, and adds no class of its own to the macro average).

    Args:
        golds: Reference labels.
        preds: Predicted labels, same length.

    Returns:
        {"count", "accuracy", "macro_f1", "per_class_recall": {gold label: recall}, "per_class_count"}.

    Raises:
        ValueError: When the lengths differ.
    """
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold labels but {len(preds)} predictions")
    if not golds:
        return {"count": 0, "accuracy": 0.0, "macro_f1": 0.0, "per_class_recall": {}, "per_class_count": {}}
    display: dict[str, str] = {}
    for g in golds:
        display.setdefault(normalize_answer(g), g)
    g_norm = [normalize_answer(g) for g in golds]
    p_norm = [normalize_answer(p) for p in preds]
    support = Counter(g_norm)
    predicted = Counter(p_norm)
    hits = Counter(g for g, p in zip(g_norm, p_norm) if g == p)
    recall, f1 = {}, []
    for cls in support:
        r = hits[cls] / support[cls]
        p = hits[cls] / predicted[cls] if predicted[cls] else 0.0
        recall[display[cls]] = r
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return {
        "count": len(golds),
        "accuracy": sum(hits.values()) / len(golds),
        "macro_f1": sum(f1) / len(f1),
        "per_class_recall": dict(sorted(recall.items())),
        "per_class_count": {display[c]: n for c, n in sorted(support.items())},
    }

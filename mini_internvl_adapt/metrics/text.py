"""Caption metrics with the semantics of the COCO caption evaluation (pycocoevalcap).

- Tokenisation follows pycocoevalcap's PTBTokenizer: the Stanford PTB tokenizer (``-preserveLines
  -lowerCase``), then every token in its punctuation list is dropped. The Java tokenizer is emulated
  here in pure Python for the constructs captions, reports and DriveLM answers use (contractions,
  numbers, abbreviations, brackets, quotes, DriveLM object tags); its quirks are kept on purpose
  (brackets become ``-lrb-`` and survive, because pycocoevalcap lists them upper-case).
- BLEU-1..4: corpus level, clipped n-gram counts, brevity penalty from the reference length closest to
  each hypothesis (ties to the shorter), the same ``1e-15`` / ``1e-9`` smoothing constants.
- ROUGE-L: LCS F-measure with beta 1.2 against the best reference precision and recall, averaged.
- CIDEr-D: n = 4, Gaussian length penalty sigma 6, idf over the evaluated references, clipped
  tf-idf, x10, averaged (the coco-caption ``Cider`` scorer, which is CIDEr-D).
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

# pycocoevalcap's list: compared case-sensitively with lower-cased tokens, so -lrb- etc. survive.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Unicode punctuation the PTB tokenizer maps to its ASCII forms.
_UNICODE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2014": " -- ",
        "\u2013": " -- ",
        "\u00a0": " ",
    }
)
# Abbreviations that keep their period when followed by more text (PTBLexer's lists, the common part).
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "jr",
        "sr",
        "rev",
        "gen",
        "sen",
        "rep",
        "gov",
        "col",
        "capt",
        "lt",
        "sgt",
        "mt",
        "ft",
        "ave",
        "blvd",
        "rd",
        "etc",
        "vs",
        "inc",
        "corp",
        "co",
        "ltd",
        "bros",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "sat",
        "sun",
    }
)
# Words the PTB tokenizer splits in two.
_SPLIT_WORDS = {
    "cannot": ["can", "not"],
    "gonna": ["gon", "na"],
    "gotta": ["got", "ta"],
    "wanna": ["wan", "na"],
}

# Candidate token patterns; at each position the longest match wins (ties: the earlier pattern), as in
# the JFlex lexer behind the Java tokenizer.
_PATTERNS = [
    re.compile(r"</?[a-z!?][^>\r\n,]*>"),  # SGML/XML tag (a DriveLM tag "<c1,cam_back,...>" is not one)
    re.compile(r"(?:https?|ftp)://[^\s<>\"]+|www\.[^\s<>\"]+\.[a-z]{2,}[^\s<>\"]*"),
    re.compile(r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}|@[a-z0-9_]+"),
    re.compile(r"[-+]?\d*(?:[.:,]\d+)+|[-+]?\d+"),  # numbers: 5, 3.5, 2,000, 10:30, ",1088.3,497.5"
    re.compile(r"[a-z](?:\.[a-z])+\.?"),  # acronyms: u.s., e.g., a.m.
    re.compile(r"[a-z][a-z0-9]*(?:\.[a-z][a-z0-9]*)+"),  # dotted words: x.y.z
    re.compile(r"[a-z0-9]+(?:[-_/][a-z0-9]+)*(?:'(?!(?:ll|re|ve)(?![a-z]))[a-z]{2,}(?:[-_/][a-z0-9]+)*)?"),
    re.compile(r"[a-z]+&[a-z]+"),  # at&t, r&d
    re.compile(r"n't|'(?:s|ll|re|m|ve|d)(?![a-z0-9])"),  # contraction endings
    re.compile(r"\.{3,}|\.\.|[!?]+|--+|&[a-z]+;|[^\sa-z0-9]"),  # punctuation runs and single symbols
]
_NT = re.compile(r"([a-z])n't(?![a-z])", re.IGNORECASE)
_WS = re.compile(r"\s+")


def _longest_match(text: str, pos: int) -> str:
    best = ""
    for pattern in _PATTERNS:
        m = pattern.match(text, pos)
        if m is not None and len(m.group(0)) > len(best):
            best = m.group(0)
    return best or text[pos]


def ptb_tokenize(text: str) -> list[str]:
    """Tokenise one caption like the Stanford PTB tokenizer run with ``-preserveLines -lowerCase``.

    Args:
        text: A caption or answer (newlines are treated as spaces, as pycocoevalcap does).

    Returns:
        The tokens, punctuation included (see `tokenize` for the evaluation form).
    """
    # "can't" -> "ca n't": the contraction is split before the word is matched.
    cased = _NT.sub(r"\1 n't", text.translate(_UNICODE).replace("\n", " "))
    text = cased.lower()
    if len(text) != len(cased):  # a rare letter whose lower case is longer: case is not looked at then
        cased = text
    tokens: list[str] = []
    pos, n = 0, len(text)
    while pos < n:
        ws = _WS.match(text, pos)
        if ws is not None:
            pos = ws.end()
            continue
        token = _longest_match(text, pos)
        pos += len(token)
        if _keeps_period(token, text, cased, pos):
            # An abbreviation keeps its period ("dr. smith", "etc.", "no. 5").
            token += "."
            pos += 1
        tokens.extend(_post_process(token, text, pos))
    return tokens


_NUMBER_AFTER_PERIOD = re.compile(r"\.\s+\d")
_PERIOD_ENDS_WORD = re.compile(r"\.(?!\w)")
_NEXT_WORD = re.compile(r"\.\s+([A-Za-z]+)(?=\s|$)")
# Capitalised, these words start a new sentence after an initial ("x. The car"), as observed in the Java
# tokenizer (CoreNLP 3.4.1, which pycocoevalcap runs); "x. Car" keeps "x." whole.
_SENTENCE_STARTS = frozenset({
    "a", "about", "after", "an", "as", "at", "but", "he", "her", "here", "however", "if", "in", "it",
    "many", "more", "now", "once", "one", "other", "our", "she", "since", "so", "some", "such", "that",
    "the", "their", "then", "there", "these", "they", "this", "we", "what", "when", "while", "yet", "you",
})  # fmt: skip
# "sat." / "sun." are read as a sentence end (unless , ; or : follows), unlike the other abbreviations.
_SENTENCE_FINAL_WORDS = frozenset({"sat", "sun"})


def _keeps_period(word: str, text: str, cased: str, end: int) -> bool:
    """Whether `word` (matched in lower-case `text`, ending at `end`) takes the period after it, as the Java
    tokenizer does; `cased` is the same text before lower-casing."""
    if not word[-1].isalnum():
        return False
    if text[end : end + 2] in (".,", ".;", ".:") and "." not in word:  # "cars.," reads as an abbreviation
        return True
    if word in _SENTENCE_FINAL_WORDS:
        return False
    if len(word) == 1 and word.isalpha():  # an initial, unless a sentence starts after it: "x. It is"
        after = _NEXT_WORD.match(cased, end)
        starts_sentence = after is not None and after[1][0].isupper() and after[1].lower() in _SENTENCE_STARTS
        return _PERIOD_ENDS_WORD.match(text, end) is not None and not starts_sentence
    if word in _ABBREVIATIONS:  # "etc.", "dr. smith"
        # At the end of the text too: the sentence-final period is then implied, not split off.
        return _PERIOD_ENDS_WORD.match(text, end) is not None
    return word == "no" and _NUMBER_AFTER_PERIOD.match(text, end) is not None


def _post_process(token: str, text: str, end: int) -> list[str]:
    """Map one lexer match to output tokens (brackets, quotes, abbreviations, split words)."""
    if token in _BRACKETS:
        return [_BRACKETS[token]]
    if token == '"':
        # Opening quote at the start or after a space/bracket, closing otherwise.
        before = text[end - 2] if end >= 2 else " "
        return ["``" if before.isspace() or before in "([{" else "''"]
    if token.startswith("&") and token.endswith(";"):
        return [html.unescape(token)]
    if token in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[token])
    if token == "." or token == "..":
        return ["."] * len(token)
    if len(token) > 3 and set(token) == {"."}:
        return ["..."]
    if token.startswith("--"):
        return ["--"]
    return [token]


def tokenize(text: str) -> str:
    """The evaluation form of a caption: PTB tokens without pycocoevalcap's punctuation, space-joined."""
    return " ".join(t for t in ptb_tokenize(text) if t not in PUNCTUATIONS)


def _ngrams(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def bleu(references: Sequence[Sequence[str]], hypotheses: Sequence[str], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n as coco-caption's BleuScorer computes it (option "closest").

    Args:
        references: For each item, its tokenised reference strings.
        hypotheses: For each item, its tokenised hypothesis string.
        n: Highest n-gram order.

    Returns:
        [BLEU-1, ..., BLEU-n].
    """
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * n, [0] * n
    test_total = ref_total = 0
    for refs, hyp in zip(references, hypotheses):
        words = hyp.split()
        test_len = len(words)
        ref_words = [r.split() for r in refs]
        # Closest reference length, ties to the shorter one.
        ref_len = min((abs(len(r) - test_len), len(r)) for r in ref_words)[1]
        max_counts: dict[tuple[str, ...], int] = {}
        for r in ref_words:
            for gram, c in _ngrams(r, n).items():
                max_counts[gram] = max(max_counts.get(gram, 0), c)
        for gram, c in _ngrams(words, n).items():
            correct[len(gram) - 1] += min(max_counts.get(gram, 0), c)
        for k in range(n):
            guess[k] += max(0, test_len - k)
        test_total += test_len
        ref_total += ref_len
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_total + tiny) / (ref_total + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(references: Sequence[Sequence[str]], hypotheses: Sequence[str], beta: float = 1.2) -> float:
    """Mean ROUGE-L F-measure (coco-caption's Rouge: best precision and best recall over references)."""
    if not hypotheses:
        return 0.0
    total = 0.0
    for refs, hyp in zip(references, hypotheses):
        words = hyp.split()
        if not words:
            continue  # an empty answer scores 0 (coco-caption would divide by zero)
        precisions, recalls = [], []
        for r in refs:
            ref_words = r.split()
            lcs = _lcs(ref_words, words)
            precisions.append(lcs / len(words))
            recalls.append(lcs / len(ref_words) if ref_words else 0.0)
        best_p, best_r = max(precisions), max(recalls)
        if best_p and best_r:
            total += (1 + beta**2) * best_p * best_r / (best_r + beta**2 * best_p)
    return total / len(hypotheses)


def cider_d(
    references: Sequence[Sequence[str]], hypotheses: Sequence[str], n: int = 4, sigma: float = 6.0
) -> float:
    """Mean CIDEr-D (coco-caption's Cider scorer) over the items; idf comes from these references."""
    if not hypotheses:
        return 0.0
    ref_counts = [[_ngrams(r.split(), n) for r in refs] for refs in references]
    hyp_counts = [_ngrams(h.split(), n) for h in hypotheses]
    doc_freq: Counter[tuple[str, ...]] = Counter()
    for counts in ref_counts:
        doc_freq.update({gram for c in counts for gram in c})
    log_items = math.log(float(len(references)))

    def vectorise(counts: Counter[tuple[str, ...]]) -> tuple[list[dict], list[float], int]:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            vec[k][gram] = tf * (log_items - math.log(max(1.0, doc_freq[gram])))
            norm[k] += vec[k][gram] ** 2
            if k == 1:
                length += tf  # coco-caption counts bigrams as the length; kept for equal scores
        return vec, [math.sqrt(x) for x in norm], length

    total = 0.0
    for hyp, refs in zip(hyp_counts, ref_counts):
        h_vec, h_norm, h_len = vectorise(hyp)
        score = [0.0] * n
        for ref in refs:
            r_vec, r_norm, r_len = vectorise(ref)
            penalty = math.exp(-((h_len - r_len) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(v, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0) for g, v in h_vec[k].items())
                if h_norm[k] != 0 and r_norm[k] != 0:
                    val /= h_norm[k] * r_norm[k]
                score[k] += val * penalty
        total += sum(score) / n / len(refs) * 10.0
    return total / len(hypotheses)


def caption_metrics(
    references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]
) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of predictions against references, COCO caption semantics.

    Args:
        references: Item id -> its reference captions (at least one each).
        predictions: Item id -> predicted caption. Ids of `references` without a prediction are scored
            as an empty answer; prediction ids without references are ignored.

    Returns:
        {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"} (all 0.0 for no items).

    Raises:
        ValueError: An item has no reference.
    """
    ids = list(references)
    empty = [i for i in ids if not references[i]]
    if empty:
        raise ValueError(f"{len(empty)} item(s) have no reference caption, e.g. '{empty[0]}'")
    if not ids:
        return {"bleu_1": 0.0, "bleu_2": 0.0, "bleu_3": 0.0, "bleu_4": 0.0, "rouge_l": 0.0, "cider": 0.0}
    refs = [[tokenize(r) for r in references[i]] for i in ids]
    hyps = [tokenize(predictions.get(i, "")) for i in ids]
    b = bleu(refs, hyps)
    return {
        "bleu_1": b[0],
        "bleu_2": b[1],
        "bleu_3": b[2],
        "bleu_4": b[3],
        "rouge_l": rouge_l(refs, hyps),
        "cider": cider_d(refs, hyps),
    }

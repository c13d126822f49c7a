"""Caption metrics (metrics/text.py): hand-computed cases, and agreement with pycocoevalcap when present."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import shutil

import pytest

from mini_internvl_adapt.metrics.text import bleu, caption_metrics, cider_d, ptb_tokenize, rouge_l, tokenize


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Outputs of the Stanford PTB tokenizer 3.4.1 (-preserveLines -lowerCase), punctuation dropped.
        (
            "The IDs of these objects are <c1,CAM_BACK,1088.3,497.5>, and <c3,CAM_FRONT,1043.2,82.2>.",
            "the ids of these objects are < c1 cam_back ,1088.3,497.5 > and < c3 cam_front ,1043.2,82.2 >",
        ),
        ("x. It's a car's (left) lane; don't go.", "x. it 's a car 's -lrb- left -rrb- lane do n't go"),
        # An abbreviation keeps its period at the end of the text and before punctuation; so does any word
        # before , ; or :, and an initial unless a sentence-starting word follows it.
        ("There are cars, trucks, etc.", "there are cars trucks etc."),
        ("See Dr. Smith or the Dr.)", "see dr. smith or the dr. -rrb-"),
        ("Open on Sat. Closed on Sun., Mon.", "open on sat closed on sun. mon."),
        ("A car., then no. 5 and no.", "a car. then no. 5 and no"),
        ("Lane x. The car in lane y. Car z.", "lane x the car in lane y. car z."),
        ("Dr. Smith saw 3.5cm, e.g. U.S. cannot", "dr. smith saw 3.5 cm e.g. u.s. can not"),
        (
            'A "red" car -- at 10:30 -- turns left/right: 2,000 m away!',
            "a red car at 10:30 turns left/right 2,000 m away",
        ),
        ("Gonna see \u201cit\u201d \u2014 the x-ray&amp;CT", "gon na see it the x-ray & ct"),
    ],
)
def test_tokenize_matches_ptb_tokenizer_output(text: str, expected: str) -> None:
    assert tokenize(text) == expected


def test_ptb_tokenize_keeps_punctuation_tokens() -> None:
    assert ptb_tokenize("Stop. Go?") == ["stop", ".", "go", "?"]
    assert ptb_tokenize("No. 5 and no. Then") == ["no.", "5", "and", "no", ".", "then"]


def test_bleu_hand_computed() -> None:
    # ref 6 words, hyp 5: precisions 5/5, 3/4, 2/3, 1/2; brevity penalty exp(1 - 6/5).
    scores = bleu([["the cat sat on the mat"]], ["the cat sat on mat"])
    bp = math.exp(1 - 6 / 5)
    expected = [
        bp,
        math.sqrt(3 / 4) * bp,
        (3 / 4 * 2 / 3) ** (1 / 3) * bp,
        (3 / 4 * 2 / 3 * 1 / 2) ** 0.25 * bp,
    ]
    assert scores == pytest.approx(expected, rel=1e-9)


def test_bleu_closest_reference_length_ties_to_shorter() -> None:
    # Hyp of 5 words, refs of 3 and 7 words: both 2 away, the shorter (3) is used -> no brevity penalty.
    scores = bleu([["a b c", "a b c d e f g"]], ["a b c d e"])
    assert scores[0] == pytest.approx(1.0, rel=1e-9)
    # With only the 7-word ref the penalty applies.
    assert bleu([["a b c d e f g"]], ["a b c d e"])[0] == pytest.approx(math.exp(1 - 7 / 5), rel=1e-9)


def test_bleu_is_corpus_level_not_mean_of_sentences() -> None:
    refs, hyps = [["a b c d"], ["e f g h"]], ["a b c d", "x y"]
    # Corpus unigram precision 4/6 and length ratio 6/8, not the mean of two sentence scores.
    assert bleu(refs, hyps)[0] == pytest.approx(4 / 6 * math.exp(1 - 8 / 6), rel=1e-9)


def test_rouge_l_hand_computed() -> None:
    # LCS 5; P = 1, R = 5/6; F = (1 + 1.2^2) P R / (R + 1.2^2 P).
    p, r = 1.0, 5 / 6
    expected = (1 + 1.44) * p * r / (r + 1.44 * p)
    assert rouge_l([["the cat sat on the mat"]], ["the cat sat on mat"]) == pytest.approx(expected)
    # Averaged over items; an unrelated answer scores 0.
    assert rouge_l([["the cat sat on the mat"], ["a b"]], ["the cat sat on mat", "x"]) == pytest.approx(
        expected / 2
    )


def test_cider_d_hand_computed() -> None:
    # Two items so idf = log(2) for every n-gram. Identical 2-word captions: n=1 and n=2 cosines are 1,
    # n=3,4 are empty -> (1 + 1 + 0 + 0) / 4 * 10 = 5.
    assert cider_d([["a b"], ["c d"]], ["a b", "c d"]) == pytest.approx(5.0)
    # Item A: hyp "a b" vs ref "a b c": cosines 2/sqrt(6) and 1/sqrt(2), length (bigram count) 1 vs 2.
    item_a = (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72) * 10
    assert cider_d([["a b c"], ["d e"]], ["a b", "d e"]) == pytest.approx((item_a + 5.0) / 2)


def test_cider_d_clips_repeated_ngrams() -> None:
    repeated = cider_d([["a b"], ["c d"]], ["a a a b", "c d"])
    assert repeated < 5.0


def test_caption_metrics_keys_missing_predictions_and_errors() -> None:
    refs = {"1": ["the cat sat on the mat"], "2": ["a dog runs"]}
    m = caption_metrics(refs, {"1": "the cat sat on the mat.", "2": "A dog runs!", "extra": "ignored"})
    assert set(m) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"}
    assert m["bleu_1"] == pytest.approx(1.0) and m["rouge_l"] == pytest.approx(1.0)
    missing = caption_metrics(refs, {"1": "the cat sat on the mat"})
    assert missing["rouge_l"] == pytest.approx(0.5)  # item 2 scored as an empty answer
    assert caption_metrics({}, {})["cider"] == 0.0
    with pytest.raises(ValueError, match="no reference caption, e.g. '3'"):
        caption_metrics({"3": []}, {"3": "x"})


_HAVE_COCO = importlib.util.find_spec("pycocoevalcap") is not None and shutil.which("java") is not None


@pytest.mark.skipif(not _HAVE_COCO, reason="needs pycocoevalcap and Java")
def test_tokenize_agrees_with_java_ptb_tokenizer_around_periods() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    words = ["sat", "etc", "Mr", "no", "x", "A", "car", "5", "u.s", "3.5", ")", "ok!"]
    endings = [
        ".,",
        ".;",
        ".!",
        ".:",
        ". then",
        ". Then",
        ".-",
        '."',
        ". 5",
        ".",
        ". ",
        ".)",
        "...",
        ". It's",
    ]
    texts = [
        f"{pre}{w}{e}{post}" for w in words for e in endings for pre in ("", "the ") for post in ("", " x")
    ]
    java = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    assert {t: tokenize(t) for t in texts} == {t: java[i][0] for i, t in enumerate(texts)}


@pytest.mark.skipif(not _HAVE_COCO, reason="needs pycocoevalcap and Java")
def test_agrees_with_pycocoevalcap_on_drivelm_answers(shared_data) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    data = json.loads((shared_data / "drivelm" / "QA" / "train_sample.json").read_text())
    answers = [
        (f"{frame}_{kind}_{i}", qa["A"])
        for scene in data.values()
        for frame, info in scene["key_frames"].items()
        for kind in ("perception", "prediction", "planning", "behavior")
        for i, qa in enumerate(info["QA"][kind])
    ]
    rng = random.Random(0)

    def perturb(text: str) -> str:  # drop and shuffle words so every metric is far from 1
        words = [w for w in text.split() if rng.random() > 0.2]
        if rng.random() < 0.5:
            rng.shuffle(words)
        return " ".join(words)

    refs = {k: [a] for k, a in answers}
    preds = {k: perturb(a) if rng.random() < 0.7 else rng.choice(answers)[1] for k, a in answers}
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tokenizer.tokenize({k: [{"caption": v}] for k, v in preds.items()})
    assert {k: tokenize(refs[k][0]) for k in refs} == {k: v[0] for k, v in gts.items()}
    expected = dict(
        zip(["bleu_1", "bleu_2", "bleu_3", "bleu_4"], Bleu(4).compute_score(gts, res, verbose=0)[0])
    )
    expected["rouge_l"] = Rouge().compute_score(gts, res)[0]
    expected["cider"] = Cider().compute_score(gts, res)[0]
    ours = caption_metrics(refs, preds)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, rel=5e-3), key

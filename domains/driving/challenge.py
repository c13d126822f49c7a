"""The DriveLM challenge evaluation split: question selection (extract_data.py) and the
multiple-choice rewrite (convert_data.py), reproduced rule for rule."""

from __future__ import annotations

import random
from typing import Any

from .drivelm import QUESTION_TYPES, Frame

MOVING_STATUS = "what is the moving status of object"
# convert_data.py's rule_based1, all 7 options in the official order (the order feeds the seeded sampling).
MOVING_CHOICES = (
    "Going ahead.",
    "Turn right.",
    "Turn left.",
    "Stopped.",
    "Back up.",
    "Reverse parking.",
    "Drive backward.",
)
_STEER = {
    "sl": "slightly steering to the left",
    "l": "steering to the left",
    "sr": "slightly steering to the right",
    "r": "steering to the right",
    "s": "going straight",
}
_SPEED = {
    "vf": "driving very fast",
    "n": "driving with normal speed",
    "f": "driving fast",
    "sl": "driving slowly",
    "0": "not moving",
}
# The 21 behaviour answers of the official list, in its order (steer, speed).
_BEHAVIOR_ORDER = (
    ("sl", "vf"), ("l", "n"), ("l", "f"), ("sr", "f"), ("s", "sl"), ("s", "n"), ("sl", "n"), ("sl", "sl"),
    ("sr", "sl"), ("sr", "vf"), ("r", "f"), ("r", "vf"), ("sl", "f"), ("l", "vf"), ("s", "0"), ("sr", "n"),
    ("r", "sl"), ("r", "n"), ("s", "vf"), ("s", "f"), ("l", "sl"),
)  # fmt: skip
BEHAVIOR_CHOICES = tuple(
    f"The ego vehicle is {_STEER[a]}. The ego vehicle is {_SPEED[b]}." for a, b in _BEHAVIOR_ORDER
)


def select_challenge(frame: Frame) -> dict[str, list[dict[str, Any]]]:
    """The challenge test questions of one frame, each a copy of its QA dict with a ``tag``.

    Rules (extract_data.py): the first perception answer naming every key object's class [2]; the first
    moving-status question [0]; the first prediction answer naming every key object tag [3]; the first
    prediction answer containing "yes" or "no" as a substring [0]; the first planning question of each of
    "what actions could the ego vehicle take", "lead to a collision", "safe actions" [1]; all behavior [0].
    A QA dict picked twice is listed twice with the tag of its last pick, as the official script's
    in-place update does.
    """
    classes = [str(info.get("Visual_description", "")).split(".")[0] for info in frame.key_objects.values()]
    locations = list(frame.key_objects)
    qa = {kind: list(frame.qa.get(kind) or []) for kind in QUESTION_TYPES}
    picks: dict[str, list[int]] = {kind: [] for kind in QUESTION_TYPES}
    tags: dict[tuple[str, int], list[int]] = {}

    def pick(kind: str, i: int, tag: int) -> None:
        picks[kind].append(i)
        tags[(kind, i)] = [tag]

    def first(kind: str, test: Any, tag: int) -> None:
        for i, item in enumerate(qa[kind]):
            if test(item):
                pick(kind, i, tag)
                return

    first("perception", lambda q: all(c.lower() in q["A"].lower() for c in classes), 2)
    first("perception", lambda q: MOVING_STATUS in q["Q"].lower(), 0)
    first("prediction", lambda q: all(loc.lower() in q["A"].lower() for loc in locations), 3)
    first("prediction", lambda q: "yes" in q["A"].lower() or "no" in q["A"].lower(), 0)
    wanted = ["what actions could the ego vehicle take", "lead to a collision", "safe actions"]
    added = dict.fromkeys(wanted, False)
    for i, item in enumerate(qa["planning"]):
        for phrase in wanted:
            if phrase in item["Q"].lower() and not added[phrase]:
                pick("planning", i, 1)
                added[phrase] = True
        if all(added.values()):
            break
    for i in range(len(qa["behavior"])):
        pick("behavior", i, 0)
    return {kind: [{**qa[kind][i], "tag": tags[(kind, i)]} for i in picks[kind]] for kind in QUESTION_TYPES}


def _rewrite(question: str, answer: str, rule: tuple[str, ...], rng: random.Random) -> tuple[str, str] | None:
    """convert_data.py's rewrite: 3 distractors sampled from the rule list, shuffled with the answer."""
    if answer not in rule:
        return None  # the official script would crash here; the caller keeps the open question
    others = [r for r in rule if r != answer]
    choices = rng.sample(others, 3) + [answer]
    rng.shuffle(choices)
    letters = "ABCD"
    options = " ".join(f"{letters[i]}. {c}" for i, c in enumerate(choices))
    question = f"{question} Please select the correct answer from the following options: {options}"
    return question, letters[choices.index(answer)]


def multiple_choice(
    selected: dict[str, list[dict[str, Any]]], rng: random.Random
) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Rewrite moving-status and behavior questions as 4-way multiple choice (convert_data.py).

    Returns:
        The rewritten QA lists and the number of questions left open because their answer is not one
        of the official choices.
    """
    out: dict[str, list[dict[str, Any]]] = {kind: list(items) for kind, items in selected.items()}
    left_open = 0
    for kind, rule in (("perception", MOVING_CHOICES), ("behavior", BEHAVIOR_CHOICES)):
        for i, item in enumerate(out.get(kind, [])):
            if kind == "perception" and MOVING_STATUS not in item["Q"].lower():
                continue
            rewritten = _rewrite(item["Q"], item["A"], rule, rng)
            if rewritten is None:
                left_open += 1
                continue
            out[kind][i] = {**item, "Q": rewritten[0], "A": rewritten[1]}
    return out, left_open

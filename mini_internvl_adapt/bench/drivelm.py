"""DriveLM val as InternVL's ``eval/domain_specific/drivelm/evaluate.py`` reads it, scored by the driving domain.

Reader (``DriveLMDataset``): JSONL, one object per line, read with ``json.loads`` line by line; the question
is ``conversations[0]["value"].strip()`` (it carries its own ``<image>``), the ground truth
``conversations[1]["value"].strip()``, the image ``<image_root>/<image>`` (the stitched 2x3 camera grid,
``images/drivelm/stitch``), the id the entry's ``id`` (the challenge id ``{scene}_{frame}_{i}``), and
``question_old`` the original DriveLM question, which the official output keeps as its ``question``.

Answers: the official ``post_process`` maps every grid object tag ``<c1,CAM_BACK,[x,y]>`` (0-1000 on the
2688x896 stitched image) back to camera pixels ``<c1,CAM_BACK,x',y'>`` (1600x900, clipped, one decimal);
a tag it cannot parse stays as it is. The same mapping is applied to the ground truth, where it changes
nothing when the ground truth already uses camera pixels.

Scoring: the DriveLM challenge metrics of the driving domain (through the registry). They need each
question's metric tag: an entry's own ``tag`` field when it has one, else the DriveLM challenge JSON given as
``tags`` (``test_eval.json`` / ``v1_1_val_nus_q_only.json`` style, with ``tag`` per QA); entries without a tag
are counted as ``untagged_skipped`` and not scored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mini_internvl_adapt.data_format.samples import GPT, HUMAN, Sample, Turn
from mini_internvl_adapt.registry import get_domain

from .reading import EntryFields, Problems, check_unique_ids, read_text
from .records import BenchmarkDataError, BenchRecord, GenerationSettings, chat_prompt

TAG_PATTERN = re.compile(r"<c[^,]*,\s*[^,]*,\s*\[\s*-?[0-9]*\.?[0-9]+\s*,\s*-?[0-9]*\.?[0-9]+\s*\]\s*>")
# Grid (column, row) of each camera in the stitched image, as the official mapping.
GRID_CELL = {
    "CAM_FRONT_LEFT": (0, 0),
    "CAM_FRONT": (1, 0),
    "CAM_FRONT_RIGHT": (2, 0),
    "CAM_BACK_LEFT": (0, 1),
    "CAM_BACK": (1, 1),
    "CAM_BACK_RIGHT": (2, 1),
}
PATCH = 448
CELL_W, CELL_H = PATCH * 2, PATCH
GRID_W, GRID_H = CELL_W * 3, CELL_H * 2
CAMERA_W, CAMERA_H = 1600, 900
QA_KINDS = ("perception", "prediction", "planning", "behavior")


def read_drivelm(
    data_file: Path, images_dir: Path, limit: int | None, settings: GenerationSettings
) -> tuple[list[BenchRecord], Problems]:
    """Read the official ``drivelm_val.jsonl``.

    Args:
        data_file: The JSONL file.
        images_dir: The official ``image_root`` (``images/drivelm/stitch``).
        limit: Read only the first `limit` lines.
        settings: The benchmark's generation settings.

    Returns:
        The records and the problems found (entry = 0-based line position; the line number is named too).
    """
    problems = Problems(data_file)
    records: list[BenchRecord] = []
    # Lines as the official f.readlines() gives them: split at "\n" only (JSON text may hold U+2028).
    lines = read_text(data_file).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for entry, line in enumerate(lines[:limit]):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            problems.add(entry, f"not a JSON object: {err.msg}", line=entry + 1)
            continue
        fields = EntryFields(problems, entry, obj, line=entry + 1)
        qid = fields.ident("id")
        image = fields.text("image")
        question_old = fields.text("question_old")
        turns = fields.get("conversations", _two_turns, "a list of at least 2 turns with a string 'value'")
        tag = obj.get("tag") if isinstance(obj, dict) else None
        if tag is not None and not _tag(tag):
            fields.problem(f"'tag' must be a list of metric tags 0-3, got {tag!r}")
        if not fields.ok or qid is None or image is None or turns is None:
            continue
        question = turns[0]["value"].strip()
        records.append(
            BenchRecord(
                id=qid,
                entry=entry,
                images=(str(images_dir / image),),
                question=question,
                prompt=chat_prompt(question, 1),
                answer=turns[1]["value"].strip(),
                generation=settings,
                fields={"question_old": question_old, "tag": tag},
            )
        )
    check_unique_ids(records, problems)
    return records, problems


def _two_turns(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in value[:2])
    )


def _tag(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and t in (0, 1, 2, 3) for t in value)


def post_process(pred: str) -> str:
    """The official answer post-processing: grid object tags -> camera-pixel tags (see the module doc)."""
    pred = pred.strip()
    for object_id in TAG_PATTERN.findall(pred):
        parts = object_id.replace("<", "").replace(">", "").split(",")
        try:
            cxcy = json.loads(",".join(parts[2:]))
            cam = parts[1]
            if cam in GRID_CELL:
                mx, my = GRID_CELL[cam]
                cx, cy = cxcy
                cx = (cx / 1000) * GRID_W
                cy = (cy / 1000) * GRID_H
                cx -= mx * CELL_W
                cy -= my * CELL_H
                cx = cx / CELL_W * CAMERA_W
                cy = cy / CELL_H * CAMERA_H
                cx = round(max(0, min(CAMERA_W, cx)), 1)
                cy = round(max(0, min(CAMERA_H, cy)), 1)
                pred = pred.replace(object_id, f"<{parts[0]},{cam},{cx},{cy}>")
        except Exception:  # the official code prints the error and leaves the tag as it is
            continue
    return pred


def load_challenge_tags(path: str | Path) -> dict[str, list[int]]:
    """Metric tags per challenge id ``{scene}_{frame}_{i}`` from a DriveLM challenge-format JSON.

    ``i`` counts a key frame's questions over perception, prediction, planning and behavior, in that order,
    as the DriveLM challenge numbers them.
    """
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(path, message=f"not valid JSON (line {err.lineno}): {err.msg}") from None
    tags: dict[str, list[int]] = {}
    try:
        for scene, scene_data in data.items():
            for frame, frame_data in scene_data["key_frames"].items():
                qas = [qa for kind in QA_KINDS for qa in frame_data["QA"].get(kind) or []]
                for i, qa in enumerate(qas):
                    if qa.get("tag") is not None:
                        tags[f"{scene}_{frame}_{i}"] = list(qa["tag"])
    except (AttributeError, KeyError, TypeError) as err:
        raise BenchmarkDataError(path, message=f"not a DriveLM challenge file ({err!r})") from None
    return tags


def _frame_key(record_id: str, entry: int) -> tuple[str, str, int]:
    parts = record_id.rsplit("_", 2)
    if len(parts) == 3 and parts[2].isdigit():
        return parts[0], parts[1], int(parts[2])
    return record_id, "", entry


def score_drivelm(
    records: Sequence[BenchRecord],
    predictions: Mapping[str, str],
    wrong: set[str],
    tags: str | Path | None = None,
    **domain_options: Any,
) -> dict[str, Any]:
    """Post-process answers as the official script, then score with the driving domain's DriveLM metrics.

    Args:
        records: Every entry of the file (skipped ones included).
        predictions: Entry id -> raw model answer (post-processed here; a missing one is an empty answer).
        wrong: Ids scored as empty answers whatever their prediction (skipped entries).
        tags: A DriveLM challenge JSON giving each question's metric tag (entries' own ``tag`` win).
        **domain_options: Passed to the driving domain's ``score`` (``judge``, ``judge_model``,
            ``judge_workers``): without a judge, the GPT-based parts are reported as None.

    Returns:
        The driving domain's DriveLM scores (accuracy, language, match_f1, gpt, match, final, counts ...).
    """
    challenge = load_challenge_tags(tags) if tags is not None else {}
    samples: list[Sample] = []
    answers: dict[str, str] = {}
    for record in records:
        scene, frame, index = _frame_key(record.id, record.entry)
        tag = record.fields.get("tag") or challenge.get(record.id)
        truth = post_process(record.answer)
        question = record.fields["question_old"]
        meta = {"scene": scene, "frame": frame, "index": index, "question": question, "answer": truth}
        if tag is not None:
            meta["tag"] = list(tag)
        samples.append(
            Sample(id=record.id, conversations=[Turn(HUMAN, question), Turn(GPT, truth)], meta=meta)
        )
        if record.id not in wrong and record.id in predictions:
            answers[record.id] = post_process(predictions[record.id])
    return dict(get_domain("driving").score(samples, answers, **domain_options))

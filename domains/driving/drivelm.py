"""Reading DriveLM-nuScenes JSON (v1.0 / v1.1 train format and the challenge test format)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tags import ObjectTag, TagError

QUESTION_TYPES = ("perception", "prediction", "planning", "behavior")


class DriveLMError(ValueError):
    """A DriveLM file that cannot be read at all (not one bad frame: those are skipped)."""


@dataclass
class Question:
    """One QA pair of a key frame, with its challenge id and metric tag (when the file carries one)."""

    id: str
    question_type: str
    question: str
    answer: str
    tag: list[int] | None = None


@dataclass
class Frame:
    """One DriveLM key frame (a nuScenes sample)."""

    scene: str
    token: str
    qa: dict[str, list[dict[str, Any]]]
    image_paths: dict[str, str]
    key_objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    scene_description: str | None = None
    problem: str | None = None  # why the frame as read cannot be converted (its fields are then empty)

    @property
    def id(self) -> str:
        return f"{self.scene}_{self.token}" if self.token else self.scene  # no token: a broken scene

    def questions(self) -> list[Question]:
        """All QA pairs with challenge ids ``{scene}_{frame}_{i}`` (i over the four types, in order)."""
        out: list[Question] = []
        for kind in QUESTION_TYPES:
            for qa in self.qa.get(kind) or []:
                out.append(
                    Question(
                        id=f"{self.scene}_{self.token}_{len(out)}",
                        question_type=kind,
                        question=qa["Q"],
                        answer=qa["A"],
                        tag=list(qa["tag"]) if qa.get("tag") is not None else None,
                    )
                )
        return out


def load_drivelm(path: Path) -> list[Frame]:
    """Read every key frame of a DriveLM JSON file.

    Args:
        path: v1_1_train_nus.json, a challenge test file, or any file of that structure.

    Returns:
        The frames in file order (broken frames included; `frame_problem` says what is wrong).

    Raises:
        DriveLMError: The file is missing, not JSON, or not scene -> {key_frames: ...}.
    """
    if not path.is_file():
        raise DriveLMError(f"{path}: no such DriveLM JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DriveLMError(f"{path}: bad JSON: {e.msg} (line {e.lineno})") from None
    except RecursionError:
        raise DriveLMError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(data, Mapping) or not any(
        isinstance(v, Mapping) and isinstance(v.get("key_frames"), Mapping) for v in data.values()
    ):
        raise DriveLMError(
            f"{path}: expected DriveLM format: scene_token -> {{key_frames: {{frame_token: ...}}}}"
        )
    frames = []
    for scene, scene_data in data.items():
        if not isinstance(scene_data, Mapping) or not isinstance(scene_data.get("key_frames"), Mapping):
            # One broken scene is that scene's skip (its token names it), not the whole file's failure.
            why = (
                "scene has no key_frames object"
                if isinstance(scene_data, Mapping)
                else f"scene is a {type(scene_data).__name__}, not an object with key_frames"
            )
            frames.append(Frame(scene=str(scene), token="", qa={}, image_paths={}, problem=why))
            continue
        for token, raw in scene_data["key_frames"].items():
            problem = _raw_frame_problem(raw)
            ok = problem is None
            frames.append(
                Frame(
                    scene=str(scene),
                    token=str(token),
                    qa=dict(raw.get("QA") or {}) if ok else {},
                    image_paths=dict(raw.get("image_paths") or {}) if ok else {},
                    key_objects=dict(raw.get("key_object_infos") or {}) if ok else {},
                    scene_description=scene_data.get("scene_description"),
                    problem=problem,
                )
            )
    return frames


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _qa_problem(qa: Any) -> str | None:
    """What is wrong with a frame's ``QA`` object (None when every entry is usable)."""
    if not isinstance(qa, Mapping):
        return f"QA must be an object of question types, got {type(qa).__name__}"
    if not any(qa.get(kind) for kind in QUESTION_TYPES):
        return "frame has no QA"
    for kind in QUESTION_TYPES:
        entries = qa.get(kind) or []
        if not isinstance(entries, list):
            return f"QA '{kind}' is not a list"
        for i, item in enumerate(entries):
            if not isinstance(item, Mapping) or "Q" not in item or "A" not in item:
                return f"QA '{kind}' entry {i} lacks Q or A"
            if not isinstance(item["Q"], str) or not isinstance(item["A"], str):
                return f"QA '{kind}' entry {i}: Q and A must be text, got {item['Q']!r} and {item['A']!r}"
            tag = item.get("tag")
            if tag is not None and not (isinstance(tag, list) and all(_is_number(t) for t in tag)):
                return f"QA '{kind}' entry {i}: tag must be a list of metric numbers, got {tag!r}"
    return None


def _key_objects_problem(objects: Any) -> str | None:
    """What is wrong with a frame's ``key_object_infos`` (None when every object is usable)."""
    if not isinstance(objects, Mapping):
        return f"key_object_infos must be an object of tag -> info, got {type(objects).__name__}"
    for tag, info in objects.items():
        try:
            ObjectTag.parse(tag)
        except TagError as e:
            return f"key object: {e}"
        if not isinstance(info, Mapping):
            return f"key object {tag}: info must be an object, got {type(info).__name__}"
        box = info.get("2d_bbox")
        if box is not None and not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
            return f"key object {tag}: 2d_bbox must be [x1, y1, x2, y2], got {box!r}"
    return None


def _raw_frame_problem(raw: Any) -> str | None:
    """Why a key frame as read from JSON cannot be converted (None when it can)."""
    if not isinstance(raw, Mapping):
        return f"key frame must be an object, got {type(raw).__name__}"
    paths = raw.get("image_paths") or {}
    if not isinstance(paths, Mapping) or not all(isinstance(v, str) for v in paths.values()):
        return "image_paths must be an object of camera -> image path"
    return _qa_problem(raw.get("QA") or {}) or _key_objects_problem(raw.get("key_object_infos") or {})


def frame_problem(frame: Frame) -> str | None:
    """Why a frame cannot be converted (None when it can): bad QA, key objects or image paths."""
    return frame.problem or _qa_problem(frame.qa) or _key_objects_problem(frame.key_objects)


def has_tags(frames: list[Frame]) -> bool:
    """Whether the file is in the challenge test format (its questions carry metric tags)."""
    return any("tag" in qa for f in frames for kind in QUESTION_TYPES for qa in (f.qa.get(kind) or []))

"""Reading DriveLM-nuScenes JSON (v1.0 / v1.1 train format and the challenge test format)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    @property
    def id(self) -> str:
        return f"{self.scene}_{self.token}"

    def questions(self) -> list[Question]:
        """All QA pairs with challenge ids ``{scene}_{frame}_{i}`` (i over the four types, in order)."""
        out: list[Question] = []
        for kind in QUESTION_TYPES:
            for qa in self.qa.get(kind) or []:
                out.append(
                    Question(
                        id=f"{self.scene}_{self.token}_{len(out)}",
                        question_type=kind,
                        question=str(qa["Q"]),
                        answer=str(qa["A"]),
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
    if not isinstance(data, Mapping) or not all(
        isinstance(v, Mapping) and isinstance(v.get("key_frames"), Mapping) for v in data.values()
    ):
        raise DriveLMError(
            f"{path}: expected DriveLM format: scene_token -> {{key_frames: {{frame_token: ...}}}}"
        )
    frames = []
    for scene, scene_data in data.items():
        for token, frame in scene_data["key_frames"].items():
            frame = frame if isinstance(frame, Mapping) else {}
            frames.append(
                Frame(
                    scene=str(scene),
                    token=str(token),
                    qa=dict(frame.get("QA") or {}),
                    image_paths=dict(frame.get("image_paths") or {}),
                    key_objects=dict(frame.get("key_object_infos") or {}),
                    scene_description=scene_data.get("scene_description"),
                )
            )
    return frames


def frame_problem(frame: Frame) -> str | None:
    """Why a frame cannot be converted (None when it can): no QA, bad QA entries, missing cameras."""
    if not any(frame.qa.get(kind) for kind in QUESTION_TYPES):
        return "frame has no QA"
    for kind in QUESTION_TYPES:
        entries = frame.qa.get(kind) or []
        if not isinstance(entries, list):
            return f"QA '{kind}' is not a list"
        for i, qa in enumerate(entries):
            if not isinstance(qa, Mapping) or "Q" not in qa or "A" not in qa:
                return f"QA '{kind}' entry {i} lacks Q or A"
    return None


def has_tags(frames: list[Frame]) -> bool:
    """Whether the file is in the challenge test format (its questions carry metric tags)."""
    return any("tag" in qa for f in frames for kind in QUESTION_TYPES for qa in (f.qa.get(kind) or []))

"""BDD-X raw data: the annotation CSV, the official split lists, the BDD100K info files, segment timing.

- ``BDD-X-Annotations_v1.csv`` (github JinkyuKimUCB/BDD-X-dataset): one row per video, ``Input.Video`` (a
  URL or name ending in ``<video id>.mov``) and up to 15 segments ``Answer.{k}start``, ``Answer.{k}end``
  (whole seconds), ``Answer.{k}action``, ``Answer.{k}justification``.
- ``train.txt`` / ``val.txt`` / ``test.txt``: one ``<row>_<video id>`` per line, ``<row>`` the 1-based data
  row of the CSV (``1_06d501fd-a9ffc960`` is the first row).
- BDD100K ``info/<video id>.json``: ``startTime`` (ms) and ``locations`` sampled about once a second, each
  with ``timestamp`` (ms), ``speed`` (m/s) and ``course`` (degrees clockwise from north; iOS writes -1 for
  an invalid fix).

No PyAV here: this module only reads text and JSON.
"""

from __future__ import annotations

import csv
import json
import math
import re
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

from mini_internvl_adapt.errors import InputError

ACTION_TASK = "bddx-action"
JUSTIFICATION_TASK = "bddx-justification"
CONTROL_TASK = "bddx-control"
TASK_NAMES = {"action": ACTION_TASK, "justification": JUSTIFICATION_TASK, "control": CONTROL_TASK}
BDDX_TASKS = tuple(TASK_NAMES.values())

VIDEO_COLUMN = "Input.Video"
MAX_SEGMENTS = 15
SPLIT_NAMES = ("train", "val", "test")
# Info samples come about once a second: a time this far outside them is not covered.
COVERAGE_TOLERANCE = 1.5
_LIST_ENTRY = re.compile(r"^(\d+)_(.+)$")


class InfoError(ValueError):
    """A BDD100K info file that cannot give the control signals asked for; the message says why."""


@dataclass(frozen=True)
class Segment:
    """One annotated segment of a BDD-X row.

    Attributes:
        row: 1-based data row of the CSV (the number in the official split lists).
        index: k of the ``Answer.{k}...`` columns, 1 to 15.
        video: The video id (``06d501fd-a9ffc960``).
        start: Segment start in seconds, or None when it is not a number.
        end: Segment end in seconds, or None when it is not a number.
        action: The action description.
        justification: The action justification.
        problem: Why the segment's times cannot be used (None when they can).
    """

    row: int
    index: int
    video: str
    start: float | None
    end: float | None
    action: str
    justification: str
    problem: str | None = None

    @property
    def key(self) -> str:
        """The row's name in the official split lists: ``<row>_<video>``."""
        return f"{self.row}_{self.video}"

    @property
    def id(self) -> str:
        """``<row>_<video>_<k>``: unique within a CSV (a video may be annotated in several rows)."""
        return f"{self.key}_{self.index}"

    @property
    def where(self) -> str:
        """``row R, segment K`` for skip reasons."""
        return f"row {self.row}, segment {self.index}"


def video_id(value: str) -> str:
    """The video id of an ``Input.Video`` value: its last path part without query and extension."""
    name = value.strip().split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    return stem if dot and ext.isalnum() and len(ext) <= 4 else name


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _segment(row_number: int, k: int, video: str, fields: list[str]) -> Segment:
    start_text, end_text, action, justification = fields
    start, end = _seconds(start_text), _seconds(end_text)
    problem = None
    if not video:
        problem = f"no video in column {VIDEO_COLUMN}"
    elif start is None or end is None:
        problem = f"start '{start_text}' or end '{end_text}' is not a number of seconds"
    elif start < 0:
        problem = f"start {start:g} s is negative"
    elif end < start:
        problem = f"end {end:g} s before start {start:g} s"
    return Segment(row_number, k, video, start, end, action, justification, problem)


def read_annotations(path: Path) -> list[Segment]:
    """Every segment of a BDD-X annotation CSV, in file order; a slot with all four fields empty is no segment.

    Args:
        path: ``BDD-X-Annotations_v1.csv`` (or a file in its column layout).

    Returns:
        The segments; a segment whose times are unusable carries its `Segment.problem`.

    Raises:
        InputError: The file cannot be read or lacks the ``Input.Video`` column.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or VIDEO_COLUMN not in reader.fieldnames:
                raise InputError(f"{path}: not a BDD-X annotation CSV (no '{VIDEO_COLUMN}' column)")
            segments = []
            for row_number, row in enumerate(reader, start=1):
                video = video_id(row.get(VIDEO_COLUMN) or "")
                for k in range(1, MAX_SEGMENTS + 1):
                    names = (
                        f"Answer.{k}start",
                        f"Answer.{k}end",
                        f"Answer.{k}action",
                        f"Answer.{k}justification",
                    )
                    fields = [(row.get(name) or "").strip() for name in names]
                    if any(fields):
                        segments.append(_segment(row_number, k, video, fields))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: cannot read the annotation CSV: {e}") from None
    return segments


@dataclass
class SplitLists:
    """The official split lists: ``<row>_<video>`` -> split (and bare video ids, for lists without rows)."""

    by_key: dict[str, str]
    by_video: dict[str, str]

    def split_of(self, segment: Segment) -> str | None:
        """The split of the segment's row, or None when no list names it."""
        return self.by_key.get(segment.key) or self.by_video.get(segment.video)


def read_split_lists(folder: Path) -> SplitLists:
    """Read ``train.txt``, ``val.txt`` and ``test.txt`` from `folder` (any may be missing, not all).

    Raises:
        InputError: The folder holds none of the three files.
    """
    folder = Path(folder)
    found = [name for name in SPLIT_NAMES if (folder / f"{name}.txt").is_file()]
    if not found:
        raise InputError(f"--split-lists {folder}: no train.txt, val.txt or test.txt there")
    lists = SplitLists({}, {})
    for name in found:
        for line in (folder / f"{name}.txt").read_text(encoding="utf-8").splitlines():
            entry = line.strip()
            if not entry:
                continue
            m = _LIST_ENTRY.match(entry)
            if m is not None:
                lists.by_key[f"{int(m[1])}_{video_id(m[2])}"] = name
            else:
                lists.by_video[video_id(entry)] = name
    return lists


def sample_times(start: float, end: float, frames: int) -> tuple[list[float], float]:
    """The frame times of a segment and the time of the frame after them, in seconds.

    The segment ``[start, end]`` (``[start, start + 1]`` when end equals start: BDD-X times are whole
    seconds) is cut into `frames` equal steps; frames are taken at the start of each step and the next frame
    is one step after the last, at the segment's end.

    Returns:
        (frame times, next-frame time), rounded to the millisecond.
    """
    stop = end if end > start else start + 1.0
    step = (stop - start) / frames
    times = [round(start + i * step, 3) for i in range(frames)]
    return times, round(stop, 3)


@dataclass
class Track:
    """A video's GPS track: times in seconds from the video start, speeds (m/s), unwrapped courses (degrees)."""

    times: list[float]
    speeds: list[float]
    courses: list[float]

    def _at(self, values: list[float], t: float) -> float:
        if t < self.times[0] - COVERAGE_TOLERANCE or t > self.times[-1] + COVERAGE_TOLERANCE:
            raise InfoError(
                f"the GPS track covers {self.times[0]:.1f}-{self.times[-1]:.1f} s of the video, not {t:.2f} s"
            )
        i = bisect_left(self.times, t)
        if i == 0:
            return values[0]
        if i == len(self.times):
            return values[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        w = (t - t0) / (t1 - t0)
        return values[i - 1] + w * (values[i] - values[i - 1])

    def speed(self, t: float) -> float:
        """Speed in m/s at `t`, linearly interpolated between GPS samples."""
        return self._at(self.speeds, t)

    def course(self, t: float) -> float:
        """Unwrapped course in degrees at `t` (350 -> 10 reads as 350 -> 370)."""
        return self._at(self.courses, t)


def read_info(path: Path) -> Track:
    """The GPS track of a BDD100K info file; fixes with a negative speed or course (invalid) are dropped.

    Raises:
        InfoError: The file cannot be read or holds no valid location.
    """
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InfoError(f"cannot read the info file: {e}") from None
    except RecursionError:
        raise InfoError("cannot read the info file: JSON nested too deeply") from None
    locations = info.get("locations") if isinstance(info, dict) else None
    if not isinstance(locations, list):
        raise InfoError("the info file has no 'locations' list")
    fixes = []
    for loc in locations:
        try:
            stamp, speed, course = float(loc["timestamp"]), float(loc["speed"]), float(loc["course"])
        except (KeyError, TypeError, ValueError):
            continue
        if speed >= 0 and course >= 0 and all(map(math.isfinite, (stamp, speed, course))):
            fixes.append((stamp, speed, course))
    if not fixes:
        raise InfoError("the info file has no valid GPS location (timestamp, speed >= 0, course >= 0)")
    fixes.sort()
    start = info.get("startTime", fixes[0][0])
    start = float(start) if isinstance(start, (int, float)) else fixes[0][0]
    times: list[float] = []
    speeds: list[float] = []
    courses: list[float] = []
    for stamp, speed, course in fixes:
        t = (stamp - start) / 1000.0
        if times and t <= times[-1]:
            continue  # a repeated timestamp: keep the first fix
        if courses:  # unwrap: the shortest turn from the previous course
            course = courses[-1] + (course - courses[-1] + 180.0) % 360.0 - 180.0
        times.append(t)
        speeds.append(speed)
        courses.append(course)
    return Track(times, speeds, courses)


@dataclass(frozen=True)
class Control:
    """A segment's control signals (DriveGPT4's speed and turning angle), rounded to 0.01.

    Attributes:
        speeds: Speed in m/s at each frame.
        angles: Turning angle in degrees between consecutive frames (positive: clockwise, to the right).
        speed: Speed at the next frame (the answer).
        angle: Turning angle from the last frame to the next frame (the answer).
    """

    speeds: list[float]
    angles: list[float]
    speed: float
    angle: float


def control_signals(track: Track, times: list[float], next_time: float) -> Control:
    """The control signals of a segment sampled at `times`, with the answer at `next_time`.

    Raises:
        InfoError: The track does not cover one of the times.
    """
    every = [*times, next_time]
    speeds = [round(track.speed(t), 2) + 0.0 for t in every]
    courses = [track.course(t) for t in every]
    angles = [round(b - a, 2) + 0.0 for a, b in zip(courses, courses[1:])]  # + 0.0: no "-0.0"
    return Control(speeds[:-1], angles[:-1], speeds[-1], angles[-1])

"""BDD-X -> shared-format dataset in DriveGPT4's formulation: per annotated segment, frames sampled from the
clip form one multi-image sample per task (action description, action justification, control signals).

A record of report.json is one (segment, task) sample: ``read`` counts segments x tasks, and each is either
written or skipped with the file, the row and segment, and the reason, so ``read == converted + skipped``.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mini_internvl_adapt.data_format.dataset import ConversionReport, write_dataset
from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.errors import InputError

from .bddx import (
    TASK_NAMES,
    Control,
    InfoError,
    Segment,
    Track,
    control_signals,
    read_annotations,
    read_info,
    read_split_lists,
    sample_times,
)
from .bddx_video import VIDEO_SUFFIXES, ExtractedFrames, FrameRef, VideoError, VideoFrames, index_files

DOMAIN = "driving"
ACTION_QUESTION = "What is the current action of this vehicle?"
JUSTIFICATION_QUESTION = "Why does the vehicle behave in this way?"
CONTROL_QUESTION = (
    "Predict the control signals of the next frame: the speed (m/s) and the turning angle (degrees)."
)
DEFAULT_FRAMES = 8
# A segment may end up to a second after the video's last frame: BDD-X times are whole seconds.
END_TOLERANCE = 1.0


@dataclass
class BddxOptions:
    """Options of ``adapt convert --domain driving --format bddx`` (see `DrivingDomain.add_convert_arguments`)."""

    videos: Path | None = None
    info: Path | None = None
    frames: int = DEFAULT_FRAMES
    split_lists: Path | None = None
    tasks: tuple[str, ...] | str | None = None
    frames_from: Path | None = None
    test_fraction: float = 0.1
    seed: int = 0
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    quality: int = 90

    @classmethod
    def from_kwargs(cls, **options: Any) -> BddxOptions:
        """Build and check the options; raises InputError naming the bad one."""
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"option(s) not used by --format bddx: {', '.join(sorted(unknown))}")
        opts = cls(**options)
        for name in ("videos", "info", "split_lists", "frames_from"):
            value = getattr(opts, name)
            if value is not None and not Path(value).is_dir():
                raise InputError(f"--{name.replace('_', '-')} {value}: not a folder")
        if (opts.videos is None) == (opts.frames_from is None):
            raise InputError(
                "--format bddx needs --videos DIR (the BDD-X videos) or --frames-from DIR, one of them"
            )
        if opts.tasks is None:
            opts.tasks = ("action", "justification", "control") if opts.info else ("action", "justification")
        elif isinstance(opts.tasks, str):
            opts.tasks = tuple(t.strip() for t in opts.tasks.split(",") if t.strip())
        bad = [t for t in opts.tasks if t not in TASK_NAMES]
        if bad or not opts.tasks:
            raise InputError(
                f"--tasks takes action, justification and/or control, got '{','.join(opts.tasks)}'"
            )
        if "control" in opts.tasks and opts.info is None:
            raise InputError("--tasks control needs --info DIR (the BDD100K info JSON files)")
        if not 1 <= opts.frames <= 64:
            raise InputError(f"--frames must be between 1 and 64, got {opts.frames}")
        if not 0.0 <= opts.test_fraction < 1.0:
            raise InputError(f"--test-fraction must be in [0, 1), got {opts.test_fraction}")
        if opts.workers < 1:
            raise InputError(f"--workers must be at least 1, got {opts.workers}")
        return opts

    @property
    def task_list(self) -> list[str]:
        """The short task names (action, justification, control) once `from_kwargs` has checked them."""
        assert isinstance(self.tasks, tuple)
        return list(self.tasks)


@dataclass
class _Plan:
    """One segment to sample: its split, the tasks still to write, its frame times and control signals."""

    segment: Segment
    split: str
    tasks: list[str]
    times: list[float]
    next_time: float
    control: Control | None = None


@dataclass
class _VideoResult:
    """What one video gave: frames per segment id, skipped segment ids with (file, reason), frames decoded."""

    frames: dict[str, list[FrameRef]] = field(default_factory=dict)
    problems: dict[str, tuple[str, str]] = field(default_factory=dict)
    decoded: int = 0


def sample_id(segment: Segment, task: str) -> str:
    """``<row>_<video>_<k>_<task>``, task one of action, justification, control."""
    return f"{segment.id}_{task}"


class _Skips:
    """Records skips as (segment, task) records: one entry per task, file and reason given once."""

    def __init__(self, report: ConversionReport) -> None:
        self.report = report

    def __call__(self, source: str | Path, segment: Segment, tasks: Iterable[str], reason: str) -> None:
        for task in tasks:
            self.report.skip(source, f"{segment.where}: {reason}", id=sample_id(segment, task))


def _splits(segments: list[Segment], opts: BddxOptions) -> tuple[dict[str, str | None], str]:
    """Segment id -> split: the official lists when given, else a seeded split of the videos."""
    if opts.split_lists is not None:
        lists = read_split_lists(Path(opts.split_lists))
        return {s.id: lists.split_of(s) for s in segments}, "lists"
    videos = sorted({s.video for s in segments if s.video})
    random.Random(opts.seed).shuffle(videos)
    n_test = round(len(videos) * opts.test_fraction)
    if opts.test_fraction > 0 and len(videos) > 1:
        n_test = min(max(n_test, 1), len(videos) - 1)  # both splits get at least one video
    test = set(videos[:n_test])
    return {s.id: "test" if s.video in test else "train" for s in segments}, "seeded"


def _plan(segments: list[Segment], opts: BddxOptions, skip: _Skips, source: Path) -> list[_Plan]:
    """Segments with a split and usable times and text; the rest are skipped here."""
    split_of, how = _splits(segments, opts)
    skip.report.details["split"] = how
    plans = []
    for s in segments:
        tasks = opts.task_list
        if s.problem is not None:
            skip(source, s, tasks, s.problem)
            continue
        split = split_of[s.id]
        if split is None:
            skip(source, s, tasks, f"row {s.key} is in none of the split lists")
            continue
        for task, text in (("action", s.action), ("justification", s.justification)):
            if task in tasks and not text:
                skip(source, s, [task], f"empty {task}")
                tasks.remove(task)
        if tasks:
            assert s.start is not None and s.end is not None  # no problem: both are numbers
            times, next_time = sample_times(s.start, s.end, opts.frames)
            plans.append(_Plan(s, split, tasks, times, next_time))
    return plans


class _Controls:
    """Control signals of segments from the info files (each read once); a missing or short one is a reason."""

    def __init__(self, info_dir: Path) -> None:
        self.info_dir = info_dir
        self._files = index_files(info_dir, (".json",))
        self._tracks: dict[str, Track | InfoError] = {}

    def __call__(self, plan: _Plan) -> Control | tuple[Path, str]:
        """The plan's control signals, or (file, reason) when they cannot be had."""
        video = plan.segment.video
        path = self._files.get(video)
        if path is None:
            return self.info_dir / f"{video}.json", f"no info file {video}.json in {self.info_dir}"
        if video not in self._tracks:
            try:
                self._tracks[video] = read_info(path)
            except InfoError as e:
                self._tracks[video] = e
        track = self._tracks[video]
        try:
            if isinstance(track, InfoError):
                raise track
            return control_signals(track, plan.times, plan.next_time)
        except InfoError as e:
            return path, str(e)


def _frames_for_video(
    video: str, plans: list[_Plan], path: Path, opts: BddxOptions, out: Path
) -> _VideoResult:
    """Open one video (or its pre-extracted frames) once and take every frame its segments need."""
    result = _VideoResult()
    try:
        frames: VideoFrames | ExtractedFrames
        if opts.frames_from is not None:
            frames = ExtractedFrames(path, video, out)
        else:
            frames = VideoFrames(path, video, out, opts.quality)
        with frames:
            duration = frames.duration
            usable = []
            for plan in plans:
                s = plan.segment
                assert s.start is not None and s.end is not None
                if s.start >= duration or s.end > duration + END_TOLERANCE:
                    reason = f"segment {s.start:g}-{s.end:g} s is outside the video's {duration:.2f} s"
                    result.problems[s.id] = (str(path), reason)
                else:
                    usable.append(plan)
            refs: dict[float, FrameRef] = {}
            for t in sorted({t for plan in usable for t in plan.times}):
                refs[t] = frames.frame_at(t)
            result.frames = {plan.segment.id: [refs[t] for t in plan.times] for plan in usable}
            result.decoded = frames.decoded
    except VideoError as e:
        result.frames = {}
        result.problems.update({plan.segment.id: (str(path), str(e)) for plan in plans})
    return result


def _frames_prompt(n: int) -> str:
    return "".join(f"Frame{i}: <image>\n" for i in range(1, n + 1))


def _numbers(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def control_answer(speed: float, angle: float) -> str:
    """The control answer the model learns: ``Speed: 7.20 m/s, turning angle: -0.35 degrees.``"""
    return f"Speed: {speed:.2f} m/s, turning angle: {angle:.2f} degrees."


def _samples(plan: _Plan, frames: list[FrameRef]) -> list[Sample]:
    s = plan.segment
    meta: dict[str, Any] = {
        "source": "bdd-x",
        "video": s.video,
        "row": s.row,
        "segment": s.index,
        "start": s.start,
        "end": s.end,
        "frame_times": [f.time for f in frames],
    }
    images = [f.path for f in frames]
    widths, heights = [f.width for f in frames], [f.height for f in frames]
    prompt = _frames_prompt(len(frames))
    out = []
    for task in plan.tasks:
        extra: dict[str, Any] = {}
        if task == "action":
            question, answer = ACTION_QUESTION, s.action
        elif task == "justification":
            question, answer = JUSTIFICATION_QUESTION, s.justification
        else:
            c = plan.control
            assert c is not None
            question = (
                f"The vehicle's speed at each frame (m/s): {_numbers(c.speeds)}.\n"
                f"Its turning angle between consecutive frames (degrees): {_numbers(c.angles)}.\n{CONTROL_QUESTION}"
            )
            answer = control_answer(c.speed, c.angle)
            extra = {"speed": c.speed, "turning_angle": c.angle, "speeds": c.speeds, "turning_angles": c.angles,
                     "next_time": plan.next_time}  # fmt: skip
        out.append(
            Sample(
                id=sample_id(s, task),
                conversations=[Turn("human", prompt + question), Turn("gpt", answer)],
                images=list(images),
                task=TASK_NAMES[task],
                domain=DOMAIN,
                meta={**meta, **extra},
                widths=list(widths),
                heights=list(heights),
            )
        )
    return out


def _sources(plans: list[_Plan], opts: BddxOptions, skip: _Skips) -> dict[str, tuple[Path, list[_Plan]]]:
    """Video id -> (its video file or frames folder, its plans); a video without one is skipped here."""
    by_video: dict[str, list[_Plan]] = defaultdict(list)
    for plan in plans:
        by_video[plan.segment.video].append(plan)
    if opts.frames_from is not None:
        return {video: (Path(opts.frames_from), ps) for video, ps in by_video.items()}
    assert opts.videos is not None
    videos = index_files(Path(opts.videos), VIDEO_SUFFIXES)
    found = {}
    for video, ps in by_video.items():
        if video in videos:
            found[video] = (videos[video], ps)
            continue
        looked = ", ".join(VIDEO_SUFFIXES[1:])
        reason = f"missing video: no {video}{VIDEO_SUFFIXES[0]} (or {looked}) under {opts.videos}"
        for plan in ps:
            skip(Path(opts.videos) / f"{video}{VIDEO_SUFFIXES[0]}", plan.segment, plan.tasks, reason)
    return found


def convert_bddx(source: Path, out: Path, **options: Any) -> ConversionReport:
    """Convert BDD-X (annotation CSV + videos or frames, optional info files and split lists) into a dataset.

    Args:
        source: ``BDD-X-Annotations_v1.csv``.
        out: The dataset folder to write.
        **options: `BddxOptions` fields.

    Returns:
        The conversion report; a record is one (segment, task) sample.
    """
    opts = BddxOptions.from_kwargs(**options)
    source, out = Path(source), Path(out)
    segments = read_annotations(source)
    tasks = opts.task_list
    report = ConversionReport(domain=DOMAIN, source=str(source), read=len(segments) * len(tasks))
    report.details.update({"format": "bddx", "record": "segment x task", "segments": len(segments),
                           "tasks": [TASK_NAMES[t] for t in tasks], "frames": opts.frames})  # fmt: skip
    skip = _Skips(report)
    plans = _plan(segments, opts, skip, source)
    controls = _Controls(Path(opts.info)) if "control" in tasks and opts.info is not None else None
    per_video = _sources(plans, opts, skip)
    splits: dict[str, list[Sample]] = {}
    images: set[str] = set()
    decoded = 0
    with ThreadPoolExecutor(max_workers=opts.workers) as pool:
        futures = [
            (ps, pool.submit(_frames_for_video, video, ps, path, opts, out))
            for video, (path, ps) in per_video.items()
        ]
        for ps, future in tqdm(futures, desc="bdd-x: videos", unit="video"):
            result = future.result()
            decoded += result.decoded
            for plan in ps:
                frames = result.frames.get(plan.segment.id)
                if frames is None:
                    file, reason = result.problems[plan.segment.id]
                    skip(file, plan.segment, plan.tasks, reason)
                    continue
                if "control" in plan.tasks and controls is not None:
                    control = controls(plan)
                    if isinstance(control, Control):
                        plan.control = control
                    else:
                        skip(control[0], plan.segment, ["control"], control[1])
                        plan.tasks.remove("control")
                samples = _samples(plan, frames)
                for sample in samples:  # the annotators' action / justification text is free text
                    answer = sample.conversations[-1]
                    answer.value = report.free_text(answer.value, f"{source}:{plan.segment.row}", sample.id)
                splits.setdefault(plan.split, []).extend(samples)
                images.update(f.path for f in frames)
                report.converted += len(samples)
    report.images = len(images)
    report.details.update({"videos": len(per_video), "decoded_frames": decoded})
    order = {"train": 0, "val": 1, "test": 2}
    write_dataset(out, dict(sorted(splits.items(), key=lambda kv: order.get(kv[0], 3))), report)
    return report

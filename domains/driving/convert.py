"""DriveLM JSON -> shared-format dataset: QA samples per question, grounding samples per object."""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mini_internvl_adapt.data_format.dataset import ConversionReport, write_dataset
from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.metrics.boxes import grounding_answer, normalize_box

from .challenge import multiple_choice, select_challenge
from .drivelm import Frame, Question, frame_problem, has_tags, load_drivelm
from .render import write_grid, write_views
from .tags import CAMERAS, GRID_EXPLANATION, ObjectTag, TagError, box_to_grid, check_tags, encode_grid

DOMAIN = "driving"
QA_TASK, GROUNDING_TASK = "driving-qa", "driving-grounding"
LAYOUTS = ("grid", "views")


@dataclass
class Options:
    """Conversion options (the CLI's --layout, --split, ... ; see `DrivingDomain.add_convert_arguments`)."""

    layout: str = "grid"
    split: str | None = None
    test_fraction: float = 0.0
    seed: int = 0
    multiple_choice: bool = False
    tasks: tuple[str, ...] = ("qa",)
    image_root: Path | None = None
    nuscenes_root: Path | None = None
    nuscenes_version: str = "v1.0-trainval"
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    quality: int = 95
    exact_resize: bool = False

    @classmethod
    def from_kwargs(cls, **options: Any) -> Options:
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown driving convert option(s): {', '.join(sorted(unknown))}")
        opts = cls(**options)
        if isinstance(opts.tasks, str):
            opts.tasks = tuple(t.strip() for t in opts.tasks.split(",") if t.strip())
        bad = [t for t in opts.tasks if t not in ("qa", "grounding")]
        if bad or not opts.tasks:
            raise ValueError(
                f"--tasks takes qa and/or grounding (comma-separated), got '{','.join(opts.tasks)}'"
            )
        if opts.layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got '{opts.layout}'")
        if opts.split not in (None, "train", "challenge"):
            raise ValueError(f"--split must be train or challenge, got '{opts.split}'")
        if not 0.0 <= opts.test_fraction < 1.0:
            raise ValueError(f"--test-fraction must be in [0, 1), got {opts.test_fraction}")
        if opts.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {opts.workers}")
        return opts


@dataclass
class _Job:
    """One frame to convert: its questions (already selected for its split) and where it goes."""

    frame: Frame
    split: str
    questions: list[Question]
    cameras: dict[str, Path]


def _camera_paths(frame: Frame, base: Path) -> dict[str, Path]:
    missing = [c for c in CAMERAS if c not in frame.image_paths]
    if missing:
        raise ValueError(f"image_paths lacks {', '.join(missing)}")
    return {c: (base / frame.image_paths[c]).resolve() for c in CAMERAS}


def _evaluation_questions(
    frame: Frame, tagged: bool, opts: Options, rng: random.Random
) -> tuple[list[Question], int]:
    """A test frame's questions: the challenge selection of a train-format frame (a tagged file is that
    selection already), rewritten as multiple choice when asked, ids counted over the selection."""
    selected = frame.qa if tagged else select_challenge(frame)
    left_open = 0
    if opts.multiple_choice:
        selected, left_open = multiple_choice(selected, rng)
    view = Frame(frame.scene, frame.token, selected, frame.image_paths, frame.key_objects)
    return view.questions(), left_open


def _plan(
    frames: list[Frame], tagged: bool, opts: Options, report: ConversionReport, base: Path, source: Path
) -> list[_Job]:
    """Decide each frame's split and questions; frames with bad QA or tags are skipped here."""
    scenes = list(dict.fromkeys(f.scene for f in frames))
    if tagged or opts.split == "challenge":
        test_scenes = set(scenes)
    else:
        order = sorted(scenes)
        random.Random(opts.seed).shuffle(order)
        n_test = round(len(order) * opts.test_fraction)
        if opts.test_fraction > 0 and len(order) > 1:
            n_test = min(max(n_test, 1), len(order) - 1)  # both splits get at least one scene
        test_scenes = set(order[:n_test])
    choice_rng = random.Random(opts.seed)
    jobs, left_open = [], 0
    for frame in frames:
        problem = frame_problem(frame)
        try:
            if problem is not None:
                raise ValueError(problem)
            cameras = _camera_paths(frame, base)
            split = "test" if frame.scene in test_scenes else "train"
            if split == "test":
                questions, n_open = _evaluation_questions(frame, tagged, opts, choice_rng)
                left_open += n_open
            else:
                questions = frame.questions()
            for q in questions:
                check_tags(q.question)
                check_tags(q.answer)
        except (ValueError, TagError) as e:
            report.skip(source, str(e), id=frame.id)
            continue
        for q in questions:  # free text: the template's special strings escaped (and reported)
            q.question = report.free_text(q.question, source, q.id)
            q.answer = report.free_text(q.answer, source, q.id)
        jobs.append(_Job(frame, split, questions, cameras))
    if opts.multiple_choice:
        report.details["multiple_choice_left_open"] = left_open
    return jobs


def _render(job: _Job, images: Path, opts: Options) -> dict[str, Any]:
    if opts.layout == "grid":
        name = f"{job.frame.token}_grid.jpg"
        width, height = write_grid(job.cameras, images / name, opts.quality, opts.exact_resize)
        return {"grid": (f"images/{name}", width, height)}
    views = write_views(job.cameras, images, job.frame.token)
    return {c: (f"images/{name}", w, h) for c, (name, w, h) in views.items()}


def _qa_sample(job: _Job, q: Question, rendered: dict[str, Any], opts: Options) -> Sample:
    meta: dict[str, Any] = {
        "question_type": q.question_type,
        "question": q.question,
        "answer": q.answer,
        "layout": opts.layout,
        "scene": job.frame.scene,
        "frame": job.frame.token,
        "index": int(q.id.rsplit("_", 1)[1]),
    }
    if q.tag is not None:
        meta["tag"] = q.tag
    if opts.layout == "grid":
        path, w, h = rendered["grid"]
        prompt = f"<image>\n{GRID_EXPLANATION}\n{encode_grid(q.question)}"
        answer, images, widths, heights = encode_grid(q.answer), [path], [w], [h]
    else:
        prompt = "".join(f"{c}: <image>\n" for c in CAMERAS) + q.question
        answer = q.answer
        images = [rendered[c][0] for c in CAMERAS]
        widths, heights = [rendered[c][1] for c in CAMERAS], [rendered[c][2] for c in CAMERAS]
    return Sample(
        id=q.id,
        conversations=[Turn("human", prompt), Turn("gpt", answer)],
        images=images,
        task=QA_TASK,
        domain=DOMAIN,
        meta=meta,
        widths=widths,
        heights=heights,
    )


def _grounding_samples(
    job: _Job, rendered: dict[str, Any], objects: list[dict[str, Any]], opts: Options
) -> list[Sample]:
    """One sample per object with a camera box: ``Detect <ref>phrase</ref>`` -> the 0-1000 box."""
    samples = []
    for k, obj in enumerate(objects):
        camera, box = obj["camera"], [float(v) for v in obj["box"]]
        if opts.layout == "grid":
            path, w, h = rendered["grid"]
            seen = box_to_grid(camera, box)
        else:
            path, w, h = rendered[camera]
            seen = box
        phrase = obj["phrase"]
        samples.append(
            Sample(
                id=f"{job.frame.scene}_{job.frame.token}_g{k}",
                conversations=[
                    Turn("human", f"<image>\nDetect <ref>{phrase}</ref>"),
                    Turn("gpt", grounding_answer(phrase, [normalize_box(seen, w, h)])),
                ],
                images=[path],
                task=GROUNDING_TASK,
                domain=DOMAIN,
                meta={
                    "box": [round(v, 1) for v in seen],
                    "camera": camera,
                    "camera_box": [round(v, 1) for v in box],
                    "source": obj["source"],
                    "layout": opts.layout,
                    "scene": job.frame.scene,
                    "frame": job.frame.token,
                    **({"object": obj["tag"]} if obj.get("tag") else {}),
                },
                widths=[w],
                heights=[h],
            )
        )
    return samples


def _key_objects(frame: Frame) -> list[dict[str, Any]]:
    """DriveLM key objects as {tag, camera, centre, phrase, box or None}."""
    out = []
    for tag, info in frame.key_objects.items():
        parsed = ObjectTag.parse(tag)
        phrase = str(info.get("Visual_description") or info.get("Category") or "object").strip().rstrip(".")
        box = info.get("2d_bbox")
        valid = isinstance(box, list) and len(box) == 4 and box[2] > box[0] and box[3] > box[1]
        out.append(
            {
                "tag": tag,
                "camera": parsed.camera,
                "centre": (parsed.x, parsed.y),
                "phrase": phrase,
                "box": [float(v) for v in box] if valid and box is not None else None,
                "source": "drivelm",
            }
        )
    return out


def convert_drivelm(source: Path, out: Path, **options: Any) -> ConversionReport:
    """Convert a DriveLM JSON file into a dataset folder (see the module and `Options`).

    Args:
        source: The DriveLM JSON (train format or challenge test format with tags).
        out: The dataset folder to write.
        **options: `Options` fields.

    Returns:
        The conversion report (frames read, converted, skipped with reasons).
    """
    opts = Options.from_kwargs(**options)
    source = Path(source)
    frames = load_drivelm(source)
    tagged = has_tags(frames)
    base = Path(opts.image_root) if opts.image_root is not None else source.parent
    report = ConversionReport(domain=DOMAIN, source=str(source), read=len(frames))
    report.details.update({"layout": opts.layout, "format": "challenge" if tagged else "train"})
    jobs = _plan(frames, tagged, opts, report, base, source)

    projector = None
    if opts.nuscenes_root is not None:
        from .nuscenes_boxes import NuScenesProjector

        projector = NuScenesProjector(Path(opts.nuscenes_root), opts.nuscenes_version)

    images = Path(out) / "images"
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    n_images = 0
    added_boxes = extra_objects = 0
    with ThreadPoolExecutor(max_workers=opts.workers) as pool:
        futures = [(job, pool.submit(_render, job, images, opts)) for job in jobs]
        for job, future in tqdm(futures, desc="driving: frames", unit="frame"):
            try:
                rendered = future.result()
            except OSError as e:
                report.skip(source, str(e), id=job.frame.id)
                continue
            n_images += len(rendered)
            samples = []
            if "qa" in opts.tasks:
                samples += [_qa_sample(job, q, rendered, opts) for q in job.questions]
            if "grounding" in opts.tasks:
                objects = _key_objects(job.frame)
                for obj in objects:
                    obj["phrase"] = report.free_text(obj["phrase"], source, f"{job.frame.id}/{obj['tag']}")
                if projector is not None:
                    filled, extra = projector.complete(job.frame.token, objects)
                    added_boxes += filled
                    extra_objects += len(extra)
                    objects += extra
                samples += _grounding_samples(job, rendered, [o for o in objects if o["box"]], opts)
            splits[job.split].extend(samples)
            report.converted += 1
    if projector is not None:
        report.details["nuscenes"] = {"boxes_filled": added_boxes, "extra_objects": extra_objects}
    report.images = n_images
    write_dataset(out, {k: v for k, v in splits.items() if v}, report)
    return report

"""The `dior-rsvg` source: DIOR-RSVG visual grounding (800x800 images, VOC-style XML per image).

Each object of ``Annotations/<image>.xml`` (``object/name``, ``object/bndbox`` xmin..ymax,
``object/description`` = the referring expression) is one record. Objects are numbered globally
over the XML files in name order; ``train.txt`` / ``val.txt`` / ``test.txt`` list those indices.
Without split files, a seeded split grouped by image is made.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from mini_internvl_adapt.metrics.boxes import grounding_answer, normalize_box
from mini_internvl_adapt.schema import ConversionReport, Sample, Turn

from .common import DOMAIN, GROUNDING, describe_error, grouped_test_set
from .images import image_name, write_images
from .raster import RenderOptions

SPLITS = ("train", "val", "test")
IMAGE_FOLDERS = ("JPEGImages", "images", ".")


def read_split_files(source: Path) -> dict[int, str]:
    """Global object index -> split, from the split files present."""
    assignment: dict[int, str] = {}
    for split in SPLITS:
        path = source / f"{split}.txt"
        if path.is_file():
            for line in path.read_text(encoding="utf-8").split():
                assignment[int(line)] = split
    return assignment


def _text(node: ET.Element | None, tag: str) -> str | None:
    found = node.find(tag) if node is not None else None
    return found.text.strip() if found is not None and found.text else None


def convert_dior_rsvg(
    source: Path,
    out: Path,
    report: ConversionReport,
    render: RenderOptions,
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 4,
) -> dict[str, list[Sample]]:
    """Convert DIOR-RSVG objects into "Detect <expression>" grounding samples.

    Raises:
        FileNotFoundError: No Annotations/ folder with XML files.
    """
    xmls = sorted((source / "Annotations").glob("*.xml"))
    if not xmls:
        raise FileNotFoundError(f"{source}: no Annotations/*.xml (DIOR-RSVG layout)")
    assignment = read_split_files(source)
    staged: list[tuple[int, str, Sample]] = []
    jobs: dict[str, Path] = {}
    index = 0
    unreadable: Path | None = None  # the first XML that could not be parsed
    for xml in xmls:
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as e:
            # Its objects cannot be counted, so the file is one record.
            report.read += 1
            report.skip(xml, f"bad XML: {e}")
            unreadable = unreadable or xml
            continue
        filename = _text(root, "filename") or f"{xml.stem}.jpg"
        size = root.find("size")
        image = next(
            (source / d / filename for d in IMAGE_FOLDERS if (source / d / filename).is_file()), None
        )
        for k, obj in enumerate(root.findall("object")):
            report.read += 1
            if assignment and unreadable is not None:
                # The split files list global object indices, which an unreadable file before this one
                # has made unknowable: placing the object anyway could move a test object into train.
                report.skip(
                    f"{xml.name}#object[{k}]",
                    f"object index unknown: {unreadable.name} could not be read, so the split files cannot "
                    "place this object (repair that file)",
                )
                continue
            where, i = f"{xml.name}#object[{index}]", index
            index += 1
            box_node = obj.find("bndbox")
            expression = _text(obj, "description")
            try:
                box = [float(_text(box_node, k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")]
                width, height = int(_text(size, "width") or 0), int(_text(size, "height") or 0)
            except ValueError:
                box, width, height = [float("nan")] * 4, 0, 0
            if image is None:
                report.skip(where, f"image {filename} not found under {', '.join(IMAGE_FOLDERS)}", id=str(i))
            elif not expression:
                report.skip(where, "no object/description (referring expression)", id=str(i))
            elif not (box[0] < box[2] and box[1] < box[3]) or width <= 0 or height <= 0:
                report.skip(where, f"bad bndbox {box} or size {width}x{height}", id=str(i))
            else:
                name = image_name(source, image)
                jobs[name] = image
                answer = grounding_answer(expression, [normalize_box(box, width, height)])
                sample = Sample(
                    id=f"dior-rsvg/{i}",
                    conversations=[Turn("human", f"<image>\nDetect {expression}"), Turn("gpt", answer)],
                    images=[name],
                    task=GROUNDING,
                    domain=DOMAIN,
                    meta={"boxes": [box], "label": _text(obj, "name"), "object_index": i},
                    widths=[width],
                    heights=[height],
                )
                staged.append((i, where, sample))
    facts = write_images(jobs, out, render, 4096, workers)
    report.images += sum(not isinstance(v, BaseException) for v in facts.values())
    test_images = grouped_test_set((s.images[0] for _, _, s in staged), test_fraction, seed)
    splits: dict[str, list[Sample]] = {}
    for i, where, sample in staged:
        fact = facts[sample.images[0]]
        if isinstance(fact, BaseException):
            report.skip(where, f"image: {describe_error(fact)}", id=str(i))
            continue
        if assignment:
            split = assignment.get(i)
            if split is None:
                report.skip(where, "object index listed in no split file", id=str(i))
                continue
        else:
            split = "test" if sample.images[0] in test_images else "train"
        splits.setdefault(split, []).append(sample)
        report.converted += 1
    return splits

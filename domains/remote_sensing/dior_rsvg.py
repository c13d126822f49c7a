"""The `dior-rsvg` source: DIOR-RSVG visual grounding (800x800 images, VOC-style XML per image).

Each object of ``Annotations/<image>.xml`` (``object/name``, ``object/bndbox`` xmin..ymax,
``object/description`` = the referring expression) is one record. Objects are numbered globally
over the XML files in name order; ``train.txt`` / ``val.txt`` / ``test.txt`` list those indices.
Without split files, a seeded split grouped by image is made.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.data_format.source_files import read_text
from mini_internvl_adapt.errors import DatasetError
from mini_internvl_adapt.metrics.boxes import grounding_answer, normalize_box

from .common import DOMAIN, GROUNDING, describe_error, grouped_test_set
from .images import image_name, write_images
from .raster import RenderOptions

SPLITS = ("train", "val", "test")
IMAGE_FOLDERS = ("JPEGImages", "images", ".")


def read_split_files(source: Path) -> dict[int, str]:
    """Global object index -> split, from the split files present.

    Raises:
        DatasetError: A line that is not an object index, or an index listed in two split files (the
            split of every object would be in doubt); names the file and line.
    """
    assignment: dict[int, str] = {}
    for split in SPLITS:
        path = source / f"{split}.txt"
        if not path.is_file():
            continue
        # "\n" only: splitlines() also breaks at form feeds, U+2028 ..., so the line numbers would be wrong.
        for number, line in enumerate(read_text(path).split("\n"), start=1):
            if not line.strip():
                continue
            try:
                index = int(line)
            except ValueError:
                raise DatasetError(path, f"'{line.strip()}' is not an object index", number) from None
            if assignment.get(index, split) != split:
                raise DatasetError(path, f"object {index} is also listed in {assignment[index]}.txt", number)
            assignment[index] = split
    return assignment


def _number(node: ET.Element | None, tag: str) -> float | None:
    """A finite number of the XML, or None when absent or malformed."""
    try:
        value = float(_text(node, tag) or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _object_box(box_node: ET.Element | None, size: ET.Element | None) -> tuple[list[float], int, int]:
    """The object's box, clipped to the image, and the image size; ValueError says what is wrong."""
    width, height = _number(size, "width"), _number(size, "height")
    if width is None or height is None or width <= 0 or height <= 0:
        raise ValueError("size/width and size/height must be positive numbers")
    box = [_number(box_node, k) for k in ("xmin", "ymin", "xmax", "ymax")]
    if any(v is None for v in box):
        raise ValueError("bndbox needs finite xmin, ymin, xmax, ymax")
    x1, y1, x2, y2 = (float(v) for v in box if v is not None)
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"bad bndbox {[x1, y1, x2, y2]}: needs xmin < xmax and ymin < ymax")
    # The gold box and the answer must agree: both are the part of the box inside the image.
    clipped = [
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    ]
    if not (clipped[0] < clipped[2] and clipped[1] < clipped[3]):
        raise ValueError(f"bndbox {[x1, y1, x2, y2]} lies outside the {width:g}x{height:g} image")
    return clipped, int(width), int(height)


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
                box, width, height = _object_box(box_node, size)
                problem = None
            except ValueError as e:
                problem = str(e)
            if image is None:
                report.skip(where, f"image {filename} not found under {', '.join(IMAGE_FOLDERS)}", id=str(i))
            elif not expression:
                report.skip(where, "no object/description (referring expression)", id=str(i))
            elif problem is not None:
                report.skip(where, problem, id=str(i))
            else:
                name = image_name(source, image)
                jobs[name] = image
                expression = report.free_text(expression, where, f"dior-rsvg/{i}")
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

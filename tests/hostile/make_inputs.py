"""Make the hostile and careless inputs of issue #16, seeded, into one folder.

    python tests/hostile/make_inputs.py OUT [--seed 0] [--big-mb 50]

Each input is what a hostile or careless user could hand a command: a word of 50 MB, a line with thousands of
images, a PNG whose header declares 50000 x 50000 pixels, a symlink out of the dataset, JSON nested 100 000
levels deep, predictions that are not UTF-8 or share no id with the data, free text holding the template's
special strings, a model folder with only pickled weights, a checkpoint that unpickles ``os.system``. The
tests in this folder run the commands on them; `make_inputs` returns where each one is.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import random
import struct
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEMOS = REPO / "domains"
SPECIAL = "<image> and <|im_end|> and <ref>x</ref><box>[[1, 2, 3, 4]]</box> <IMG_CONTEXT>"
NESTING = 100_000
MANY_IMAGES = 3000


def _png(path: Path, width: int, height: int, rng: random.Random) -> None:
    """A small RGB PNG of seeded noise."""
    rows = b"".join(b"\0" + bytes(rng.randrange(256) for _ in range(width * 3)) for _ in range(height))
    _write_png(path, width, height, zlib.compress(rows))


def _write_png(path: Path, width: int, height: int, data: bytes) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _line(sid: str, question: str, answer: str, images: list[str], **extra: Any) -> str:
    return json.dumps(
        {
            "id": sid,
            "image": images,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
            **extra,
        }
    )


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _normal_lines(rng: random.Random, prefix: str) -> list[str]:
    words = ["red", "car", "left", "lane", "tree", "house", "two", "yes", "no"]
    return [
        _line(
            f"{prefix}{i}",
            "<image>\nWhat is shown? " + " ".join(rng.choices(words, k=5)),
            rng.choice(words),
            [f"images/{i % 3}.png"],
        )  # fmt: skip
        for i in range(4)
    ]


def _dataset(out: Path, rng: random.Random) -> Path:
    """A small valid dataset: three noise images, train.jsonl and test.jsonl."""
    for i in range(3):
        _png(out / "images" / f"{i}.png", 40 + 8 * i, 32, rng)
    _write_lines(out / "train.jsonl", _normal_lines(rng, "t"))
    _write_lines(out / "test.jsonl", _normal_lines(rng, "q"))
    return out


def _deep(kind: str) -> str:
    """JSON nested NESTING levels deep (a list of lists ..., or objects)."""
    if kind == "list":
        return "[" * NESTING + "]" * NESTING
    return '{"a": ' * NESTING + "1" + "}" * NESTING


class _Evil:
    """Unpickles as os.system(...): a weights_only load must refuse it before anything runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def make_inputs(out: str | Path, seed: int = 0, big_mb: int = 50) -> dict[str, Path]:
    """Write every hostile input under `out`; returns name -> path (see the module docstring).

    Args:
        out: The folder to fill (created).
        seed: Seed of every random choice (pixels, words).
        big_mb: Size of the huge word, in MB.
    """
    out = Path(out)
    rng = random.Random(seed)
    paths: dict[str, Path] = {"root": out}
    paths["data"] = _dataset(out / "data", rng)
    big = "w" * (big_mb * 1024 * 1024)

    # Lengths: a 50 MB question and a 50 MB answer (one word each); a line with thousands of images.
    huge = _dataset(out / "huge", rng)
    lines = _normal_lines(rng, "n")
    lines += [_line("big-question", "<image>\n" + big, "no", ["images/0.png"])]
    lines += [_line("big-answer", "<image>\nWhat is shown?", big, ["images/1.png"])]
    lines += [
        _line("many-images", "<image>" * MANY_IMAGES + "\nHow many?", "3000", ["images/2.png"] * MANY_IMAGES)
    ]
    paths["huge"] = huge
    paths["huge_train"] = _write_lines(huge / "train.jsonl", lines)
    paths["huge_test"] = _write_lines(huge / "test.jsonl", lines)

    # A decompression bomb: a PNG header declaring 50000 x 50000 pixels over a tiny (broken) stream.
    bomb = _dataset(out / "bomb", rng)
    _write_png(bomb / "images" / "bomb.png", 50_000, 50_000, zlib.compress(b"\0" * 64))
    paths["bomb"] = bomb
    paths["bomb_train"] = _write_lines(
        bomb / "train.jsonl", [_line("bomb", "<image>\nWhat?", "x", ["images/bomb.png"])]
    )
    paths["bomb_test"] = _write_lines(
        bomb / "test.jsonl", [_line("bomb", "<image>\nWhat?", "x", ["images/bomb.png"])]
    )
    # The same with small sizes written in the line: the budget check trusts them, the loader meets the bomb.
    paths["bomb_sized"] = _write_lines(
        bomb / "sized.jsonl",
        [_line("bomb-sized", "<image>\nWhat?", "x", ["images/bomb.png"], width_list=[40], height_list=[32])]
        * 2,
    )

    # A symlink in images/ to a file outside the dataset.
    link = _dataset(out / "symlink", rng)
    _png(out / "outside" / "secret.png", 16, 16, rng)
    (link / "images" / "escape.png").unlink(missing_ok=True)
    (link / "images" / "escape.png").symlink_to(out / "outside" / "secret.png")
    paths["symlink"] = link
    paths["symlink_test"] = _write_lines(
        link / "escape.jsonl", [_line("escape", "<image>\nWhat?", "x", ["images/escape.png"])]
    )

    # JSON nested far deeper than a decoder can follow: a JSONL line, predictions, a meta file.
    nested = out / "nested"
    paths["nested_jsonl"] = _write_lines(nested / "test.jsonl", [_deep("object")])
    paths["nested_predictions"] = _write_lines(nested / "predictions.jsonl", [_deep("list")])
    paths["nested_meta"] = _write_lines(nested / "meta.json", [_deep("object")])

    # Predictions that are not UTF-8, and predictions whose ids match no sample.
    paths["latin1_predictions"] = out / "predictions" / "latin1.jsonl"
    paths["latin1_predictions"].parent.mkdir(parents=True, exist_ok=True)
    paths["latin1_predictions"].write_bytes('{"id": "q0", "answer": "caf\u00e9"}\n'.encode("latin-1"))
    paths["other_ids_predictions"] = _write_lines(
        out / "predictions" / "other_ids.jsonl",
        [json.dumps({"id": f"x{i}", "answer": "yes"}) for i in range(4)],
    )

    # Free text holding the template's special strings, for each domain's converter.
    paths.update(_special_text_sources(out / "special", rng))
    # A manifest of which nothing converts (every image is missing).
    paths["nothing_manifest"] = _manifest(out / "nothing" / "manifest.csv", [("missing.dcm", "Is it?", "no")])

    # Things of the user's that no command may replace without --overwrite.
    paths["user_file"] = out / "user" / "notes.txt"
    paths["user_file"].parent.mkdir(parents=True, exist_ok=True)
    paths["user_file"].write_text("the user's notes\n")
    paths["user_folder"] = out / "user"

    # A checkpoint that would run os.system if unpickled unsafely (the marker file must never appear).
    paths["evil_marker"] = out / "pwned"
    paths["evil_checkpoint"] = out / "evil.ckpt"
    paths["evil_checkpoint"].write_bytes(
        pickle.dumps({"state_dict": _Evil(paths["evil_marker"])}, protocol=2)
    )
    return paths


def _manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "question", "answer", "answer_type", "split"])
        for image, question, answer in rows:
            writer.writerow([image, question, answer, "OPEN", "train"])
    return path


def _special_text_sources(out: Path, rng: random.Random) -> dict[str, Path]:
    """Medical manifest, DriveLM JSON and remote-sensing labels whose free text holds SPECIAL."""
    demo_ct = sorted((DEMOS / "medical" / "demo" / "ct").glob("*.dcm"))[:2]
    medical = _manifest(
        out / "medical" / "manifest.csv",
        [
            (str(demo_ct[0]), f"Is there {SPECIAL}?", f"no {SPECIAL}"),
            (str(demo_ct[1]), "Which organ?", "lungs"),
        ],
    )
    drivelm = json.loads(
        (DEMOS / "driving" / "demo" / "QA" / "train_sample.json").read_text(encoding="utf-8")
    )
    for scene in drivelm.values():
        for frame in scene["key_frames"].values():
            for entries in frame["QA"].values():
                for qa in entries:
                    qa["Q"] = f"{qa['Q']} {SPECIAL}"
            for info in frame["key_object_infos"].values():
                info["Visual_description"] = f"car <image> {rng.choice(['red', 'blue'])}"
    driving = out / "driving" / "train_sample.json"
    driving.parent.mkdir(parents=True, exist_ok=True)
    driving.write_text(json.dumps(drivelm), encoding="utf-8")
    scene = out / "remote_sensing"
    scene.mkdir(parents=True, exist_ok=True)
    (scene / "scene.tif").write_bytes((DEMOS / "remote_sensing" / "demo" / "scene.tif").read_bytes())
    labels = json.loads((DEMOS / "remote_sensing" / "demo" / "scene.geojson").read_text(encoding="utf-8"))
    for feature in labels["features"]:
        feature["properties"]["label"] = f"{feature['properties']['label']} <image><|im_start|>"
    (scene / "scene.geojson").write_text(json.dumps(labels), encoding="utf-8")
    return {"special_medical": medical, "special_driving": driving, "special_remote_sensing": scene}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--big-mb", type=int, default=50)
    args = parser.parse_args()
    for name, path in make_inputs(args.out, args.seed, args.big_mb).items():
        print(f"{name:24s} {path}")


if __name__ == "__main__":
    main()

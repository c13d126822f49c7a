"""The non-scene sources: manifest CSV, RSVQA triplets, DIOR-RSVG XML, GeoChat JSON (fixtures made here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from mini_internvl_adapt.domains.remote_sensing import RemoteSensingDomain, detect_format  # noqa: E402
from mini_internvl_adapt.domains.remote_sensing.geochat import convert_text, geochat_box_to_internvl  # noqa: E402
from PIL import Image  # noqa: E402

from mini_internvl_adapt.data_format.samples import read_samples  # noqa: E402


def png(path: Path, size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (10, 120, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def geotiff(path: Path, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(size * size * 3, dtype=np.uint16).reshape(3, size, size) + 100
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=3, dtype="uint16") as dst:
        dst.write(data)
    return path


def test_manifest_classification_vqa_captioning_and_a_missing_image(
    shared_data: Path, tmp_path: Path
) -> None:
    src = tmp_path / "m"
    png(src / "a.png")
    geotiff(src / "b.tif")
    (src / "big.tif").symlink_to(shared_data / "geotiff" / "RGB.byte.tif")
    (src / "manifest.csv").write_text(
        "image,label,question,answer,type,caption,split\n"
        "a.png,forest,,,,,train\n"
        "b.tif,river,,,,,test\n"
        "a.png,,Is there water?,yes,presence,,test\n"
        "big.tif,,,,,a coastal city seen from orbit,test\n"
        "big.tif,,,,,a city by the sea,test\n"
        "missing.png,forest,,,,,train\n"
        ",,,,,,train\n"
    )
    report = RemoteSensingDomain().convert(src / "manifest.csv", tmp_path / "ds", max_size=300, workers=2)
    assert report.read == 7 and report.converted == 5 and len(report.skipped) == 2
    assert any("missing.png" in s.reason and "not found" in s.reason for s in report.skipped)
    test = {s.id: s for s in read_samples(tmp_path / "ds" / "test.jsonl")}
    river = test["manifest/2"]
    assert river.task == "rs-classification" and river.answer == "river"
    assert "forest, river" in river.question and river.meta["classes"] == ["forest", "river"]
    vqa = test["manifest/3"]
    assert vqa.task == "rs-vqa" and vqa.meta["question_type"] == "presence"
    assert vqa.question.endswith("Answer the question using a single word or phrase.")
    caption = test["manifest/4"]
    assert caption.task == "rs-captioning" and len(caption.meta["references"]) == 2
    assert caption.widths == [300] and caption.heights == [round(718 * 300 / 791)]  # decimated, whole scene
    assert caption.meta["crs"] == "EPSG:32618"
    assert Image.open(tmp_path / "ds" / caption.images[0]).size == (300, 272)
    # A PNG is copied byte for byte.
    assert (tmp_path / "ds" / "images" / "a.png").read_bytes() == (src / "a.png").read_bytes()


def rsvqa_fixture(root: Path) -> Path:
    """Two LR splits in the real file naming, with one inactive question and its images in Images_LR/."""
    root.mkdir()
    for img_id in (0, 1):
        geotiff(root / "Images_LR" / f"{img_id}.tif")
    questions = {
        "train": [
            {
                "id": 0,
                "img_id": 0,
                "type": "presence",
                "question": "Is there a road?",
                "answers_ids": [0],
                "active": True,
            },
            {
                "id": 1,
                "img_id": 0,
                "type": "count",
                "question": "How many buildings are there?",
                "answers_ids": [1],
                "active": True,
            },
            {
                "id": 2,
                "img_id": 0,
                "type": "comp",
                "question": "Are there more roads than farms?",
                "answers_ids": [2],
                "active": False,
            },
        ],
        "test": [
            {
                "id": 3,
                "img_id": 1,
                "type": "rural_urban",
                "question": "Is it a rural or an urban area?",
                "answers_ids": [3],
                "active": True,
            },
        ],
    }
    answers = {"train": ["yes", "12", "no"], "test": ["rural"]}
    for split, qs in questions.items():
        stem = root / f"LR_split_{split}"
        Path(f"{stem}_questions.json").write_text(json.dumps({"questions": qs}))
        ans = [
            {"id": q["id"], "question_id": q["id"], "answer": answers[split][i], "active": True}
            for i, q in enumerate(qs)
        ]
        Path(f"{stem}_answers.json").write_text(json.dumps({"answers": ans}))
        imgs = sorted({q["img_id"] for q in qs})
        Path(f"{stem}_images.json").write_text(
            json.dumps(
                {
                    "images": [
                        {
                            "id": i,
                            "questions_ids": [q["id"] for q in qs if q["img_id"] == i],
                            "active": True,
                            "original_name": f"{i}.tif",
                        }
                        for i in imgs
                    ]
                }
            )
        )
    return root


def test_rsvqa_triplets(tmp_path: Path) -> None:
    src = rsvqa_fixture(tmp_path / "rsvqa")
    assert detect_format(src) == "rsvqa"
    report = RemoteSensingDomain().convert(src, tmp_path / "ds")
    assert report.read == 4 and report.converted == 3
    assert report.skipped[0].reason == "inactive question" and report.skipped[0].id == "2"
    train = read_samples(tmp_path / "ds" / "train.jsonl")
    assert [s.id for s in train] == ["rsvqa-lr/train/0", "rsvqa-lr/train/1"]
    assert train[1].meta["question_type"] == "count" and train[1].answer == "12"
    assert (
        train[0].question == "<image>\nIs there a road?\nAnswer the question using a single word or phrase."
    )
    [test] = read_samples(tmp_path / "ds" / "test.jsonl")
    assert test.images == ["images/Images_LR__1.tif.png"] and test.widths == [32]


VOC = """<annotation><filename>{name}.jpg</filename><size><width>800</width><height>800</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = (
    "<object><name>{cls}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
    "<ymax>{b[3]}</ymax></bndbox><description>{desc}</description></object>"
)


def test_dior_rsvg_split_files_index_objects_globally(tmp_path: Path) -> None:
    src = tmp_path / "DIOR_RSVG"
    (src / "Annotations").mkdir(parents=True)
    for name in ("00001", "00002"):
        png(src / "JPEGImages" / f"{name}.jpg", size=(800, 800))
    (src / "Annotations" / "00001.xml").write_text(
        VOC.format(
            name="00001",
            objects="".join(
                [
                    OBJ.format(cls="airplane", b=(80, 80, 160, 160), desc="the airplane on the left"),
                    OBJ.format(cls="vehicle", b=(400, 400, 420, 440), desc=""),
                ]
            ),
        )
    )
    (src / "Annotations" / "00002.xml").write_text(
        VOC.format(
            name="00002", objects=OBJ.format(cls="ship", b=(0, 400, 100, 800), desc="a ship at the bottom")
        )
    )
    (src / "Annotations" / "00003.xml").write_text("<annotation><filename>")
    (src / "train.txt").write_text("0\n1\n")
    (src / "test.txt").write_text("2\n")
    report = RemoteSensingDomain().convert(src, tmp_path / "ds")
    assert report.read == 4 and report.converted == 2
    assert {s.reason.split(":")[0] for s in report.skipped} == {
        "no object/description (referring expression)",
        "bad XML",
    }
    [train] = read_samples(tmp_path / "ds" / "train.jsonl")
    assert train.question == "<image>\nDetect the airplane on the left"
    assert train.answer == "<ref>the airplane on the left</ref><box>[[100, 100, 200, 200]]</box>"
    assert train.meta["boxes"] == [[80.0, 80.0, 160.0, 160.0]]
    [test] = read_samples(tmp_path / "ds" / "test.jsonl")
    assert test.id == "dior-rsvg/2" and test.answer.endswith("[[0, 500, 125, 1000]]</box>")
    scores = RemoteSensingDomain().score([test], {test.id: test.answer})
    assert scores["grounding"]["acc@0.5"] == 1.0


def test_dior_rsvg_objects_after_an_unreadable_xml_are_not_placed_by_shifted_indices(tmp_path: Path) -> None:
    # 00002.xml is truncated: its objects (global 2, 3) cannot be counted, so 00003's objects (4, 5, listed
    # in test.txt) would become 2, 3 and train. They are skipped with the reason instead.
    src = tmp_path / "DIOR_RSVG"
    (src / "Annotations").mkdir(parents=True)
    for name in ("00001", "00002", "00003"):
        png(src / "JPEGImages" / f"{name}.jpg", size=(800, 800))
        objects = "".join(
            OBJ.format(cls="ship", b=(10, 10, 50, 60), desc=f"ship {name} {k}") for k in range(2)
        )
        (src / "Annotations" / f"{name}.xml").write_text(VOC.format(name=name, objects=objects))
    (src / "Annotations" / "00002.xml").write_text(VOC.format(name="00002", objects="<object>")[:-20])
    (src / "train.txt").write_text("0\n1\n2\n3\n")
    (src / "test.txt").write_text("4\n5\n")
    report = RemoteSensingDomain().convert(src, tmp_path / "ds")
    train = read_samples(tmp_path / "ds" / "train.jsonl")
    assert [s.question.split("\n")[1] for s in train] == ["Detect ship 00001 0", "Detect ship 00001 1"]
    assert not (tmp_path / "ds" / "test.jsonl").exists() or not read_samples(tmp_path / "ds" / "test.jsonl")
    reasons = {s.source: s.reason for s in report.skipped}
    assert reasons["00003.xml#object[0]"].startswith("object index unknown: 00002.xml could not be read")
    assert report.read == 2 + 1 + 2 and report.converted == 2 and len(report.skipped) == 3


def test_geochat_boxes_scale_and_rotation() -> None:
    assert geochat_box_to_internvl(10, 20, 30, 40) == [100, 200, 300, 400]
    # 90 degrees about the centre (20, 30): a 20x20 square stays itself; a 20x10 box turns into 10x20.
    assert geochat_box_to_internvl(10, 25, 30, 35, 90) == [150, 200, 250, 400]
    assert geochat_box_to_internvl(95, 95, 105, 100, 0) == [950, 950, 1000, 1000]  # clamped
    text = "<p>two planes</p> {<10><20><30><40>|0}{<50><50><60><60>|45}"
    x = 5 * 2**0.5
    expected = f"[[100, 200, 300, 400], [{round((55 - x) * 10)}, {round((55 - x) * 10)}, {round((55 + x) * 10)}, {round((55 + x) * 10)}]]"
    assert convert_text(text) == f"<ref>two planes</ref> <box>{expected}</box>"
    # The reference writes the angle in brackets, ``|<theta>``: the same box as ``|theta``.
    assert (
        convert_text("{<50><50><60><60>|<45>}")
        == convert_text("{<50><50><60><60>|45}")
        != "{<50><50><60><60>|<45>}"
    )


def test_geochat_rotation_turns_the_box_in_pixels_on_a_non_square_image() -> None:
    # 800x400 image: <40><40><60><60> is 160x80 px centred at (400, 200); turned 90 degrees it is 80x160 px.
    assert geochat_box_to_internvl(40, 40, 60, 60, 90, aspect=2.0) == [450, 300, 550, 700]
    assert convert_text("{<40><40><60><60>|<90>}", aspect=2.0) == "<box>[[450, 300, 550, 700]]</box>"


def test_geochat_conversion(tmp_path: Path) -> None:
    src = tmp_path / "geochat"
    png(src / "P0001_0000.png", size=(500, 500))
    entries = [
        {
            "id": "P0001_0000",
            "image": "P0001_0000.png",
            "conversations": [
                {"from": "human", "value": "<image>\n[refer] Where is the small car?"},
                {"from": "gpt", "value": "<p>small car</p> {<10><20><30><40>|0}"},
            ],
        },
        {
            "id": "P0001_0000",
            "image": "P0001_0000.png",
            "conversations": [
                {"from": "human", "value": "[vqa] How many cars?"},
                {"from": "gpt", "value": "2"},
            ],
        },
        {
            "id": "P9",
            "image": "missing.png",
            "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}],
        },
        {"id": "P10"},
        {
            "id": "P0002_0000",
            "image": "wide.png",
            "conversations": [
                {"from": "human", "value": "<image>\n[refer] Where is the ship?"},
                {"from": "gpt", "value": "<p>ship</p> {<40><40><60><60>|<90>}"},
            ],
        },
    ]
    png(src / "wide.png", size=(800, 400))
    (src / "geochat.json").write_text(json.dumps(entries))
    report = RemoteSensingDomain().convert(src / "geochat.json", tmp_path / "ds", test_fraction=0)
    assert report.read == 5 and report.converted == 3 and len(report.skipped) == 2
    grounding, vqa, ship = read_samples(tmp_path / "ds" / "train.jsonl")
    assert ship.task == "rs-grounding" and ship.answer == "<ref>ship</ref> <box>[[450, 300, 550, 700]]</box>"
    assert np.allclose(ship.meta["boxes"], [[360, 120, 440, 280]])
    assert (
        grounding.task == "rs-grounding"
        and grounding.answer == "<ref>small car</ref> <box>[[100, 200, 300, 400]]</box>"
    )
    assert grounding.meta["boxes"] == [[50.0, 100.0, 150.0, 200.0]]
    assert vqa.task == "rs-vqa" and vqa.question.startswith("<image>\n[vqa]")


def test_format_detection_and_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        detect_format(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="cannot tell the source format; pass --format"):
        detect_format(tmp_path / "x.txt")
    (tmp_path / "m.csv").write_text("path,label\na.png,x\n")
    with pytest.raises(ValueError, match="needs an 'image' column"):
        RemoteSensingDomain().convert(tmp_path / "m.csv", tmp_path / "ds")
    with pytest.raises(ValueError, match="--chip-size do not apply to the 'manifest' format"):
        RemoteSensingDomain().convert(tmp_path / "m.csv", tmp_path / "ds", chip_size=3)


def test_dior_rsvg_split_file_lines_are_counted_at_newlines_only(tmp_path: Path) -> None:
    from mini_internvl_adapt.domains.remote_sensing.dior_rsvg import read_split_files

    from mini_internvl_adapt.errors import DatasetError

    # A form feed or U+2028 after an index is whitespace, not a line break: the bad line is line 4.
    (tmp_path / "train.txt").write_text("0\n1\x0c\n2\u2028\nabc\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"train\.txt:4: 'abc' is not an object index"):
        read_split_files(tmp_path)
    (tmp_path / "train.txt").write_text("0\r\n1\x0c\r\n", encoding="utf-8")
    assert read_split_files(tmp_path) == {0: "train", 1: "train"}

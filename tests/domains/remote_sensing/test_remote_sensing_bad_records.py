"""Remote sensing: malformed records in every source format are skipped with their reason, bad options are
refused, distinct source images never share an output image, and scoring never rewards a missing answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

rasterio = pytest.importorskip("rasterio")

from mini_internvl_adapt.domains.remote_sensing import RemoteSensingDomain  # noqa: E402
from mini_internvl_adapt.domains.remote_sensing.scoring import count_bin, score_samples  # noqa: E402
from test_remote_sensing_scene import convert, make_scene, map_box, write_labels  # noqa: E402
from test_remote_sensing_sources import OBJ, VOC, geotiff, png, rsvqa_fixture  # noqa: E402

from mini_internvl_adapt.data_format.samples import Sample, Turn, read_samples  # noqa: E402
from mini_internvl_adapt.errors import DatasetError  # noqa: E402


def _split(out: Path, split: str) -> list[Sample]:
    return read_samples(out / f"{split}.jsonl") if (out / f"{split}.jsonl").exists() else []


def _reasons(report) -> dict[str, str]:
    assert report.read == report.converted + len(report.skipped)
    return {str(s.source): s.reason for s in report.skipped}


def test_rsvqa_malformed_questions_skip_alone(tmp_path: Path) -> None:
    src = rsvqa_fixture(tmp_path / "rsvqa")
    qfile = src / "LR_split_train_questions.json"
    doc = json.loads(qfile.read_text())
    good = doc["questions"][0]
    doc["questions"] += [
        {**good, "id": 10, "answers_ids": ["x"]},
        {**good, "id": 11, "img_id": "abc"},
        {**good, "id": 12, "answers_ids": 5},
        {**good, "id": 13, "type": None},  # no type: an open question
        {**good, "id": "q14"},
        {**good, "id": 15, "answers_ids": [99]},
    ]
    qfile.write_text(json.dumps(doc))
    afile = src / "LR_split_train_answers.json"
    answers = json.loads(afile.read_text())
    answers["answers"].append({"id": 99, "question_id": 15})  # an answer entry without its text
    afile.write_text(json.dumps(answers))
    report = RemoteSensingDomain().convert(src, tmp_path / "ds")
    reasons = _reasons(report)
    assert (
        reasons["LR_split_train_questions.json#10"] == "answers_ids must be a list of answer ids, got ['x']"
    )
    assert reasons["LR_split_train_questions.json#11"] == "img_id must be an image id, got 'abc'"
    assert reasons["LR_split_train_questions.json#12"] == "answers_ids must be a list of answer ids, got 5"
    assert reasons["LR_split_train_questions.json[7]"] == "question entry without an integer id"
    assert reasons["LR_split_train_questions.json#15"] == "no active answer with text"
    train = {s.id: s for s in read_samples(tmp_path / "ds" / "train.jsonl")}
    assert train["rsvqa-lr/train/13"].meta["question_type"] == "open"
    assert report.converted == 4


def test_rsvqa_hr_questions_use_hr_images(tmp_path: Path) -> None:
    src = rsvqa_fixture(tmp_path / "rsvqa")
    for path in src.glob("LR_split_test_*.json"):
        shutil.copy(path, src / path.name.replace("LR_", "USGS_"))
    geotiff(src / "Data" / "1.tif", size=40)  # the HR image with the LR image's id (32 px)
    RemoteSensingDomain().convert(src, tmp_path / "ds")
    test = {s.id: s for s in read_samples(tmp_path / "ds" / "test.jsonl")}
    assert test["rsvqa-lr/test/3"].widths == [32] and test["rsvqa-usgs/test/3"].widths == [40]
    assert test["rsvqa-usgs/test/3"].images == ["images/Data__1.tif.png"]


def test_manifest_images_with_one_stem_or_one_file_name_stay_distinct(tmp_path: Path) -> None:
    png(tmp_path / "csv" / "scenes" / "harbor.png", size=(30, 20))
    geotiff(tmp_path / "csv" / "scenes" / "harbor.tif", size=50)
    png(tmp_path / "d1" / "x.png", size=(40, 40), colour=(200, 180, 150))
    png(tmp_path / "d2" / "x.png", size=(24, 24), colour=(250, 250, 250))
    (tmp_path / "csv" / "m.csv").write_text(
        "image,label,split\nscenes/harbor.png,port,train\nscenes/harbor.tif,port,train\n"
        "../d1/x.png,beach,train\n../d2/x.png,snow,train\n"
    )
    report = RemoteSensingDomain().convert(tmp_path / "csv" / "m.csv", tmp_path / "ds")
    assert report.converted == 4 and report.images == 4
    samples = read_samples(tmp_path / "ds" / "train.jsonl")
    assert len({s.images[0] for s in samples}) == 4
    assert [(s.widths[0], s.heights[0]) for s in samples] == [(30, 20), (50, 50), (40, 40), (24, 24)]


def test_manifest_split_names_and_extra_cells(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(
        "image,label,split\na.png,x,../escaped\na.png,x,training\na.png,x,train,extra\na.png,y,validation\n"
    )
    report = RemoteSensingDomain().convert(tmp_path / "m.csv", tmp_path / "ds")
    reasons = _reasons(report)
    assert "got '../escaped'" in reasons[f"{tmp_path / 'm.csv'}:2"]
    assert "got 'training'" in reasons[f"{tmp_path / 'm.csv'}:3"]
    assert reasons[f"{tmp_path / 'm.csv'}:4"] == "row has 1 more cell(s) than the header"
    assert report.samples["val"] == 1 and not (tmp_path / "escaped.jsonl").exists()
    (tmp_path / "latin.csv").write_bytes("image,label\na.png,for\xeat\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin\.csv: not UTF-8 text"):
        RemoteSensingDomain().convert(tmp_path / "latin.csv", tmp_path / "ds2", format="manifest")


def test_dior_rsvg_bad_boxes_sizes_and_split_files(tmp_path: Path) -> None:
    src = tmp_path / "DIOR_RSVG"
    (src / "Annotations").mkdir(parents=True)
    png(src / "JPEGImages" / "00001.jpg", size=(80, 80))
    objects = [
        OBJ.format(cls="a", b=(10, 10, "inf", 40), desc="infinite"),
        OBJ.format(cls="b", b=(10, 10, 500, 900), desc="overflowing"),
        OBJ.format(cls="c", b=(100, 100, 120, 120), desc="outside"),
    ]
    xml = VOC.format(name="00001", objects="".join(objects)).replace("800", "80")
    (src / "Annotations" / "00001.xml").write_text(xml)
    report = RemoteSensingDomain().convert(src, tmp_path / "ds", test_fraction=0)
    reasons = _reasons(report)
    assert reasons["00001.xml#object[0]"] == "bndbox needs finite xmin, ymin, xmax, ymax"
    assert reasons["00001.xml#object[2]"].endswith("lies outside the 80x80 image")
    [sample] = read_samples(tmp_path / "ds" / "train.jsonl")
    # The gold box and the answer are the same clipped box: the gold answer scores as a hit.
    assert sample.meta["boxes"] == [[10.0, 10.0, 80.0, 80.0]]
    assert sample.answer.endswith("[[125, 125, 1000, 1000]]</box>")
    assert RemoteSensingDomain().score([sample], {sample.id: sample.answer})["grounding"]["acc@0.5"] == 1.0
    (src / "Annotations" / "00001.xml").write_text(xml.replace("<width>80</width>", "<width>80.0</width>"))
    assert RemoteSensingDomain().convert(src, tmp_path / "ds2", test_fraction=0).converted == 1
    (src / "train.txt").write_text("0\n1\nabc\n")
    with pytest.raises(DatasetError, match=r"train\.txt:3: 'abc' is not an object index"):
        RemoteSensingDomain().convert(src, tmp_path / "ds3")
    (src / "train.txt").write_text("0\n1\n")
    (src / "test.txt").write_text("1\n2\n")
    with pytest.raises(DatasetError, match=r"test\.txt:1: object 1 is also listed in train\.txt"):
        RemoteSensingDomain().convert(src, tmp_path / "ds4")


def test_geochat_empty_or_null_values_are_skipped(tmp_path: Path) -> None:
    png(tmp_path / "img.png")
    turn = {"from": "human", "value": "<image>\nWhat is this?"}
    entries = [
        {"id": "a", "image": "img.png", "conversations": [turn, {"from": "gpt", "value": "A port."}]},
        {"id": "b", "image": "img.png", "conversations": [turn, {"from": "gpt", "value": None}]},
        {"id": "c", "image": "img.png", "conversations": [turn, {"from": "gpt", "value": ""}]},
    ]
    (tmp_path / "geochat.json").write_text(json.dumps(entries))
    report = RemoteSensingDomain().convert(tmp_path / "geochat.json", tmp_path / "ds", format="geochat")
    reasons = _reasons(report)
    assert report.converted == 1
    assert (
        reasons["geochat.json[1]"] == reasons["geochat.json[2]"] == "a turn whose value is empty or not text"
    )


def test_geojson_features_of_the_wrong_shape_are_rejected_alone(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    labels = write_labels(tmp_path / "scene.geojson", [("car", map_box(10, 10, 40, 40))])
    doc = json.loads(labels.read_text())
    good = doc["features"][0]
    doc["features"] += [
        "abc",
        {**good, "properties": ["label"]},
        {**good, "properties": {"label": {"a": 1}}},
        {**good, "properties": {"label": float("nan")}},
        {**good, "properties": {"label": 3.0}},  # a class id written as a float
        {**good, "geometry": {"type": "Polygon", "coordinates": [["x", "y"]]}},
        {**good, "properties": None},  # valid GeoJSON: a feature without properties has no class
    ]
    labels.write_text(json.dumps(doc))
    report = convert(scene, tmp_path / "ds", labels=labels)
    reasons = _reasons(report)
    base = f"{labels}#features"
    assert reasons[f"{base}[1]"] == reasons[f"{base}[2]"] == "not a Feature object with a properties object"
    assert "no 'label' property of text or a whole number" in reasons[f"{base}[3]"]
    assert "no 'label' property of text or a whole number" in reasons[f"{base}[4]"]
    assert "malformed Polygon coordinates" in reasons[f"{base}[6]"]
    assert "no 'label' property" in reasons[f"{base}[7]"]
    answers = " ".join(s.answer for split in ("train", "test") for s in _split(tmp_path / "ds", split))
    assert "<ref>car</ref>" in answers and "<ref>3</ref>" in answers
    doc["features"] = {"a": good}
    labels.write_text(json.dumps(doc))
    report = convert(scene, tmp_path / "ds2", labels=labels)
    assert "'features' must be a list" in _reasons(report)[str(labels)]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"max_size": 0}, "--max-size must be a positive number"),
        ({"min_valid": float("nan")}, "--min-valid must be a share between 0 and 1"),
        ({"min_valid": 5.0}, "--min-valid must be a share between 0 and 1"),
        ({"point_size": -40.0}, "--point-size must be a positive number"),
        ({"point_size": float("nan")}, "--point-size must be a positive number"),
    ],
)
def test_nonsense_numeric_options_are_refused(tmp_path: Path, option: dict, message: str) -> None:
    scene = make_scene(tmp_path)
    write_labels(tmp_path / "scene.geojson", [("car", map_box(10, 10, 40, 40))])
    fmt = {"format": "manifest"} if "max_size" in option else {}
    source = scene
    if fmt:
        (tmp_path / "m.csv").write_text("image,label\nscene.tif,x\n")
        source = tmp_path / "m.csv"
        with pytest.raises(ValueError, match=message):
            RemoteSensingDomain().convert(source, tmp_path / "ds", **fmt, **option)
        return
    with pytest.raises(ValueError, match=message):
        convert(source, tmp_path / "ds", **option)


def test_scenes_differing_only_in_suffix_do_not_overwrite_each_other(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    folder.mkdir()
    scene = make_scene(folder)
    shutil.copy(scene, folder / "scene.tiff")
    write_labels(folder / "scene.geojson", [("car", map_box(10, 10, 40, 40))])
    report = convert(folder, tmp_path / "ds", test_fraction=0)
    reasons = _reasons(report)
    assert "same scene name as scene.tif" in reasons[str(folder / "scene.tiff")]
    ids = [s.id for s in read_samples(tmp_path / "ds" / "train.jsonl")]
    assert len(ids) == len(set(ids))


def test_scoring_missing_predictions_negative_counts_and_null_types() -> None:
    def vqa(i: str, answer: str, qtype: object) -> Sample:
        turns = [Turn("human", "<image>\nQ?"), Turn("gpt", answer)]
        return Sample(
            id=i, conversations=turns, images=["a.png"], task="rs-vqa", meta={"question_type": qtype}
        )

    samples = [vqa("a", "", "presence"), vqa("b", "5", "count"), vqa("c", "yes", None)]
    result = score_samples(samples, {"b": "-5", "c": "yes"})
    assert result["missing_predictions"] == 1
    assert result["vqa"]["per_type"]["presence"]["accuracy"] == 0.0  # no answer is never right
    assert result["vqa"]["per_type"]["count"]["accuracy"] == 0.0  # -5 is not a count of 5
    assert result["vqa"]["per_type"]["open"]["accuracy"] == 1.0
    assert count_bin("-3") is None and count_bin("3") == "1-100"

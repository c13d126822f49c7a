"""Medical conversion: de-identification, bad input, the four source formats, splits, the CLI end to end."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from mini_internvl_adapt.domains.medical import MedicalDomain  # noqa: E402
from mini_internvl_adapt.domains.medical.deid import digest  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from test_medical_render import write_dicom  # noqa: E402

from mini_internvl_adapt.cli import main  # noqa: E402
from mini_internvl_adapt.data_format.samples import read_samples  # noqa: E402
from mini_internvl_adapt.errors import DatasetError  # noqa: E402

# Fake PHI inside pydicom's bundled files (reference list).
REFERENCE_PHI = [
    "CompressedSamples^CT1",
    "1CT1",
    "CompressedSamples^MR1",
    "4MR1",
    "Lastname^Firstname",
    "id11111",
]
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "AccessionNumber",
    "ReferringPhysicianName",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "OperatorsName",
    "PerformingPhysicianName",
    "DeviceSerialNumber",
)
BUNDLED = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "examples_overlay.dcm",
    "examples_palette.dcm",
    "examples_rgb_color.dcm",
    "examples_ybr_color.dcm",
    "examples_jpeg2k.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtdose_1frame.dcm",
    "liver_1frame.dcm",
]
BROKEN = {"MR_truncated.dcm": "truncated", "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS"}


def phi_strings(paths: list[Path]) -> set[str]:
    """Identifying values of the files (and of the reference list), long enough to grep reliably."""
    found = set(REFERENCE_PHI)
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in PHI_KEYWORDS:
            value = ds.get(keyword)
            if value is None:
                continue
            values = value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
            for v in values:
                text = str(v).strip()
                # A placeholder such as OperatorsName "----" identifies no one, and its bytes turn up in
                # compressed pixel data by chance: only values with a letter or digit are looked for.
                found.update(
                    part
                    for part in [text, *text.split("^")]
                    if len(part) >= 4 and any(c.isalnum() for c in part)
                )
    return found


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    fields = sorted({k for row in rows for k in row})
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _phi_name(path: Path, keyword: str, fallback: str) -> str:
    """A file's own PHI value, as exports use it to name folders and files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword, "") or "").strip()
    value = value.replace("/", "_")
    return value if len(value) >= 4 else fallback


def test_bundled_dicoms_leave_no_phi_anywhere(tmp_path: Path) -> None:
    # Exports name folders and files after the patient: the source tree itself carries PHI, down to the
    # source folder's own name and a manifest column that is not used for text.
    src = tmp_path / "export Lastname^Firstname"
    rows, copied, folders = [], [], []
    for i, name in enumerate([*BUNDLED, *BROKEN]):
        original = Path(get_testdata_file(name, download=False))
        folder = _phi_name(original, "PatientName", "Lastname^Firstname")
        relative = f"{folder}/{_phi_name(original, 'PatientID', 'id11111')}_{i:02d}.dcm"
        target = src / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(original, target)
        copied.append(target)
        folders.append(folder)
        patient = {"patient_name": folder, "mrn": target.stem}
        rows.append({"image": relative, "label": "abnormal" if i % 2 else "normal", **patient})
        rows.append({"image": relative, "question": "Is this normal?", "answer": "yes", **patient})
    assert "CompressedSamples^CT1" in folders and (src / "CompressedSamples^CT1/1CT1_00.dcm").is_file()
    (src / "CompressedSamples^CT1" / "notes of 1CT1.dcm").write_text("this is not DICOM")
    first = copied[0].relative_to(src).as_posix()
    rows += [
        {"image": "CompressedSamples^CT1/notes of 1CT1.dcm", "label": "normal"},
        {"image": "CompressedSamples^CT1/1CT1_missing.dcm", "label": "normal"},
        {"image": first, "label": ""},
    ]
    manifest = write_manifest(src / "manifest.csv", rows)
    out = tmp_path / "out"
    report = MedicalDomain().convert(manifest, out, allow_demographics=True, frames="all", workers=0)

    # Counts add up; each broken record is skipped with its manifest row and reason (no path).
    assert report.read == len(rows) == report.converted + len(report.skipped)
    skips = {s.source: s.reason for s in report.skipped}
    n = len(rows) + 1  # the last manifest line
    missing = f"sha256:{digest('CompressedSamples^CT1/1CT1_missing.dcm')}"
    assert skips[f"manifest.csv:{n}"] == "empty label"
    assert skips[f"manifest.csv:{n - 1}"] == f"image {missing}: image file not found"
    assert skips[f"manifest.csv:{n - 2}"].endswith(": not a DICOM file (no DICM preamble)")
    reasons = "\n".join(skips.values())
    assert "truncated" in reasons and "JPEG-LS" in reasons and "pip install" in reasons
    assert report.converted == 2 * len(BUNDLED)
    assert report.source == "manifest.csv"

    # No identifying value reaches any output file: text, images, names.
    phi = phi_strings(copied)
    assert "JFK IMAGING CENTER" in phi and "20040119" in phi  # the values really were read
    # ... nor does any folder or file name of the source tree (the converted and the skipped ones).
    phi.update([src.name, "notes of 1CT1", "1CT1_missing"])
    phi.update(part for p in copied for part in p.relative_to(src).parts)
    assert {"CompressedSamples^CT1", "1CT1_00.dcm", "CompressedSamples^MR1"} <= phi
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" for p in files)
    for path in files:
        data = path.read_bytes()
        for value in phi:
            assert value.encode() not in data, f"{value!r} leaked into {path.relative_to(out)}"
            assert value.lower() not in path.name.lower()
    for path in out.glob("images/*.png"):
        assert len(path.stem.split("_")[0]) == 16 and all(c in "0123456789abcdef_f" for c in path.stem)
        with Image.open(path) as im:
            assert im.mode in ("L", "RGB") and not im.text  # no text chunks

    # Prompts use allow-listed attributes only (demographics allowed here: sex and age band at most).
    samples = read_samples(out / "train.jsonl") + read_samples(out / "test.jsonl")
    for sample in samples:
        assert set(sample.meta) <= {
            "modality",
            "body_part",
            "view_position",
            "photometric",
            "sex",
            "age_band",
            "sop_uid_sha256",
            "frames",
            "number_of_frames",
            "window",
            "source_image_sha256",
            "source",
            "labels",
            "answer_type",
        }
    # The source image is named by its manifest row and a digest of its path, never by the path.
    assert all(s.meta["source"].startswith("manifest.csv:") for s in samples)
    assert {s.meta["source_image_sha256"] for s in samples} <= {
        digest(p.relative_to(src).as_posix()) for p in copied
    }
    ybr = [s for s in samples if s.meta.get("number_of_frames") == 30]
    assert (
        ybr and len(ybr[0].images) == 30 and ybr[0].question.startswith("Image-1: <image>\nImage-2: <image>")
    )


def _issue_tree(tmp_path: Path) -> Path:
    """The reviewer's reproduction: files in a folder named after the PatientID, a manifest beside it."""
    folder = tmp_path / "src" / "CompressedSamples^CT1"
    folder.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), folder / "1CT1.dcm")
    shutil.copy(get_testdata_file("MR_truncated.dcm", download=False), folder / "4MR1_trunc.dcm")
    rows = [
        {"image": "CompressedSamples^CT1/1CT1.dcm", "label": "a"},
        {"image": "CompressedSamples^CT1/4MR1_trunc.dcm", "label": "b"},
    ]
    return write_manifest(tmp_path / "src" / "m.csv", rows)


def _convert_cli(manifest: Path, out: Path, *flags: str) -> dict:
    argv = ["convert", "--domain", "medical", "--source", str(manifest), "--out", str(out), "--workers", "0"]
    assert main([*argv, *flags]) == 0
    return json.loads((out / "report.json").read_text())


def test_cli_writes_no_source_path_by_default(tmp_path: Path) -> None:
    manifest = _issue_tree(tmp_path)
    out = tmp_path / "out"
    report = _convert_cli(manifest, out)
    for path in [p for p in out.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        for value in ("CompressedSamples", "1CT1", "4MR1", str(tmp_path / "src")):
            assert value.encode() not in data and value not in path.name, f"{value!r} in {path.name}"
    # The skip names its manifest row, a digest of the path and the problem.
    assert report["source"] == "m.csv" and report["read"] == 2 and report["converted"] == 1
    assert report["skips"] == [
        {
            "source": "m.csv:3",
            "reason": f"image sha256:{digest('CompressedSamples^CT1/4MR1_trunc.dcm')}: "
            "pixel data is truncated or inconsistent with the header (ValueError)",
        }
    ]
    (sample,) = read_samples(out / "train.jsonl")
    assert sample.meta["source"] == "m.csv:2" and "source_image" not in sample.meta
    assert sample.meta["source_image_sha256"] == digest("CompressedSamples^CT1/1CT1.dcm")


def test_keep_source_paths_is_an_explicit_opt_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _issue_tree(tmp_path)
    report = _convert_cli(manifest, tmp_path / "out", "--keep-source-paths")
    assert report["source"] == str(manifest)
    assert report["skips"][0]["reason"].startswith("image CompressedSamples^CT1/4MR1_trunc.dcm: pixel data")
    (sample,) = read_samples(tmp_path / "out" / "train.jsonl")
    assert sample.meta["source_image"] == "CompressedSamples^CT1/1CT1.dcm"
    # The old opt-out flag is gone: safe is the default, so it has nothing left to do.
    with pytest.raises(SystemExit):
        _convert_cli(manifest, tmp_path / "out2", "--redact-paths")
    assert "unrecognized arguments: --redact-paths" in capsys.readouterr().err


def test_converting_again_into_the_same_folder_renders_with_the_new_options(tmp_path: Path) -> None:
    # Image names come from the SOPInstanceUID alone: a second conversion with another window must
    # replace the first one's pixels, not keep them because the name exists.
    source = write_manifest(
        tmp_path / "m.csv", [{"image": get_testdata_file("CT_small.dcm", download=False), "label": "ct"}]
    )
    out, fresh = tmp_path / "out", tmp_path / "fresh"

    def pixels(dataset: Path) -> np.ndarray:
        (sample,) = [s for split in ("train", "test") for s in _samples(dataset, split)]
        with Image.open(dataset / sample.images[0]) as im:
            return np.asarray(im.convert("RGB"))

    MedicalDomain().convert(source, out, window="lung", workers=0, test_fraction=0)
    lung = pixels(out)
    MedicalDomain().convert(source, out, window="bone", workers=0, test_fraction=0)
    MedicalDomain().convert(source, fresh, window="bone", workers=0, test_fraction=0)
    assert not np.array_equal(pixels(out), lung)
    assert np.array_equal(pixels(out), pixels(fresh))


def _samples(dataset: Path, split: str) -> list:
    path = dataset / f"{split}.jsonl"
    return read_samples(path) if path.exists() else []


def test_burned_in_files_are_skipped_unless_allowed(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", np.zeros((8, 8), np.uint16), BurnedInAnnotation="YES", PatientID="P1")
    write_dicom(tmp_path / "b.dcm", np.ones((8, 8), np.uint16), PatientID="P2")
    manifest = write_manifest(
        tmp_path / "m.csv", [{"image": "a.dcm", "label": "x"}, {"image": "b.dcm", "label": "y"}]
    )
    report = MedicalDomain().convert(manifest, tmp_path / "out", workers=0)
    assert report.converted == 1 and "BurnedInAnnotation is YES" in report.skipped[0].reason
    report = MedicalDomain().convert(manifest, tmp_path / "out2", workers=0, allow_burned_in=True)
    assert report.converted == 2 and not report.skipped


def test_split_keeps_a_patient_together_and_is_seeded(tmp_path: Path) -> None:
    rows = []
    for patient in range(6):
        for k in range(3):
            name = f"p{patient}_{k}.dcm"
            write_dicom(tmp_path / name, np.full((4, 4), k, np.uint16), PatientID=f"PAT{patient}")
            rows.append({"image": name, "label": "a" if k else "b"})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    MedicalDomain().convert(manifest, tmp_path / "o1", workers=0, test_fraction=0.34, seed=3)
    MedicalDomain().convert(manifest, tmp_path / "o2", workers=2, test_fraction=0.34, seed=3)
    test = read_samples(tmp_path / "o1" / "test.jsonl")
    train = read_samples(tmp_path / "o1" / "train.jsonl")

    def patients(samples: list) -> set[int]:
        return {(int(s.meta["source"].split(":")[1]) - 2) // 3 for s in samples}  # 3 rows per patient

    assert len(patients(test)) == 2 and len(test) == 6 and len(train) == 12
    assert not patients(test) & patients(train)
    # Seeded and independent of the worker count: same ids, same files.
    assert (tmp_path / "o1" / "test.jsonl").read_text() == (tmp_path / "o2" / "test.jsonl").read_text()
    assert sorted(p.name for p in (tmp_path / "o1/images").iterdir()) == sorted(
        p.name for p in (tmp_path / "o2/images").iterdir()
    )


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(path)


def test_vqa_rad_json(tmp_path: Path) -> None:
    images = tmp_path / "VQA_RAD Image Folder"
    _png(images / "synpic1.jpg".replace(".jpg", ".png"))
    items = [
        {
            "qid": 1,
            "image_name": "synpic1.png",
            "question": "Is there a fracture?",
            "answer": "No",
            "answer_type": "CLOSED",
            "question_type": "PRES",
            "image_organ": "HEAD",
            "phrase_type": "freeform",
        },
        {
            "qid": 2,
            "image_name": "synpic1.png",
            "question": "What organ?",
            "answer": "brain",
            "answer_type": "OPEN",
            "question_type": "ORGAN",
            "image_organ": "HEAD",
            "phrase_type": "test_freeform",
        },
        {"qid": 3, "image_name": "synpic1.png", "question": "", "answer": "x", "answer_type": "OPEN"},
    ]
    source = tmp_path / "VQA_RAD Dataset Public.json"
    source.write_text(json.dumps(items))
    report = MedicalDomain().convert(source, tmp_path / "out", workers=0)
    assert report.details["format"] == "vqa-rad" and report.read == 3 and report.converted == 2
    train, test = read_samples(tmp_path / "out/train.jsonl"), read_samples(tmp_path / "out/test.jsonl")
    assert [s.answer for s in train] == ["No"] and train[0].meta["answer_type"] == "CLOSED"
    assert test[0].meta["image_organ"] == "HEAD" and test[0].widths == [12] and test[0].heights == [10]
    assert test[0].question == "<image>\nWhat organ?\nAnswer the question using a single word or phrase."


def test_slake_folder_english_only(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "xmlab1" / "source.png")
    base = {"img_name": "xmlab1/source.png", "answer_type": "OPEN", "modality": "CT", "location": "Lung"}
    for split in ("train", "validate", "test"):
        items = [
            {
                **base,
                "question": f"Which organ? ({split})",
                "answer": "Lung",
                "q_lang": "en",
                "content_type": "Organ",
            },
            {**base, "question": "哪个器官?", "answer": "肺", "q_lang": "zh"},
        ]
        (tmp_path / f"{split}.json").write_text(json.dumps(items, ensure_ascii=False))
    report = MedicalDomain().convert(tmp_path, tmp_path / "out", workers=0)
    assert (
        report.details["format"] == "slake"
        and report.read == 3
        and report.samples == {"train": 1, "test": 1, "val": 1}
    )
    val = read_samples(tmp_path / "out/val.jsonl")
    assert val[0].meta["location"] == "Lung" and "(validate)" in val[0].question
    report = MedicalDomain().convert(tmp_path, tmp_path / "out2", workers=0, language="all")
    assert report.read == 6


def test_pmc_vqa_csv(tmp_path: Path) -> None:
    _png(tmp_path / "figures" / "PMC1_fig1.png")
    rows = [
        {
            "Figure_path": "PMC1_fig1.png",
            "Question": "What modality?",
            "Answer": "MRI",
            "Choice A": "A:CT",
            "Choice B": "B:MRI",
            "Choice C": "C:PET",
            "Choice D": "D:US",
            "Answer_label": "B",
        },
        {
            "Figure_path": "PMC1_fig1.png",
            "Question": "Where?",
            "Answer": "nowhere",
            "Choice A": "A:Lung",
            "Choice B": "B:Liver",
            "Choice C": "",
            "Choice D": "",
            "Answer_label": "",
        },
    ]
    write_manifest(tmp_path / "test_clean.csv", rows)
    report = MedicalDomain().convert(tmp_path / "test_clean.csv", tmp_path / "out", workers=0)
    assert report.details["format"] == "pmc-vqa" and report.converted == 1 and len(report.skipped) == 1
    sample = read_samples(tmp_path / "out/test.jsonl")[0]
    assert sample.answer == "B" and sample.meta["choices"] == {"A": "CT", "B": "MRI", "C": "PET", "D": "US"}
    assert "A. CT\nB. MRI\nC. PET\nD. US\nAnswer with the option's letter" in sample.question


def test_manifest_tasks_and_prompts(tmp_path: Path) -> None:
    write_dicom(
        tmp_path / "x.dcm",
        np.arange(64, dtype=np.uint16).reshape(8, 8),
        Modality="CR",
        BodyPartExamined="CHEST",
        ViewPosition="PA",
        PatientSex="F",
        PatientAge="047Y",
    )
    rows = [
        {"image": "x.dcm", "label": "pneumonia", "split": "train"},
        {"image": "x.dcm", "label": "normal", "split": "train"},
        {"image": "x.dcm", "question": "Is the heart enlarged?", "answer": "No", "split": "train"},
        {"image": "x.dcm", "report": "Clear lungs.", "split": "test"},
        {
            "image": "x.dcm",
            "question": "Which side?",
            "choices": "left | right",
            "answer": "right",
            "split": "test",
        },
    ]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    MedicalDomain().convert(manifest, tmp_path / "plain", workers=0)
    train = read_samples(tmp_path / "plain/train.jsonl")
    assert train[0].question == (
        "<image>\nThis is an X-ray image of the chest (PA view).\n"
        "What is the category of this image? Options: normal, pneumonia.\nAnswer with one of the options."
    )
    assert train[0].answer == "pneumonia" and train[0].task == "medical-classification"
    assert train[2].meta["answer_type"] == "CLOSED"  # inferred from a yes/no answer
    test = read_samples(tmp_path / "plain/test.jsonl")
    assert (
        test[0].task == "medical-report" and test[1].answer == "B" and test[1].meta["choices"]["B"] == "right"
    )
    assert "female" not in train[0].question
    MedicalDomain().convert(manifest, tmp_path / "demo", workers=0, allow_demographics=True)
    question = read_samples(tmp_path / "demo/train.jsonl")[0].question
    assert "Patient: female, aged 40-49." in question


def test_a_malformed_header_skips_its_record_and_the_cli_takes_a_negative_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    bad = write_dicom(tmp_path / "bad.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8))
    ds = pydicom.dcmread(bad)
    ds[0x00281053] = RawDataElement(Tag(0x00281053), "DS", 4, b"1,0 ", 0, False, True)  # RescaleSlope "1,0"
    ds.save_as(bad)
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), tmp_path / "good.dcm")
    write_manifest(
        tmp_path / "m.csv", [{"image": "good.dcm", "label": "a"}, {"image": "bad.dcm", "label": "b"}]
    )
    # `--window -600,1500` as typed (argparse alone would read "-600,1500" as an option).
    argv = [
        "convert",
        "--domain",
        "medical",
        "--source",
        str(tmp_path / "m.csv"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main([*argv, "--window", "-600,1500", "--workers", "0", "--test-fraction", "0"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["read"] == 2 and report["converted"] == 1
    assert [s["reason"] for s in report["skips"]] == [
        f"image sha256:{digest('bad.dcm')}: RescaleSlope is not a number"
    ]
    (sample,) = read_samples(tmp_path / "out" / "train.jsonl")
    assert sample.meta["window"]["center"] == -600.0 and sample.meta["window"]["width"] == 1500.0


def test_format_detection_errors(tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.csv", [{"image": "a.png", "label": "x"}])
    (tmp_path / "q.json").write_text(json.dumps([{"image_name": "a.png", "question": "q", "answer": "a"}]))
    with pytest.raises(
        DatasetError, match="matches manifest, vqa-rad.*one of: manifest, vqa-rad, slake, pmc-vqa"
    ):
        MedicalDomain().convert(tmp_path, tmp_path / "out")
    (tmp_path / "bad.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(DatasetError, match="bad.csv: a manifest needs an 'image' column"):
        MedicalDomain().convert(tmp_path / "bad.csv", tmp_path / "out", format="manifest")


def test_cli_convert_and_score_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = MedicalDomain().demo_source()
    out = tmp_path / "ds"
    assert (
        main(
            [
                "convert",
                "--domain",
                "medical",
                "--source",
                str(demo),
                "--out",
                str(out),
                "--window",
                "lung",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["read"] == report["converted"] + report["skipped"] and report["samples"]["test"] > 0
    test = read_samples(out / "test.jsonl")
    assert all(s.meta["window"]["source"] == "preset:lung" for s in test if "window" in s.meta)
    predictions = tmp_path / "pred.jsonl"
    with open(predictions, "w") as f:
        for s in test:
            wrong = s.task == "medical-vqa" and s.meta["answer_type"] == "CLOSED"
            f.write(json.dumps({"id": s.id, "answer": "normal" if wrong else s.answer}) + "\n")
    capsys.readouterr()
    assert (
        main(
            [
                "score",
                "--domain",
                "medical",
                "--data",
                str(out / "test.jsonl"),
                "--predictions",
                str(predictions),
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((tmp_path / "m.json").read_text())
    assert printed == written
    assert (
        written["closed"]["accuracy"] == 0.0
        and written["closed"]["unparseable"] == written["closed"]["count"]
    )
    assert written["open"]["exact_match"] == 1.0 and written["classification"]["accuracy"] == 1.0
    assert written["mcq"]["accuracy"] == 1.0 and written["report"]["bleu_1"] > 0.99
    assert written["count"] == len(test) and written["missing_predictions"] == 0
    with pytest.raises(SystemExit):
        main(["convert", "--domain", "medical", "--source", str(demo), "--out", str(out), "--window", "x"])
    assert "--window must be auto, one of lung" in capsys.readouterr().err


def _skips(out: Path) -> dict[str, str]:
    report = json.loads((out / "report.json").read_text())
    assert report["read"] == report["converted"] + report["skipped"]
    return {s["source"]: s["reason"] for s in report["skips"]}


def test_manifest_rows_with_bad_splits_or_extra_cells_are_skipped_on_their_own_line(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    text = (
        "image,report,split\n"
        'a.png,"Findings:\nline two\nline three",train\n'  # a cell over three lines
        "a.png,escape,../escaped\n"
        "a.png,typo,training\n"
        "a.png,extra,test,surplus\n"
        "a.png,fine,validation\n"
    )
    (tmp_path / "m.csv").write_text(text)
    report = MedicalDomain().convert(tmp_path / "m.csv", tmp_path / "out", workers=0)
    assert report.converted == 2 and report.samples["train"] == report.samples["val"] == 1
    skips = _skips(tmp_path / "out")
    assert (
        skips["m.csv:5"]
        == "split must be train, val or test (or validate, validation, valid, dev), got '../escaped'"
    )
    assert "got 'training'" in skips["m.csv:6"]
    assert skips["m.csv:7"] == "row has 1 more cell(s) than the header"
    assert not (tmp_path / "escaped.jsonl").exists() and not list((tmp_path / "out").glob("training*"))


def test_source_files_that_are_not_utf8_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes("image,label\nä.png,Lésion\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"m\.csv: not UTF-8 text"):
        MedicalDomain().convert(tmp_path / "m.csv", tmp_path / "out", format="manifest", workers=0)
    (tmp_path / "v.json").write_bytes('[{"image_name": "é.png"}]'.encode("latin-1"))
    with pytest.raises(DatasetError, match=r"v\.json: not UTF-8 text"):
        MedicalDomain().convert(tmp_path / "v.json", tmp_path / "out", format="vqa-rad", workers=0)


def test_json_fields_of_the_wrong_type_are_skipped_not_stringified(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "p.png")
    good = {"image_name": "p.png", "question": "Is it normal?", "answer": "yes", "answer_type": "CLOSED"}
    items = [
        good,
        {**good, "question": {"en": "x"}},
        {**good, "phrase_type": ["test"]},
        {**good, "answer_type": "yes/no"},
        "not an entry",
    ]
    (tmp_path / "rad.json").write_text(json.dumps(items))
    report = MedicalDomain().convert(tmp_path / "rad.json", tmp_path / "out", format="vqa-rad", workers=0)
    assert report.converted == 1
    assert list(_skips(tmp_path / "out").values()) == [
        "field 'question' is a dict, not text",
        "field 'phrase_type' is a list, not text",
        "answer_type must be OPEN or CLOSED, got 'yes/no'",
        "entry is a str, not an object",
    ]
    slake = [
        {"img_name": "p.png", "question": "Organ?", "answer": ["a", "b"], "q_lang": "en"},
        {"img_name": "p.png", "question": "Organ?", "answer": "Lung", "q_lang": "EN"},
        {"img_name": "p.png", "question": "Organ?", "answer": "Lung", "q_lang": ["en"]},
    ]
    (tmp_path / "train.json").write_text(json.dumps(slake))
    report = MedicalDomain().convert(tmp_path / "train.json", tmp_path / "s", format="slake", workers=0)
    assert report.read == 3 and report.converted == 1  # "EN" is English; the list is read and skipped
    assert sorted(_skips(tmp_path / "s").values()) == [
        "field 'answer' is a list, not text",
        "field 'q_lang' is a list, not text",
    ]


def test_pmc_vqa_header_case_does_not_matter(tmp_path: Path) -> None:
    _png(tmp_path / "figures" / "f.png")
    (tmp_path / "test_x.csv").write_text(
        "figure_path,question,answer,choice a,choice b,answer_label\nf.png,Modality?,MRI,A:CT,B:MRI,B\n"
    )
    report = MedicalDomain().convert(tmp_path / "test_x.csv", tmp_path / "out", workers=0)
    assert report.details["format"] == "pmc-vqa" and report.converted == 1
    assert read_samples(tmp_path / "out/test.jsonl")[0].answer == "B"


@pytest.mark.parametrize(
    ("modality", "sentence"),
    [
        ("CT", "This is a CT image."),
        ("MR", "This is an MRI image."),
        ("US", "This is an ultrasound image."),
        ("XA", "This is an angiography image."),
        ("OP", "This is an ophthalmic photography image."),
        ("DX", "This is an X-ray image."),
        ("PT", "This is a PET image."),
    ],
)
def test_context_sentence_article(modality: str, sentence: str) -> None:
    from mini_internvl_adapt.domains.medical.deid import context_sentence

    assert context_sentence({"modality": modality}) == sentence + "\n"

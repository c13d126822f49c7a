"""Write the medical demo: a few synthetic DICOMs and a manifest CSV, into domains/medical/demo/.

Seeded and deterministic. The files carry FAKE patient data (names, IDs, dates, institution) on
purpose, so a conversion of the demo exercises de-identification. What it writes:

    manifest.csv                 classification, VQA (closed + open), report and multiple-choice rows
    ct/chest_XXX.dcm             single CT slices (int16 + rescale, a soft-tissue window in the file)
    cr/chest_pa_XXX.dcm          chest radiographs, MONOCHROME1 with a SIGMOID VOI LUT function
    series/ct_head/slice_XX.dcm  one CT series (shuffled instance numbers; sorted by position on use)

Usage: python scripts/make_medical_demo.py [--out domains/medical/demo]
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "domains" / "medical" / "demo"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def uid(*parts: object) -> str:
    """A deterministic UID (the demo must regenerate byte for byte)."""
    return str(generate_uid(entropy_srcs=["mini-internvl-adapt-demo", *map(str, parts)]))


def fake_patient(n: int) -> dict[str, str]:
    """Obviously fake identifying values: the de-identification test looks for them in the output."""
    return {
        "PatientName": f"Fakename^Patient{n}",
        "PatientID": f"FAKEID{n:04d}",
        "PatientBirthDate": f"1950010{n % 9 + 1}",
        "PatientSex": "F" if n % 2 else "M",
        "PatientAge": f"{45 + n:03d}Y",
        "InstitutionName": "Nowhere General Hospital",
        "ReferringPhysicianName": "Doctor^Fictional",
        "AccessionNumber": f"ACC{n:05d}",
        "StudyDate": f"2021030{n % 9 + 1}",
        "StudyTime": "101500",
    }


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    sop_class: str,
    photometric: str,
    bits_stored: int,
    attrs: dict[str, object],
    key: tuple[object, ...],
) -> None:
    """Write one single-frame DICOM file with pydicom (explicit VR little endian)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid("sop", *key)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.set_pixel_data(pixels, photometric, bits_stored, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def ct_phantom(rng: np.random.Generator, size: int, nodule: bool, z: float = 0.0) -> np.ndarray:
    """A chest-like slice in HU: body (40), two lungs (-850), a spine (700), optional nodule (30)."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    hu = np.full((size, size), -1000.0)
    hu[(xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1] = 40
    for cx in (-0.2, 0.2):
        hu[((xx - cx) / 0.15) ** 2 + (yy / (0.25 - 0.1 * abs(z))) ** 2 < 1] = -850
    hu[(xx**2 + (yy - 0.25) ** 2) < 0.004] = 700
    if nodule:
        hu[((xx + 0.2) ** 2 + (yy + 0.05) ** 2) < 0.0016] = 30
    hu += rng.normal(0, 12, hu.shape)
    return hu


def make(out: Path, seed: int = 0) -> list[dict[str, str]]:
    """Write the demo into `out` (replacing it) and return the manifest rows."""
    rng = np.random.default_rng(seed)
    if out.exists():
        shutil.rmtree(out)
    rows: list[dict[str, str]] = []
    row = dict.fromkeys(
        ("image", "label", "question", "answer", "answer_type", "report", "choices", "split"), ""
    )

    # CT slices: one patient each; classification + VQA rows.
    for n in range(6):
        nodule = n % 2 == 1
        hu = ct_phantom(rng, 128, nodule)
        stored = np.clip(hu + 1024, 0, 4095).astype(np.int16)
        attrs = {
            **fake_patient(n),
            "Modality": "CT",
            "BodyPartExamined": "CHEST",
            "RescaleSlope": 1,
            "RescaleIntercept": -1024,
            "WindowCenter": 40,
            "WindowWidth": 400,
            "StudyInstanceUID": uid("study", n),
            "SeriesInstanceUID": uid("series", n),
            "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
            "ImagePositionPatient": [0, 0, 0],
            "PixelSpacing": [2.5, 2.5],
        }
        name = f"ct/chest_{n:03d}.dcm"
        write_dicom(
            out / name,
            stored,
            sop_class=CTImageStorage,
            photometric="MONOCHROME2",
            bits_stored=12,
            attrs=attrs,
            key=("ct", n),
        )
        split = "test" if n >= 4 else "train"
        label = "nodule" if nodule else "normal"
        rows.append({**row, "image": name, "label": label, "split": split})
        rows.append(
            {
                **row,
                "image": name,
                "question": "Is there a lung nodule?",
                "answer": "yes" if nodule else "no",
                "answer_type": "CLOSED",
                "split": split,
            }
        )
        rows.append(
            {
                **row,
                "image": name,
                "question": "Which organ is shown in black on both sides?",
                "answer": "lungs",
                "answer_type": "OPEN",
                "split": split,
            }
        )

    # Radiographs: MONOCHROME1 (white = low values), a SIGMOID window.
    for n in range(2):
        yy, xx = np.mgrid[0:192, 0:160] / np.array([192, 160])[:, None, None] - 0.5
        lungs = ((np.abs(xx) - 0.2) / 0.16) ** 2 + (yy / 0.35) ** 2 < 1
        intensity = np.where(lungs, 3200.0, 1200.0) + rng.normal(
            0, 40, lungs.shape
        )  # MONOCHROME1: high = dark
        stored = np.clip(intensity, 0, 4095).astype(np.uint16)
        attrs = {
            **fake_patient(10 + n),
            "Modality": "CR",
            "BodyPartExamined": "CHEST",
            "ViewPosition": "PA",
            "WindowCenter": 2200,
            "WindowWidth": 2400,
            "VOILUTFunction": "SIGMOID",
            "StudyInstanceUID": uid("study", 10 + n),
            "SeriesInstanceUID": uid("series", 10 + n),
        }
        name = f"cr/chest_pa_{n:03d}.dcm"
        write_dicom(
            out / name,
            stored,
            sop_class=CR_IMAGE_STORAGE,
            photometric="MONOCHROME1",
            bits_stored=12,
            attrs=attrs,
            key=("cr", n),
        )
        split = "test" if n == 1 else "train"
        rows.append(
            {
                **row,
                "image": name,
                "report": "The lungs are clear. No pleural effusion or pneumothorax.",
                "split": split,
            }
        )
        rows.append(
            {
                **row,
                "image": name,
                "question": "Which imaging modality is this?",
                "choices": "A: CT | B: MRI | C: X-ray | D: Ultrasound",
                "answer": "C",
                "split": split,
            }
        )

    # A CT series of five slices, written with shuffled instance numbers and file names.
    order = rng.permutation(5)
    for i, z in enumerate(order):
        hu = ct_phantom(rng, 96, nodule=False, z=(z - 2) / 4)
        attrs = {
            **fake_patient(20),
            "Modality": "CT",
            "BodyPartExamined": "CHEST",
            "RescaleSlope": 1,
            "RescaleIntercept": -1024,
            "StudyInstanceUID": uid("study", 20),
            "SeriesInstanceUID": uid("series", 20),
            "InstanceNumber": int(i + 1),
            "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
            "ImagePositionPatient": [0, 0, float(z) * 5.0],
        }
        write_dicom(
            out / f"series/ct_chest/slice_{i:02d}.dcm",
            np.clip(hu + 1024, 0, 4095).astype(np.int16),
            sop_class=CTImageStorage,
            photometric="MONOCHROME2",
            bits_stored=12,
            attrs=attrs,
            key=("series", i),
        )
    rows.append(
        {
            **row,
            "image": "series/ct_chest",
            "question": "Is there a pleural effusion?",
            "answer": "no",
            "answer_type": "CLOSED",
            "split": "train",
        }
    )
    rows.append({**row, "image": "series/ct_chest", "label": "normal", "split": "train"})

    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = make(args.out, args.seed)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(
        f"wrote {len(rows)} manifest rows and {sum(1 for _ in args.out.rglob('*.dcm'))} DICOM files "
        f"({size / 1024:.0f} KiB) to {args.out}"
    )


if __name__ == "__main__":
    main()

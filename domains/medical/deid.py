"""De-identification: the only DICOM text that may reach a sample, and the names of output files.

The rule is an ALLOW-list. Text fields of a sample (prompt, answer, meta), report.json and file names
take DICOM values only from `ALLOWED` (plus the age band / sex behind --allow-demographics); nothing
else is ever copied, so an attribute of the PS3.15 basic profile (PatientName, PatientID, dates,
institution, UIDs ...) cannot leak however a file is filled in. UIDs are written as unsalted
SHA-256 digests, which name the output images and let a user link a sample back to their own file.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

# Attribute keyword -> meta key. Technical pixel-module attributes carry no identity.
ALLOWED: dict[str, str] = {
    "Modality": "modality",
    "BodyPartExamined": "body_part",
    "ViewPosition": "view_position",
    "PhotometricInterpretation": "photometric",
}
DEMOGRAPHIC = {"PatientSex": "sex", "PatientAge": "age_band"}

_MODALITY_WORDS = {
    "CT": "CT",
    "MR": "MRI",
    "CR": "X-ray",
    "DX": "X-ray",
    "RG": "X-ray",
    "MG": "mammography",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "PET",
    "XA": "angiography",
    "RF": "fluoroscopy",
    "OP": "ophthalmic photography",
    "SM": "slide microscopy",
}
# Words read letter by letter from a vowel sound: "an MRI", "an X-ray" (but "a CT").
_SPELLED_AS_A_VOWEL = {"MRI", "X-ray"}
# A value of an allowed attribute must still look like a code, not free text that could hide a name.
_CODE = re.compile(r"^[A-Za-z0-9 _\-]{1,32}$")
_AGE = re.compile(r"^(\d{3})([DWMY])$")


def digest(text: str, length: int = 16) -> str:
    """The first `length` hex digits of SHA-256(text): output file names and UID pseudonyms."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def age_band(value: str) -> str | None:
    """A DICOM Age String ("045Y") -> a ten-year band ("40-49"); 90 and over -> "90+" (HIPAA)."""
    match = _AGE.match(str(value).strip())
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2)
    years = number if unit == "Y" else 0
    if years >= 90:
        return "90+"
    low = years // 10 * 10
    return f"{low}-{low + 9}"


def allowed_attributes(ds: Any, allow_demographics: bool = False) -> dict[str, str]:
    """The allow-listed attributes of a dataset, as meta keys -> values (codes only).

    Args:
        ds: A pydicom Dataset (header only is enough).
        allow_demographics: Also give sex (M/F/O) and a ten-year age band.

    Returns:
        E.g. {"modality": "CT", "body_part": "CHEST", "photometric": "MONOCHROME2"}.
    """
    from mini_internvl_adapt.domains.medical.header import value as header_value  # needs pydicom, as ds does

    out: dict[str, str] = {}
    for keyword, key in ALLOWED.items():
        value = str(header_value(ds, keyword, "") or "").strip()
        if value and _CODE.match(value):
            out[key] = value
    if allow_demographics:
        sex = str(header_value(ds, "PatientSex", "") or "").strip().upper()
        if sex in ("M", "F", "O"):
            out["sex"] = sex
        band = age_band(str(ds.get("PatientAge", "") or ""))
        if band:
            out["age_band"] = band
    return out


def context_sentence(attrs: dict[str, str]) -> str:
    """A prompt prefix built from allow-listed attributes only ("" when there is nothing to say).

    Example: {"modality": "CT", "body_part": "CHEST"} -> "This is a CT image of the chest.\\n"
    """
    modality = _MODALITY_WORDS.get(attrs.get("modality", "").upper())
    if not modality:
        return ""
    article = "an" if modality[0].upper() in "AEIOU" or modality in _SPELLED_AS_A_VOWEL else "a"
    text = f"This is {article} {modality} image"
    if attrs.get("body_part"):
        text += f" of the {attrs['body_part'].lower().replace('_', ' ')}"
    if attrs.get("view_position"):
        text += f" ({attrs['view_position'].upper()} view)"
    text += "."
    who = []
    if attrs.get("sex"):
        who.append({"M": "male", "F": "female", "O": "other sex"}[attrs["sex"]])
    if attrs.get("age_band"):
        who.append(f"aged {attrs['age_band']}")
    if who:
        text += f" Patient: {', '.join(who)}."
    return text + "\n"

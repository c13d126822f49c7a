"""Header values for rendering, read from pydicom's raw elements without building its element objects.

Rendering one slice asks for about twenty attributes (pixel module, rescale, window, codes). pydicom
turns each raw element into a DataElement with a validated value object on first access, which costs
more than the window and the PNG encode of the slice together. For the plain cases (little endian, the
attribute's own VR, a value in the canonical text form) the value is read here from the raw bytes;
anything else (an already converted element, big endian, an unexpected VR, odd text) goes to pydicom,
so every value is what pydicom gives (tests compare the two on pydicom's own test files).
"""

from __future__ import annotations

import re
import struct
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement

_DS = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_IS = re.compile(r"[+-]?\d+")
_CODE = re.compile(r"[A-Za-z0-9 _.\-]*")  # CS / UI characters: plain ASCII, no backslash (one value)

# Attribute keyword -> VR, for the attributes rendering reads. Text VRs with a character set (LO, PN ...)
# are left to pydicom.
VRS: dict[str, str] = {
    "BitsAllocated": "US",
    "BitsStored": "US",
    "PixelRepresentation": "US",
    "SamplesPerPixel": "US",
    "Rows": "US",
    "Columns": "US",
    "NumberOfFrames": "IS",
    "RescaleSlope": "DS",
    "RescaleIntercept": "DS",
    "WindowCenter": "DS",
    "WindowWidth": "DS",
    "VOILUTFunction": "CS",
    "PhotometricInterpretation": "CS",
    "BurnedInAnnotation": "CS",
    "Modality": "CS",
    "BodyPartExamined": "CS",
    "ViewPosition": "CS",
    "PatientSex": "CS",
    "SOPInstanceUID": "UI",
    "StudyInstanceUID": "UI",
}
_TAGS: dict[str, int] = {keyword: int(tag_for_keyword(keyword) or 0) for keyword in VRS}
_MISSING = object()  # "let pydicom convert it"


def value(ds: Any, keyword: str, default: Any = None) -> Any:
    """`ds.get(keyword, default)` as pydicom gives it, with multiple values as a list.

    Args:
        ds: A pydicom Dataset (or a sequence item).
        keyword: An attribute keyword; those in VRS are read from the raw bytes when plain.
        default: Returned when the attribute is absent.
    """
    tag = _TAGS.get(keyword)
    if tag is None:
        return _as_plain(ds.get(keyword, default))
    elem = ds.get_item(tag)
    if elem is None:
        return default
    if isinstance(elem, RawDataElement):
        parsed = _parse(elem, VRS[keyword])
        if parsed is not _MISSING:
            return parsed
    return _as_plain(ds.get(keyword, default))


def _parse(elem: RawDataElement, vr: str) -> Any:
    """The value of a plain raw element, or _MISSING when pydicom should convert it."""
    raw = elem.value
    if not isinstance(raw, bytes) or not raw or not elem.is_little_endian:
        return _MISSING
    if elem.VR is not None and vr != elem.VR:
        return _MISSING
    if vr == "US":
        return struct.unpack("<H", raw)[0] if len(raw) == 2 else _MISSING
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return _MISSING
    if vr in ("CS", "UI"):
        text = text.rstrip(" \0")
        return text if text and _CODE.fullmatch(text) else _MISSING
    parts = [part.strip(" \0") for part in text.split("\\")]
    pattern, kind = (_DS, float) if vr == "DS" else (_IS, int)
    if not all(pattern.fullmatch(part) for part in parts):
        return _MISSING
    numbers = [kind(part) for part in parts]
    return numbers[0] if len(numbers) == 1 else numbers


def _as_plain(found: Any) -> Any:
    """pydicom's MultiValue as a list; anything else as it is."""
    from pydicom.multival import MultiValue

    return list(found) if isinstance(found, MultiValue) else found

"""Header values read from raw elements equal pydicom's own, on every file pydicom ships."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")

from mini_internvl_adapt.domains.medical import header  # noqa: E402
from pydicom.dataelem import RawDataElement  # noqa: E402
from pydicom.multival import MultiValue  # noqa: E402

TEST_FILES = sorted(
    p for p in (Path(pydicom.__file__).parent / "data" / "test_files").rglob("*") if p.is_file()
)


def _read(path: Path) -> object | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, force=True)
        except Exception:
            return None


def _plain(found: object) -> object:
    """pydicom's value as plain Python: DSfloat -> float, IS -> int, UID -> str, MultiValue -> list."""
    if isinstance(found, MultiValue):
        return [_plain(v) for v in found]
    for kind in (bool, int, float, str):
        if isinstance(found, kind):
            return kind(found)
    return found


def test_every_bundled_file_gives_pydicoms_values() -> None:
    compared = fast = 0
    for path in TEST_FILES:
        ours, theirs = _read(path), _read(path)
        if ours is None:
            continue
        for keyword, vr in header.VRS.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    want = theirs.get(keyword, None)
                except Exception:  # a value pydicom cannot convert: ours must raise too, or fall back
                    continue
            raw = ours.get_item(keyword) if keyword in ours else None
            fast += isinstance(raw, RawDataElement) and header._parse(raw, vr) is not header._MISSING
            got, want = _plain(header.value(ours, keyword)), _plain(want)
            assert got == want and type(got) is type(want), (path.name, keyword, got, want)
            compared += 1
    assert len(TEST_FILES) > 50 and compared > 1000
    assert fast > 500  # the raw path is the common one, not a curiosity


def test_plain_and_fallback_paths() -> None:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    assert header.value(ds, "Rows") == 128 and header.value(ds, "RescaleIntercept") == -1024.0
    assert header.value(ds, "Modality") == "CT" and header.value(ds, "NotThere", "x") == "x"
    assert isinstance(ds.get_item("Rows"), RawDataElement)  # read without converting the element
    ds.Rows = 64  # a value set in code is a DataElement: pydicom's value is used
    assert header.value(ds, "Rows") == 64
    ds.WindowCenter = [40, 400]
    assert header.value(ds, "WindowCenter") == [40.0, 400.0]
    big = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small_bigendian.dcm"))
    assert header.value(big, "Rows") == 64  # big endian: pydicom converts it

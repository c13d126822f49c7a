"""The fast rendering / PNG paths give exactly the pixels of the straightforward float pipeline.

The checksums below were computed with the float64/float32-per-pixel renderer and Pillow's PNG writer
before the lookup-table renderer and the medical PNG writer replaced them: any change in a rendered or
written pixel changes a checksum.
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from mini_internvl_adapt.domains.medical import MedicalDomain, dicom_render  # noqa: E402
from mini_internvl_adapt.domains.medical.dicom_render import RenderOptions, render_source  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom import examples  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from test_medical_render import write_dicom as write_synthetic_dicom  # noqa: E402


def write_dicom(path: Path, pixels: np.ndarray, photometric: str, bits: int, **attrs: Any) -> Path:
    """A synthetic CT file (the checksums below were pinned on these)."""
    return write_synthetic_dicom(path, pixels, photometric, bits, **{"Modality": "CT", **attrs})


def ct_pixels(dtype: type, size: int = 96, seed: int = 0) -> np.ndarray:
    """A noisy disc on a dark background spanning most of the 12-bit range (like a CT slice)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    body = np.where((xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1, 1064.0, 24.0)
    body[size // 2, : size // 4] = 4000  # a bright line (bone / metal)
    return np.clip(body + rng.normal(0, 300, body.shape), 0, 4095).astype(dtype)


def cases(folder: Path) -> dict[str, tuple[Path, RenderOptions]]:
    """Every greyscale path of the renderer (window sources, functions, dtypes) and the colour ones."""
    auto = RenderOptions()
    ct = dict(RescaleSlope=1, RescaleIntercept=-1024)
    hu = ct_pixels(np.int16) - 1024  # signed stored values, rescaled by slope 2
    signed = write_dicom(
        folder / "signed.dcm", hu, "MONOCHROME2", 16, WindowCenter=40, WindowWidth=400, RescaleSlope=2
    )
    modality_lut = Dataset()
    modality_lut.LUTDescriptor = [4096, 0, 16]
    modality_lut.ModalityLUTType = "HU"
    modality_lut.LUTData = [int(v) for v in (np.arange(4096) * 7 // 5) % 65536]
    mlut = write_dicom(folder / "mlut.dcm", ct_pixels(np.uint16, seed=5), "MONOCHROME2", 12)
    ds = pydicom.dcmread(mlut)
    ds.ModalityLUTSequence = [modality_lut]
    ds["ModalityLUTSequence"][0]["LUTData"].VR = "US"
    ds.save_as(mlut)
    voi_lut = Dataset()
    voi_lut.LUTDescriptor = [2048, 512, 16]
    voi_lut.LUTData = [int(v) for v in np.sqrt(np.arange(2048)) * 100]
    vlut = write_dicom(folder / "vlut.dcm", ct_pixels(np.uint16, seed=6), "MONOCHROME2", 12)
    ds = pydicom.dcmread(vlut)
    ds.VOILUTSequence = [voi_lut]
    ds["VOILUTSequence"][0]["LUTData"].VR = "US"
    ds.save_as(vlut)
    return {
        "int16 file window LINEAR": (signed, auto),
        "int16 preset lung": (signed, RenderOptions(window="lung")),
        "int16 explicit": (signed, RenderOptions(window="37.5,123")),
        "int16 percentile": (
            write_dicom(folder / "pct.dcm", ct_pixels(np.int16, seed=1), "MONOCHROME2", 13, **ct),
            auto,
        ),
        "uint16 SIGMOID MONOCHROME1": (
            write_dicom(
                folder / "m1.dcm",
                ct_pixels(np.uint16, seed=2),
                "MONOCHROME1",
                12,
                WindowCenter=1100,
                WindowWidth=900,
                VOILUTFunction="SIGMOID",
                RescaleSlope=0.5,
                RescaleIntercept=3,
            ),
            auto,
        ),
        "uint16 LINEAR_EXACT": (
            write_dicom(
                folder / "lx.dcm",
                ct_pixels(np.uint16, seed=3),
                "MONOCHROME2",
                12,
                WindowCenter=1000.5,
                WindowWidth=1500,
                VOILUTFunction="LINEAR_EXACT",
            ),
            auto,
        ),
        "uint8 percentile": (
            write_dicom(
                folder / "u8.dcm", (ct_pixels(np.uint16, seed=4) // 16).astype(np.uint8), "MONOCHROME2", 8
            ),
            auto,
        ),
        "modality LUT sequence": (mlut, auto),
        "VOI LUT sequence": (vlut, auto),
        "CT_small percentile": (Path(examples.get_path("ct")), auto),
        "CT_small preset bone": (Path(examples.get_path("ct")), RenderOptions(window="bone")),
        "MR_small file window": (Path(examples.get_path("mr")), auto),
        "MR_small big endian": (Path(get_testdata_file("MR_small_bigendian.dcm", download=False)), auto),
        "overlay window index 1": (Path(examples.get_path("overlay")), RenderOptions(window_index=1)),
        "rtdose 32-bit frame 3": (Path(examples.get_path("rt_dose")), RenderOptions(frames="3")),
        "rgb": (Path(examples.get_path("rgb_color")), auto),
        "palette": (Path(examples.get_path("palette_color")), auto),
    }


# sha256 of (shape, RGB bytes) of each rendered image, from the renderer before optimisation.
PINNED = {
    "int16 file window LINEAR": "1035c4b0dd0794180b8ed1f262c466fa5ce798b7eb0ddf0625374c55d4317f30",
    "int16 preset lung": "dabb0e509deb881cc205c15c8be377781b5f7530076bcfb825d13831685e2d37",
    "int16 explicit": "b0a96c29b38fac13e0059dc29fd75c5f5b736c8254dca466efbd11173546faf4",
    "int16 percentile": "5c3c32393443c0208c17507ee155616ade56bec865a96c4a0f4c129786c465a0",
    "uint16 SIGMOID MONOCHROME1": "387b5b1078f49aaa9f77cba79a6adc03eb995bc5eb38c7fa661d1c5066da6a18",
    "uint16 LINEAR_EXACT": "14ed5b715ba8f9d4fb7779ec54ba6204c0cb38647e5dcf6cd9f17a6a1855d680",
    "uint8 percentile": "ea0914ef29686d16277e97a16ae6257592420dfa136aa96c139138aeae3df7fd",
    "modality LUT sequence": "3f01685d3043ee59d28d54763f9028899b7d14eec77eb3c40dedf59c2188bc89",
    "VOI LUT sequence": "2f403cc68f6da5b4beb897cb95422be6aef7abb6d653f1856d18a8593b1ebe05",
    "CT_small percentile": "c7484a25687a609e2b47e6c852a1e9d3d3289f625757b51577f3d5aa43b00f50",
    "CT_small preset bone": "2944f4d7449faf4157700d93ff860df5d4e1572a0f6ef0d0589cdd2d8d6e858d",
    "MR_small file window": "fd3eb89e88bb7c84340cedc39bb45cada8e3966fc835ad617ed236cc9707e39e",
    "MR_small big endian": "fd3eb89e88bb7c84340cedc39bb45cada8e3966fc835ad617ed236cc9707e39e",
    "overlay window index 1": "0fe3c756ef73c87ee811e05aada9cbc1e4b88d1ab37bb7839c9f596b0cc1f01a",
    "rtdose 32-bit frame 3": "29ac0a4a288dd7d69d9c1b94748a66d64385de9d4cbbac3f51a4bb78fefa4e8b",
    "rgb": "481c44405796abf11f15ed29a5ca79580bc222c469fa409ecc04907899505c18",
    "palette": "f5edefc624dc95fff0e297bf660268c67bc3504528b99734a2007e732d52f35c",
}


def checksum(rgb: np.ndarray) -> str:
    rgb = np.ascontiguousarray(rgb)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    return hashlib.sha256(repr(rgb.shape).encode() + rgb.tobytes()).hexdigest()


def test_rendered_pixels_match_the_pinned_checksums(tmp_path: Path) -> None:
    rendered = {name: render_source(path, options) for name, (path, options) in cases(tmp_path).items()}
    assert {name: checksum(r.images[0].pixels) for name, r in rendered.items()} == PINNED


@pytest.mark.parametrize("workers", [0, 2])
def test_written_pngs_load_as_rgb_with_the_pinned_pixels(tmp_path: Path, workers: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    auto = {name: path for name, (path, options) in cases(src).items() if options == RenderOptions()}
    with open(src / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label"])
        writer.writerows([str(path), name] for name, path in auto.items())
    out = tmp_path / "out"
    report = MedicalDomain().convert(src / "manifest.csv", out, workers=workers, test_fraction=0.0)
    assert report.converted == len(auto) and not report.skipped
    samples = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(samples) == len(auto)
    for sample in samples:
        name = sample["conversations"][-1]["value"]
        png = out / sample["image"][0]
        raw = png.read_bytes()
        # 8-bit; colour sources are stored RGB (type 2), grey ones grey (type 0): loaders convert to RGB.
        colour = name in ("rgb", "palette")
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[24] == 8 and raw[25] == (2 if colour else 0)
        with Image.open(png) as image:
            assert image.mode == ("RGB" if colour else "L")
            assert checksum(np.asarray(image.convert("RGB"))) == PINNED[name], name
            assert (sample["width_list"], sample["height_list"]) == ([image.width], [image.height])


def reference_grey(ds: Any, raw: np.ndarray, options: RenderOptions) -> np.ndarray:
    """The renderer's float pipeline run on every pixel (no lookup table)."""
    values = dicom_render.modality_values(ds, raw, None)
    invert = str(ds.PhotometricInterpretation) == "MONOCHROME1"
    return dicom_render._window_grey(ds, values, None, options, invert, lambda: values)[0]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_lookup_table_rendering_equals_per_pixel_float_math(tmp_path: Path, dtype: type) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(info.bits)
    bits = info.bits
    # 96x96 images take the lookup table (range < pixel count); 8x8 ones the per-pixel path.
    low, high = (info.min, info.max) if bits == 8 else (max(info.min, -1500), min(info.max, 2600))
    for size, window_attrs in [
        (96, {"WindowCenter": 37, "WindowWidth": 91}),
        (96, {"WindowCenter": 100.5, "WindowWidth": 300, "VOILUTFunction": "SIGMOID"}),
        (96, {"WindowCenter": -3, "WindowWidth": 17.5, "VOILUTFunction": "LINEAR_EXACT"}),
        (96, {}),
        (8, {}),
        (8, {"WindowCenter": 37, "WindowWidth": 91}),
    ]:
        raw = rng.integers(low, high, size=(size, size), endpoint=True).astype(dtype)
        photometric = "MONOCHROME1" if window_attrs.get("WindowWidth") == 91 else "MONOCHROME2"
        path = write_dicom(
            tmp_path / "x.dcm",
            raw,
            photometric,
            bits,
            RescaleSlope=0.75,
            RescaleIntercept=-12.25,
            **window_attrs,
        )
        ds = pydicom.dcmread(path)
        for options in [RenderOptions(), RenderOptions(window="lung"), RenderOptions(window="7,3")]:
            rendered = render_source(path, options).images[0].pixels
            assert not rendered.flags.writeable and rendered.shape == (size, size, 3)
            expected = reference_grey(ds, ds.pixel_array, options)
            assert np.array_equal(rendered[..., 1], expected), (dtype, size, window_attrs, options)


def bundled_files_with_pixels() -> list[Path]:
    """pydicom's own test files that are on disk (none is downloaded) and carry PixelData."""
    root = Path(pydicom.data.__file__).parent
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix in (".py", ".pyc", ".json", ".txt", ".gz", ".bz2", ".zip"):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if hasattr(ds, "file_meta") and "Rows" in ds:
            found.append(path)
    return found


def test_in_place_decoding_equals_pydicom_pixel_array_on_its_bundled_files() -> None:
    compared = 0
    for path in bundled_files_with_pixels():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            if "PixelData" not in ds:
                continue
            try:
                frames = int(ds.get("NumberOfFrames", 1) or 1)
            except ValueError:
                continue  # a deliberately broken header
            syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
            for index in [None] if frames == 1 else [0, frames - 1]:
                fast = dicom_render._native_frame(ds, syntax, index)
                if fast is None:
                    continue
                expected = ds.pixel_array if index is None else pydicom.pixels.pixel_array(ds, index=index)
                assert fast.dtype == expected.dtype and np.array_equal(fast, expected), (path.name, index)
                compared += 1
    assert compared >= 20  # the uncompressed little-endian monochrome files among ~100


def test_stored_values_outside_bits_stored_go_through_pydicoms_masking(tmp_path: Path) -> None:
    # 12 bits stored in 16: an old file's overlay bit (0x8000) set on some pixels must be masked away.
    pixels = ct_pixels(np.uint16, size=16)
    pixels[0, :4] |= 0x8000
    path = write_dicom(tmp_path / "overlay_bits.dcm", pixels, "MONOCHROME2", 16)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 12, 11  # pydicom refuses to write such values as 12-bit: patch the header
    assert dicom_render._native_frame(ds, str(ds.file_meta.TransferSyntaxUID), None) is None
    decoded = dicom_render.decode_frame(ds, None)
    assert decoded.max() <= 4095 and np.array_equal(decoded, pixels & 0x0FFF)

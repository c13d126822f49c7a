"""DICOM rendering: windows against pydicom's own maths, MONOCHROME1, VOI LUTs, colour, frames, series."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from mini_internvl_adapt.domains.medical.dicom_render import (  # noqa: E402
    RenderError,
    RenderOptions,
    render_source,
)
from mini_internvl_adapt.domains.medical.windows import PRESETS, parse_window, window_unit  # noqa: E402
from pydicom import examples  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_dicom(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12, **attrs: Any
) -> Path:
    """Write a synthetic DICOM with pydicom (shared with the conversion tests)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "OT"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.set_pixel_data(pixels, photometric, bits_stored, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def grey(rendered: Any, i: int = 0) -> np.ndarray:
    pixels = rendered.images[i].pixels
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    return pixels[..., 0].astype(int)


def pydicom_reference(path: str, index: int = 0) -> np.ndarray:
    """pydicom's modality LUT + VOI, its output range mapped to 0-255 (what --window auto promises)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        arr = apply_modality_lut(ds.pixel_array, ds)
        out = apply_voi_lut(arr, ds, index=index)
    # pydicom's windowing output range: the stored range after rescale.
    bits = ds.BitsStored
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    low, high = low * slope + intercept, high * slope + intercept
    return np.rint((out - low) / (high - low) * 255).astype(int)


def test_file_window_matches_pydicom_apply_voi_lut() -> None:
    path = str(examples.get_path("mr"))  # MR_small: WindowCenter 600 / WindowWidth 1600, LINEAR
    rendered = render_source(Path(path), RenderOptions())
    assert rendered.meta["window"] == {
        "source": "file",
        "center": 600.0,
        "width": 1600.0,
        "function": "LINEAR",
        "index": 0,
    }
    assert np.abs(grey(rendered) - pydicom_reference(path)).max() <= 1


def test_multi_valued_window_index_matches_pydicom() -> None:
    path = str(examples.get_path("overlay"))  # WindowCenter [450, 200], WindowWidth [790, 443]
    first = render_source(Path(path), RenderOptions())
    second = render_source(Path(path), RenderOptions(window_index=1))
    assert first.meta["window"]["center"] == 450.0 and second.meta["window"]["center"] == 200.0
    assert np.abs(grey(second) - pydicom_reference(path, index=1)).max() <= 1
    with pytest.raises(RenderError, match="--window-index 5 but the file has 2 window"):
        render_source(Path(path), RenderOptions(window_index=5))


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_functions_match_pydicom(tmp_path: Path, function: str) -> None:
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))
    path = write_dicom(tmp_path / "f.dcm", ramp, WindowCenter=1500, WindowWidth=1000, VOILUTFunction=function)
    rendered = render_source(path, RenderOptions())
    assert rendered.meta["window"]["function"] == function
    assert np.abs(grey(rendered) - pydicom_reference(str(path))).max() <= 1


def test_voi_lut_sequence_is_preferred_and_its_range_maps_to_0_255(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(0, 256, dtype=np.uint16), (4, 1))
    item = Dataset()
    item.LUTDescriptor = [128, 64, 16]  # 128 entries starting at stored value 64
    item.LUTData = [i * 10 for i in range(128)]  # outputs 0..1270
    path = write_dicom(tmp_path / "lut.dcm", ramp, bits_stored=8, WindowCenter=5, WindowWidth=2)
    ds = pydicom.dcmread(path)
    ds.VOILUTSequence = [item]
    ds["VOILUTSequence"][0]["LUTData"].VR = "US"
    ds.save_as(path)
    rendered = render_source(path, RenderOptions())
    assert rendered.meta["window"] == {"source": "voi-lut", "index": 0}
    row = grey(rendered)[0]
    assert row[:65].max() == 0 and row[191:].min() == 255  # below / above the LUT: first / last entry
    expected = np.rint((np.arange(64, 192) - 64) * 10 / 1270 * 255)
    assert np.abs(row[64:192] - expected).max() <= 1


def test_percentile_fallback_without_any_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(1000, 3000, size=(64, 64)).astype(np.uint16)
    pixels[0, 0], pixels[0, 1] = 0, 4095  # outliers beyond the percentiles clip
    path = write_dicom(tmp_path / "p.dcm", pixels)
    rendered = render_source(path, RenderOptions())
    image = grey(rendered)
    low, high = np.percentile(pixels.astype(float), [0.5, 99.5])
    assert rendered.meta["window"]["source"] == "percentile"
    assert image[0, 0] == 0 and image[0, 1] == 255
    expected = np.clip((pixels.astype(float) - low) / (high - low), 0, 1) * 255
    assert np.abs(image - np.rint(expected)).max() <= 1
    assert (image == 0).mean() < 0.02 and (image == 255).mean() < 0.02


def test_monochrome1_is_inverted_after_windowing(tmp_path: Path) -> None:
    pixels = np.array([[0, 1000, 2000, 4095]] * 4, dtype=np.uint16)
    attrs = {"WindowCenter": 2048, "WindowWidth": 4096, "VOILUTFunction": "LINEAR_EXACT"}
    m1 = grey(
        render_source(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1", **attrs), RenderOptions())
    )
    m2 = grey(
        render_source(write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", **attrs), RenderOptions())
    )
    assert m1[0, 0] == 255 and m1[0, 3] == 0  # MONOCHROME1: the minimum is white
    assert np.array_equal(m1, 255 - m2)


def test_ct_presets_and_explicit_windows(tmp_path: Path) -> None:
    path = str(examples.get_path("ct"))  # CT_small: rescale intercept -1024, no window in the file
    hu = apply_modality_lut(pydicom.dcmread(path).pixel_array, pydicom.dcmread(path)).astype(float)
    for name, (center, width) in PRESETS.items():
        rendered = render_source(Path(path), RenderOptions(window=name))
        expected = np.rint(np.clip((hu - (center - width / 2)) / width, 0, 1) * 255)
        assert np.abs(grey(rendered) - expected).max() <= 1, name
        assert rendered.meta["window"] == {
            "source": f"preset:{name}",
            "center": center,
            "width": width,
            "function": "LINEAR_EXACT",
        }
    explicit = render_source(Path(path), RenderOptions(window="-600,1500"))
    lung = render_source(Path(path), RenderOptions(window="lung"))
    assert np.array_equal(grey(explicit), grey(lung)) and explicit.meta["window"]["source"] == "explicit"
    auto = render_source(Path(path), RenderOptions())
    assert auto.meta["window"]["source"] == "percentile"


@pytest.mark.parametrize("spec", ["lungs", "40", "a,b", "40,0", "40,-5", "nan,400", "40,inf"])
def test_bad_window_option_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="--window"):
        parse_window(spec)


def test_linear_window_edges_follow_dicom() -> None:
    # PS3.3 C.11.2.1.2.1: c=100, w=11 -> <= 94.5 gives 0, > 104.5 gives 1.
    x = np.array([94.5, 95.0, 100.0, 104.5, 104.6])
    y = window_unit(x, 100, 11, "LINEAR")
    assert y[0] == 0 and y[-1] == 1 and 0 < y[1] < y[2] < y[3] <= 1


def test_rgb_ybr_and_palette_colour() -> None:
    rgb = render_source(examples.get_path("rgb_color"), RenderOptions())
    ds = pydicom.dcmread(examples.get_path("rgb_color"))
    assert np.array_equal(rgb.images[0].pixels, ds.pixel_array)
    assert rgb.meta["window"] == {"source": "none"}

    ybr = render_source(examples.get_path("ybr_color"), RenderOptions())  # 30 frames, YBR_FULL_422 JPEG
    assert ybr.meta["frames"] == [15] and ybr.images[0].pixels.shape == (240, 320, 3)
    expected = pydicom.pixels.pixel_array(pydicom.dcmread(examples.get_path("ybr_color")), index=15)
    assert np.array_equal(ybr.images[0].pixels, expected)  # pydicom converted YBR to RGB

    palette = render_source(examples.get_path("palette_color"), RenderOptions())
    pds = pydicom.dcmread(examples.get_path("palette_color"))
    lut = apply_color_lut(pds.pixel_array, pds).astype(float)  # 16-bit entries
    assert palette.images[0].pixels.shape == (*pds.pixel_array.shape, 3)
    assert np.abs(palette.images[0].pixels - np.rint(lut / 65535 * 255)).max() <= 1


def test_frames_option(tmp_path: Path) -> None:
    frames = np.stack([np.full((8, 8), v * 100, dtype=np.uint16) for v in range(5)])
    frames[:, 0, 0] = 0
    frames[:, 0, 1] = 4000
    path = write_dicom(
        tmp_path / "mf.dcm",
        frames,
        NumberOfFrames=5,
        WindowCenter=2000,
        WindowWidth=4000,
        VOILUTFunction="LINEAR_EXACT",
    )
    middle = render_source(path, RenderOptions())
    assert middle.meta["frames"] == [2] and len(middle.images) == 1
    assert grey(middle)[4, 4] == round(200 / 4000 * 255)
    every = render_source(path, RenderOptions(frames="all"))
    assert every.meta["frames"] == [0, 1, 2, 3, 4]
    assert [grey(every, i)[4, 4] for i in range(5)] == [round(v * 100 / 4000 * 255) for v in range(5)]
    assert len({im.stem for im in every.images}) == 5
    assert render_source(path, RenderOptions(frames="4")).meta["frames"] == [4]
    with pytest.raises(RenderError, match="frame 7 requested but the file has 5 frame"):
        render_source(path, RenderOptions(frames="7"))


def test_series_folder_in_anatomical_order(tmp_path: Path) -> None:
    series_uid = generate_uid()
    folder = tmp_path / "series"
    # Slices written in shuffled file / instance order; z decides the order. Pixel value = 100 * z rank.
    zs = [30.0, -10.0, 50.0, 10.0, 0.0, 20.0, 40.0]
    for i, z in enumerate(zs):
        rank = sorted(zs).index(z)
        write_dicom(
            folder / f"{i:02d}.dcm",
            np.full((6, 6), rank * 500, dtype=np.uint16),
            SeriesInstanceUID=series_uid,
            InstanceNumber=len(zs) - i,
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            ImagePositionPatient=[0, 0, z],
            WindowCenter=2048,
            WindowWidth=4096,
            VOILUTFunction="LINEAR_EXACT",
        )
    (folder / "notes.txt").write_text("not a slice")
    rendered = render_source(folder, RenderOptions(series_slices=3))
    assert rendered.meta["series_slices"] == [0, 3, 6] and rendered.meta["series_length"] == 7
    values = [grey(rendered, i)[0, 0] for i in range(3)]
    assert values == [round(r * 500 / 4096 * 255) for r in (0, 3, 6)]  # first, middle, last along z


def test_series_falls_back_to_instance_number(tmp_path: Path) -> None:
    uid = generate_uid()
    for i, number in enumerate([3, 1, 2]):
        write_dicom(
            tmp_path / "s" / f"{i}.dcm",
            np.full((4, 4), number * 1000, dtype=np.uint16),
            SeriesInstanceUID=uid,
            InstanceNumber=number,
            WindowCenter=2048,
            WindowWidth=4096,
            VOILUTFunction="LINEAR_EXACT",
        )
    rendered = render_source(tmp_path / "s", RenderOptions(series_slices=3))
    assert [grey(rendered, i)[0, 0] for i in range(3)] == [round(n * 1000 / 4096 * 255) for n in (1, 2, 3)]


def test_broken_inputs_raise_render_errors(tmp_path: Path) -> None:
    truncated = Path(get_testdata_file("MR_truncated.dcm", download=False))
    with pytest.raises(RenderError, match="truncated"):
        render_source(truncated, RenderOptions())
    text = tmp_path / "notes.dcm"
    text.write_text("hello")
    with pytest.raises(RenderError, match="not a DICOM file"):
        render_source(text, RenderOptions())
    with pytest.raises(RenderError, match="not found"):
        render_source(tmp_path / "missing.dcm", RenderOptions())


def test_missing_decoder_names_transfer_syntax_and_package() -> None:
    path = Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False))
    try:
        render_source(path, RenderOptions())
    except RenderError as e:
        assert "JPEG-LS Lossless" in str(e) and "pip install" in str(e) and "pylibjpeg-libjpeg" in str(e)
    else:
        pytest.skip("a JPEG-LS decoder is installed here")


def test_burned_in_annotation_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "b.dcm", np.zeros((4, 4), np.uint16), BurnedInAnnotation="YES")
    with pytest.raises(RenderError, match="BurnedInAnnotation is YES"):
        render_source(path, RenderOptions())
    assert len(render_source(path, RenderOptions(allow_burned_in=True)).images) == 1


def test_enhanced_multiframe_uses_functional_groups(tmp_path: Path) -> None:
    frames = np.stack([np.full((4, 4), 1000, dtype=np.uint16)] * 2)

    def group(slope: float, center: float) -> Dataset:
        transform, voi, item = Dataset(), Dataset(), Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, 0, "US"
        voi.WindowCenter, voi.WindowWidth = center, 1000
        item.PixelValueTransformationSequence, item.FrameVOILUTSequence = [transform], [voi]
        return item

    path = write_dicom(
        tmp_path / "e.dcm",
        frames,
        NumberOfFrames=2,
        PerFrameFunctionalGroupsSequence=[group(1.0, 1000), group(2.0, 1500)],
    )
    rendered = render_source(path, RenderOptions(frames="all"))
    # Frame 0: 1000 at center 1000 -> mid grey; frame 1: 2000 at center 1500 -> bright but not clipped.
    assert [w["center"] for w in rendered.meta["window"]] == [1000.0, 1500.0]
    assert abs(grey(rendered, 0)[0, 0] - 128) <= 1
    assert grey(rendered, 1)[0, 0] == 255
    # A one-frame enhanced file keeps its rescale and window in the same per-frame group.
    one = write_dicom(
        tmp_path / "e1.dcm", frames[0], NumberOfFrames=1, PerFrameFunctionalGroupsSequence=[group(2.0, 1500)]
    )
    rendered = render_source(one, RenderOptions())
    assert rendered.meta["window"]["center"] == 1500.0 and grey(rendered)[0, 0] == 255


def _set_raw(path: Path, tag: int, vr: str, raw: bytes) -> Path:
    """Put a malformed value in a written file as a real export would carry it (pydicom keeps it raw)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = pydicom.dcmread(path)
    ds[tag] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    ("tag", "vr", "raw", "named"),
    [
        (0x00280008, "IS", b"1.5x", "NumberOfFrames is not a number"),
        (0x00281053, "DS", b"1,0 ", "RescaleSlope is not a number"),
        (0x00281050, "DS", b"40HU", "WindowCenter / WindowWidth is not a number"),
    ],
)
def test_a_malformed_header_value_is_a_render_error_naming_the_attribute(
    tmp_path: Path, tag: int, vr: str, raw: bytes, named: str
) -> None:
    path = write_dicom(tmp_path / "bad.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8), WindowWidth=100)
    _set_raw(path, tag, vr, raw)
    with pytest.raises(RenderError) as info:
        render_source(path, RenderOptions())
    assert str(info.value) == named  # the attribute's name, never its value


def test_series_with_a_malformed_position_or_a_multiframe_file_is_a_render_error(tmp_path: Path) -> None:
    uid = generate_uid()
    common = {"SeriesInstanceUID": uid, "ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}
    for i in range(2):
        write_dicom(
            tmp_path / "s" / f"{i}.dcm", np.zeros((4, 4), np.uint16), ImagePositionPatient=[0, 0, i], **common
        )
    _set_raw(tmp_path / "s" / "1.dcm", 0x00200032, "DS", b"0\\0\\a ")
    with pytest.raises(RenderError, match="ImagePositionPatient / ImageOrientationPatient is not numeric"):
        render_source(tmp_path / "s", RenderOptions())
    for i in range(2):
        write_dicom(
            tmp_path / "m" / f"{i}.dcm", np.zeros((4, 4), np.uint16), ImagePositionPatient=[0, 0, i], **common
        )
    write_dicom(tmp_path / "m" / "2.dcm", np.zeros((3, 4, 4), np.uint16), NumberOfFrames=3, **common)
    with pytest.raises(RenderError, match=r"multi-frame file \(3 frames\)"):
        render_source(tmp_path / "m", RenderOptions())


@pytest.mark.parametrize(
    ("tag", "vr", "raw", "named"),
    [
        (0x00281050, "DS", b"nan ", "WindowCenter / WindowWidth is not a finite number"),
        (0x00281051, "DS", b"inf ", "WindowCenter / WindowWidth is not a finite number"),
        (0x00281053, "DS", b"nan ", "RescaleSlope is not a finite number"),
    ],
)
def test_non_finite_header_values_are_refused(
    tmp_path: Path, tag: int, vr: str, raw: bytes, named: str
) -> None:
    # NaN / inf would render a flat image and put NaN (invalid JSON) into the sample's meta.
    path = write_dicom(
        tmp_path / "nan.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8), WindowCenter=30, WindowWidth=100
    )
    _set_raw(path, tag, vr, raw)
    with pytest.raises(RenderError) as info:
        render_source(path, RenderOptions())
    assert str(info.value) == named


def test_an_element_pydicom_cannot_decode_is_a_render_error(tmp_path: Path) -> None:
    # Modality's VR byte flipped to an unknown VR: pydicom fails only when the element is first read.
    data = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()
    broken = data.replace(b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00CR")
    assert broken != data
    (tmp_path / "badvr.dcm").write_bytes(broken)
    with pytest.raises(RenderError, match=r"NotImplementedError"):
        render_source(tmp_path / "badvr.dcm", RenderOptions())


def test_an_unknown_voi_function_or_transfer_syntax_is_not_echoed(tmp_path: Path) -> None:
    path = write_dicom(
        tmp_path / "f.dcm",
        np.zeros((4, 4), np.uint16),
        WindowCenter=1,
        WindowWidth=2,
        VOILUTFunction="DOEJOHN",
    )
    with pytest.raises(RenderError) as info:
        render_source(path, RenderOptions())
    assert "DOEJOHN" not in str(info.value) and "VOILUTFunction" in str(info.value)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.99.12345"
    ds.save_as(tmp_path / "t.dcm")
    with pytest.raises(RenderError) as info:
        render_source(tmp_path / "t.dcm", RenderOptions())
    assert "1.2.840.99.12345" not in str(info.value)


def test_corrupt_compressed_data_is_not_called_a_missing_decoder(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False))
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    fragments = [b"".join(f) for f in generate_fragmented_frames(ds.PixelData)]
    ds.PixelData = encapsulate([fragments[0][: len(fragments[0]) // 3]])
    ds.save_as(tmp_path / "cut.dcm")
    with pytest.raises(RenderError) as info:
        render_source(tmp_path / "cut.dcm", RenderOptions())
    assert "corrupt" in str(info.value) and "pip install" not in str(info.value)
    assert "'JPEG Baseline (Process 1)'" in str(info.value)


def test_a_frame_count_beyond_the_pixel_data_is_refused_before_listing_frames(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "m.dcm", np.zeros((2, 4, 4), np.uint16), NumberOfFrames=2)
    _set_raw(path, 0x00280008, "IS", b"999999999 ")
    with pytest.raises(RenderError, match="NumberOfFrames is 999999999 but the pixel data holds fewer"):
        render_source(path, RenderOptions(frames="all"))


def test_frame_count_check_accepts_frames_smaller_than_rows_x_columns_x_samples(tmp_path: Path) -> None:
    # YBR_FULL_422 stores 2 bytes a pixel, not 3: two uncompressed frames are valid and render.
    ds = pydicom.dcmread(get_testdata_file("SC_ybr_full_422_uncompressed.dcm", download=False))
    ds.PixelData, ds.NumberOfFrames = ds.PixelData * 2, 2
    ds.save_as(tmp_path / "cine.dcm")
    assert render_source(tmp_path / "cine.dcm", RenderOptions(frames="all")).images[1].pixels.shape == (
        100,
        100,
        3,
    )


def test_series_uses_instance_numbers_when_any_slice_lacks_a_position(tmp_path: Path) -> None:
    uid = generate_uid()
    zs = [-90.0, -80.0, None, -60.0, -50.0]
    for number, z in enumerate(zs, start=1):
        position = {} if z is None else {"ImagePositionPatient": [0, 0, z]}
        write_dicom(
            tmp_path / "s" / f"{number}.dcm",
            np.full((4, 4), number * 500, dtype=np.uint16),
            SeriesInstanceUID=uid,
            InstanceNumber=number,
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            WindowCenter=2048,
            WindowWidth=4096,
            VOILUTFunction="LINEAR_EXACT",
            **position,
        )
    rendered = render_source(tmp_path / "s", RenderOptions(series_slices=5))
    assert [grey(rendered, i)[0, 0] for i in range(5)] == [round(n * 500 / 4096 * 255) for n in range(1, 6)]


def test_plain_images_sixteen_bit_and_too_large(tmp_path: Path) -> None:
    from PIL import Image

    values = (np.arange(4096).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    got = grey(render_source(tmp_path / "grey16.png", RenderOptions()))
    # The DICOM rule without a window: 0.5th..99.5th percentiles onto 0..255, not clipped to white.
    low, high = np.percentile(values, [0.5, 99.5])
    want = np.rint(np.clip((values - low) / (high - low), 0, 1) * 255)
    assert np.abs(got - want).max() <= 1 and len(np.unique(got)) > 200
    Image.new("L", (6000, 6000)).save(tmp_path / "big.png")
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1_000_000  # bombs are refused above twice this
    try:
        with pytest.raises(RenderError, match="decompression-bomb limit"):
            render_source(tmp_path / "big.png", RenderOptions())
    finally:
        Image.MAX_IMAGE_PIXELS = limit

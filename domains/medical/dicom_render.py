"""DICOM -> the 8-bit RGB image the model sees: modality LUT, VOI window, colour, frames, series.

pydicom is imported here only (this module is imported on use), so the plugin loads without it.
Rendering keeps the source resolution: tiling happens at training time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mini_internvl_adapt.domains.medical import deid, header
from mini_internvl_adapt.domains.medical.windows import (
    Window,
    parse_window,
    percentile_unit,
    to_uint8,
    window_unit,
)

from mini_internvl_adapt.errors import MissingDependencyError

try:
    import pydicom
    from pydicom import pixels as dpx
    from pydicom.errors import InvalidDicomError
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("medical", "pydicom", "medical") from e

PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Transfer syntax UID prefix -> the packages that decode it (what to tell a user whose decode failed).
_DECODERS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pillow or pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (12-bit JPEG Extended; pillow cannot)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg or pyjpegls",
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg or pyjpegls",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg or pillow",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg or pillow",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",
}


class RenderError(Exception):
    """A source image that cannot be rendered; the message is safe to write to report.json (no PHI)."""


@dataclass(frozen=True)
class RenderOptions:
    """How DICOM pixels become an image (the ``--window``, ``--frames`` ... options)."""

    window: str = "auto"
    window_index: int = 0
    frames: str = "middle"
    series_slices: int = 3
    allow_burned_in: bool = False
    allow_demographics: bool = False

    def __post_init__(self) -> None:
        parse_window(self.window)  # fail early with the option's own message
        if self.frames not in ("middle", "all") and not str(self.frames).isdigit():
            raise ValueError(f"--frames must be middle, all or a frame number (0-based); got '{self.frames}'")
        if self.series_slices < 1:
            raise ValueError(f"--series-slices must be >= 1, got {self.series_slices}")
        if self.window_index < 0:
            raise ValueError(f"--window-index must be >= 0, got {self.window_index}")


@dataclass
class RenderedImage:
    """One rendered picture: HxWx3 uint8 pixels and its file stem (a hash, never a name).

    Greyscale pixels are a read-only view of one plane broadcast to three channels.
    """

    pixels: np.ndarray
    stem: str


@dataclass
class Rendered:
    """Everything a source image (file or series folder) gives a sample.

    Attributes:
        images: The pictures, in order (several for ``--frames all`` and series).
        meta: De-identified description: allow-listed attributes, window, frames, UID digests.
        group: A digest of the patient (or study / file) to keep one patient in one split.
    """

    images: list[RenderedImage]
    meta: dict[str, Any] = field(default_factory=dict)
    group: str = ""


def render_source(path: Path, options: RenderOptions) -> Rendered:
    """Render a DICOM file, a series folder or a plain image file.

    Raises:
        RenderError: Not DICOM, truncated, no decoder, burned-in text, bad frame, a malformed header
            value ... (the message names no PHI: attribute names and error types, never values).
    """
    render: Callable[[Path, RenderOptions], Rendered]
    if path.is_dir():
        render = _render_series
    elif not path.is_file():
        raise RenderError("image file not found")
    elif path.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        return _render_plain(path)
    else:
        render = _render_file
    try:
        return render(path, options)
    except RenderError:
        raise
    except (
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        ArithmeticError,
        NotImplementedError,
    ) as e:
        # A header pydicom parsed but whose values make no sense, or an element it decodes only on first
        # access and cannot (an unknown VR is NotImplementedError): this record's skip, never an abort.
        raise RenderError(f"malformed header values ({type(e).__name__})") from None


def header_number(item: Any, keyword: str, default: float) -> float:
    """A numeric attribute (DS / IS / US ...) or `default` when absent; RenderError names a malformed one."""
    value = header.value(item, keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RenderError(f"{keyword} is not a number") from None
    if not math.isfinite(number):
        raise RenderError(f"{keyword} is not a finite number")
    return number


def _render_plain(path: Path) -> Rendered:
    from PIL import Image, UnidentifiedImageError

    data = path.read_bytes()
    try:
        from io import BytesIO

        with Image.open(BytesIO(data)) as im:
            # Re-encoding drops EXIF / text chunks, which can carry names.
            pixels = _plain_pixels(im)
    except Image.DecompressionBombError:
        raise RenderError(
            f"image larger than Pillow's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels)"
        ) from None
    except (UnidentifiedImageError, OSError) as e:
        raise RenderError(f"not a readable image ({type(e).__name__})") from None
    stem = deid.digest(hashlib_bytes(data))
    return Rendered([RenderedImage(pixels, stem)], {"frames": [0]}, group=stem)


def _plain_pixels(im: Any) -> np.ndarray:
    """RGB uint8 pixels of a plain image; 16-bit and float greys (an exported X-ray, a CT slice) get the
    no-window rule of DICOM, their 0.5th..99.5th percentiles onto 0..255, where Pillow's own conversion
    would clip everything above 255 to white."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        values = np.asarray(im).astype(np.float32)
        grey = to_uint8(percentile_unit(values)[0])
        return np.broadcast_to(grey[..., None], (*grey.shape, 3))
    return np.asarray(im.convert("RGB"))


def hashlib_bytes(data: bytes) -> str:
    """Content digest of a plain image (its stand-in for a SOPInstanceUID)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def read_dataset(path: Path, header_only: bool = False) -> Any:
    """Read a DICOM file; RenderError for a file that is not DICOM or cannot be parsed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError:
        raise RenderError("not a DICOM file (no DICM preamble)") from None
    except Exception as e:  # pydicom raises many types on corrupt input; its messages are not echoed
        raise RenderError(f"cannot parse the DICOM file ({type(e).__name__})") from None


def _render_file(path: Path, options: RenderOptions) -> Rendered:
    ds = read_dataset(path)
    _check_burned_in(ds, options)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise RenderError(f"no pixel data (Modality {_code(ds, 'Modality')})")
    n_frames = max(1, int(header_number(ds, "NumberOfFrames", 1)))
    _check_frame_count(ds, n_frames)
    if options.frames == "middle":
        indices = [n_frames // 2]
    elif options.frames == "all":
        indices = list(range(n_frames))
    else:
        index = int(options.frames)
        if index >= n_frames:
            raise RenderError(f"frame {index} requested but the file has {n_frames} frame(s)")
        indices = [index]
    uid_digest = deid.digest(str(header.value(ds, "SOPInstanceUID", "")) or hashlib_bytes(path.read_bytes()))
    images, windows = [], []
    for index in indices:
        pixels, window = render_frame(ds, index if n_frames > 1 else None, options)
        stem = uid_digest if len(indices) == 1 and n_frames == 1 else f"{uid_digest}_f{index}"
        images.append(RenderedImage(pixels, stem))
        windows.append(window)
    meta = deid.allowed_attributes(ds, options.allow_demographics)
    meta.update(
        {
            "sop_uid_sha256": uid_digest,
            "frames": indices,
            "number_of_frames": n_frames,
            "window": windows[0].to_json() if len(set(windows)) == 1 else [w.to_json() for w in windows],
        }
    )
    return Rendered(images, meta, group=_group(ds, uid_digest))


def _check_frame_count(ds: Any, n_frames: int) -> None:
    """RenderError when NumberOfFrames promises more frames than the pixel data can hold (checked before
    `--frames all` lists them: a corrupt count must not allocate billions of entries)."""
    if "PixelData" not in ds or n_frames == 1:
        return
    data = ds.PixelData
    if not isinstance(data, bytes):
        return
    try:
        rows, cols = int(header.value(ds, "Rows")), int(header.value(ds, "Columns"))
        samples = int(header.value(ds, "SamplesPerPixel", 1) or 1)
        bits = int(header.value(ds, "BitsAllocated"))
    except (AttributeError, TypeError, ValueError):
        raise RenderError("Rows / Columns / BitsAllocated missing or not numbers") from None
    meta = getattr(ds, "file_meta", {})
    tsyntax = pydicom.uid.UID(str(meta.get("TransferSyntaxUID", "") or ""))
    # Uncompressed: every frame takes its full size; compressed (or unknown): at least one byte each.
    uncompressed = tsyntax.is_transfer_syntax and not tsyntax.is_compressed
    # A frame's exact size is plain only for whole-byte samples without chroma subsampling (1-bit frames
    # pack back to back, YBR_FULL_422 takes 2 bytes a pixel); elsewhere a frame takes at least one byte.
    plain = (
        uncompressed and bits % 8 == 0 and "422" not in str(header.value(ds, "PhotometricInterpretation", ""))
    )
    smallest = rows * cols * samples * bits // 8 if plain else 1
    if n_frames * max(smallest, 1) > len(data):
        raise RenderError(f"NumberOfFrames is {n_frames} but the pixel data holds fewer frames")


def _group(ds: Any, fallback: str) -> str:
    # Held in memory only (never written): the split keeps a patient's images together.
    for keyword in ("PatientID", "StudyInstanceUID"):
        value = str(header.value(ds, keyword, "") or "")
        if value:
            return deid.digest(f"{keyword}:{value}")
    return fallback


def _code(ds: Any, keyword: str) -> str:
    value = deid.allowed_attributes(ds).get(deid.ALLOWED.get(keyword, ""), "")
    return value or "unknown"


def _check_burned_in(ds: Any, options: RenderOptions) -> None:
    if (
        str(header.value(ds, "BurnedInAnnotation", "")).strip().upper() == "YES"
        and not options.allow_burned_in
    ):
        raise RenderError(
            "BurnedInAnnotation is YES: the pixels may show identifying text (--allow-burned-in)"
        )


def decode_frame(ds: Any, index: int | None) -> np.ndarray:
    """Decode one frame (or the only image) of a dataset.

    Raises:
        RenderError: Corrupt pixel data, or no installed decoder: names the transfer syntax and packages.
    """
    tsyntax = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    native = _native_frame(ds, str(tsyntax), index)
    if native is not None:
        return native
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if index is None:
                return ds.pixel_array
            return dpx.pixel_array(ds, index=index)
    except (RuntimeError, NotImplementedError) as e:
        name = _transfer_syntax_name(tsyntax)
        packages = _DECODERS.get(str(tsyntax))
        if packages and not _decoder_available(tsyntax):
            raise RenderError(f"no decoder for transfer syntax {name}: pip install {packages}") from None
        raise RenderError(
            f"cannot decode pixel data: corrupt or unsupported ({type(e).__name__}, transfer syntax {name})"
        ) from None
    except Exception as e:
        raise RenderError(
            f"pixel data is truncated or inconsistent with the header ({type(e).__name__})"
        ) from None


def _transfer_syntax_name(tsyntax: Any) -> str:
    """'JPEG Baseline (Process 1)' (1.2.840...) for a standard UID; an unknown one is not echoed (it
    comes from the file)."""
    uid = pydicom.uid.UID(str(tsyntax or ""))
    if uid.is_transfer_syntax and uid.name != str(uid):
        return f"'{uid.name}' ({uid})"
    return "(not a standard transfer syntax UID)"


def _decoder_available(tsyntax: Any) -> bool:
    """Whether any pydicom decoding plugin for the transfer syntax is installed."""
    try:
        return bool(dpx.get_decoder(pydicom.uid.UID(str(tsyntax))).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


# Uncompressed little-endian transfer syntaxes: the pixel data is the array's own bytes.
_NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


def _native_frame(ds: Any, tsyntax: str, index: int | None) -> np.ndarray | None:
    """A read-only view of one monochrome frame's stored values, for uncompressed little-endian data.

    Gives exactly what ``pixel_array`` gives for such data (checked in tests) without its copy: the
    8- or 16-bit samples viewed in place. Stored values outside the BitsStored range (bits an old file
    uses for overlays) would need pydicom's masking, so then, and for anything else, None: pydicom decodes.
    """
    if tsyntax not in _NATIVE_LITTLE_ENDIAN or "PixelData" not in ds:
        return None
    try:
        bits, stored = int(header.value(ds, "BitsAllocated")), int(header.value(ds, "BitsStored"))
        signed = int(header.value(ds, "PixelRepresentation")) == 1
        samples = int(header.value(ds, "SamplesPerPixel", 1) or 1)
        rows, cols = int(header.value(ds, "Rows")), int(header.value(ds, "Columns"))
        frames = int(header.value(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    if (
        bits not in (8, 16)
        or samples != 1
        or not 0 < stored <= bits
        or (index is not None and index >= frames)
    ):
        return None
    data = ds.PixelData
    frame_size = rows * cols * bits // 8
    if not isinstance(data, bytes) or len(data) < frame_size * frames or frame_size == 0:
        return None
    start = frame_size * (index or 0)
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    pixels = np.frombuffer(data, dtype, rows * cols, start).reshape(rows, cols)
    if stored < bits:
        low, high = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
        if pixels.min() < low or pixels.max() > high:
            return None
    return pixels


def _functional(ds: Any, index: int | None, sequence: str) -> Any:
    """An item of a functional group macro for a frame (per-frame first, then shared), or None."""
    groups = []
    if "PerFrameFunctionalGroupsSequence" in ds:  # index None: the file's only frame, item 0
        per_frame = ds.PerFrameFunctionalGroupsSequence
        if (index or 0) < len(per_frame):
            groups.append(per_frame[index or 0])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        items = group.get(sequence)
        if items:
            return items[0]
    return None


def modality_values(ds: Any, raw: np.ndarray, index: int | None) -> np.ndarray:
    """Stored values -> modality values: Modality LUT Sequence, else RescaleSlope/Intercept (per frame)."""
    if "ModalityLUTSequence" in ds:
        return dpx.apply_modality_lut(raw, ds).astype(np.float32)
    source = _functional(ds, index, "PixelValueTransformationSequence") or ds
    slope = header_number(source, "RescaleSlope", 1) or 1.0
    intercept = header_number(source, "RescaleIntercept", 0)
    values = raw.astype(np.float32)
    if slope != 1 or intercept != 0:
        values = values * slope + intercept
    return values


def _window_values(item: Any, options: RenderOptions) -> tuple[float, float, str] | None:
    if item is None:
        return None
    centers, widths = header.value(item, "WindowCenter"), header.value(item, "WindowWidth")
    if centers is None or widths is None:
        return None
    centers = centers if isinstance(centers, list) else [centers]
    widths = widths if isinstance(widths, list) else [widths]
    i = options.window_index
    if i >= min(len(centers), len(widths)):
        raise RenderError(f"--window-index {i} but the file has {min(len(centers), len(widths))} window(s)")
    function = str(header.value(item, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
    try:
        center, width = float(centers[i]), float(widths[i])
    except (TypeError, ValueError):
        raise RenderError("WindowCenter / WindowWidth is not a number") from None
    if not (math.isfinite(center) and math.isfinite(width)):
        raise RenderError("WindowCenter / WindowWidth is not a finite number")
    return center, width, function


def _apply_voi_lut_sequence(ds: Any, values: np.ndarray, options: RenderOptions) -> np.ndarray:
    items = ds.VOILUTSequence
    i = options.window_index
    if i >= len(items):
        raise RenderError(f"--window-index {i} but the file has {len(items)} VOI LUT(s)")
    descriptor = items[i].LUTDescriptor
    entries = int(descriptor[0]) or 65536
    first = int(descriptor[1])
    # The LUT's own output range (its smallest and largest entry) maps onto 0..1.
    table = dpx.apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, index=i).astype(np.float32)
    low, high = float(table.min()), float(table.max())
    mapped = dpx.apply_voi(np.rint(values).astype(np.int64), ds, index=i).astype(np.float32)
    return (mapped - low) / (high - low if high > low else 1.0)


def render_frame(ds: Any, index: int | None, options: RenderOptions) -> tuple[np.ndarray, Window]:
    """Render one frame to HxWx3 uint8 and say which window was used.

    Greyscale: modality values -> the user's window (preset / explicit), else the file's VOI LUT
    Sequence or window (first, or ``window_index``), else the 0.5-99.5 percentiles; MONOCHROME1 is
    inverted after windowing. The result is then a read-only HxWx3 view of one grey plane (the PNG
    writer spreads it to three channels only when encoding). Colour: RGB as decoded (YBR converted
    by pydicom), PALETTE COLOR through its LUT, more than 8 bits scaled down.
    """
    raw = decode_frame(ds, index)
    photometric = str(header.value(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = dpx.apply_color_lut(raw, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _scale_colour(rgb, bits), Window("none")
    if raw.ndim == 3 and raw.shape[-1] in (3, 4) and not photometric.startswith("MONOCHROME"):
        return _scale_colour(raw[..., :3], int(ds.get("BitsStored", 8) or 8)), Window("none")
    grey, window = _render_grey(ds, raw, index, options, photometric == "MONOCHROME1")
    return np.broadcast_to(grey[..., None], (*grey.shape, 3)), window


def _render_grey(
    ds: Any, raw: np.ndarray, index: int | None, options: RenderOptions, invert: bool
) -> tuple[np.ndarray, Window]:
    """Stored values -> uint8 grey levels, through a lookup table for 8- and 16-bit integers.

    Every step from a stored value to its grey level depends on that value alone (the percentiles
    excepted, which are taken from the image), so for integer pixels the steps run once per possible
    value between the image's minimum and maximum and the image is then a table lookup: the same
    float32 arithmetic per value, hence the same pixels, at a fraction of the work per pixel.
    """
    if raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2 and raw.size:
        raw = raw.astype(raw.dtype.newbyteorder("="), copy=False)
        low, high = int(raw.min()), int(raw.max())
        if high - low < raw.size:  # a table no larger than the image
            domain = np.arange(low, high + 1).astype(raw.dtype)
            # Offset from the minimum as an unsigned index: wraps correctly for signed values too.
            unsigned = np.dtype(f"u{raw.dtype.itemsize}")
            key = raw.view(unsigned) - np.array(low).astype(raw.dtype).view(unsigned)
            table_values = modality_values(ds, domain, index)
            table, window = _window_grey(ds, table_values, index, options, invert, lambda: table_values[key])
            return np.take(table, key, mode="clip"), window  # keys are in range: clip skips the bounds checks
    values = modality_values(ds, raw, index)
    return _window_grey(ds, values, index, options, invert, lambda: values)


def _window_grey(
    ds: Any,
    values: np.ndarray,
    index: int | None,
    options: RenderOptions,
    invert: bool,
    image_values: Callable[[], np.ndarray],
) -> tuple[np.ndarray, Window]:
    """Modality values (an image, or a table over stored values) -> uint8 grey levels and the window.

    `image_values` gives the image's own modality values, needed only for the percentile fallback.
    """
    user = parse_window(options.window)
    if user is not None:
        label, center, width = user
        unit, window = (
            window_unit(values, center, width, "LINEAR_EXACT"),
            Window(label, center, width, "LINEAR_EXACT"),
        )
    elif ds.get("VOILUTSequence"):
        unit, window = (
            _apply_voi_lut_sequence(ds, values, options),
            Window("voi-lut", index=options.window_index),
        )
    else:
        item = _functional(ds, index, "FrameVOILUTSequence")
        found = _window_values(item, options) or _window_values(ds, options)
        if found is not None:
            center, width, function = found
            try:
                unit = window_unit(values, center, width, function)
            except ValueError as e:
                raise RenderError(str(e)) from None
            window = Window("file", center, width, function, options.window_index)
        else:
            unit, low, high = percentile_unit(values, image_values())
            window = Window("percentile", (low + high) / 2, high - low, "LINEAR_EXACT")
    grey = to_uint8(unit)
    if invert:  # MONOCHROME1: the minimum is white
        grey = 255 - grey
    return grey, window


def _scale_colour(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    top = float(2**bits - 1) if bits > 8 else float(max(int(arr.max()), 1))
    return to_uint8(arr.astype(np.float32) / top)


def _render_series(folder: Path, options: RenderOptions) -> Rendered:
    headers = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = read_dataset(path, header_only=True)
        except RenderError:
            continue  # a stray non-DICOM file (notes, DICOMDIR ...) is not a slice
        if ds.get("SeriesInstanceUID"):
            headers.append((path, ds))
    if not headers:
        raise RenderError("series folder holds no DICOM slice")
    frames = max(int(header_number(ds, "NumberOfFrames", 1)) for _, ds in headers)
    if frames > 1:
        raise RenderError(
            f"series folder holds a multi-frame file ({frames} frames); a series is single-frame slices: "
            "list a multi-frame file in the manifest itself (--frames picks its frames)"
        )
    series = {str(ds.SeriesInstanceUID) for _, ds in headers}
    if len(series) > 1:
        raise RenderError(
            f"series folder holds {len(series)} series; point the manifest at one series per folder"
        )
    positions = [_slice_position(ds) for _, ds in headers]
    # Millimetres and instance numbers do not sort together: positions only when every slice has one.
    use_positions = all(p is not None for p in positions)
    keys = [
        (position if use_positions else instance, instance)
        for (_, ds), position, instance in zip(
            headers, positions, (header_number(ds, "InstanceNumber", 0) for _, ds in headers), strict=True
        )
    ]
    ordered = [item for _, item in sorted(zip(keys, headers, strict=True), key=lambda pair: pair[0])]
    count = min(options.series_slices, len(ordered))
    picks = sorted({int(round(v)) for v in np.linspace(0, len(ordered) - 1, count)})
    images, windows, digests = [], [], []
    for pick in picks:
        ds = read_dataset(ordered[pick][0])
        _check_burned_in(ds, options)
        pixels, window = render_frame(ds, None, options)
        # Without a SOPInstanceUID the file's bytes name the slice (a slice index would collide across series).
        digest = deid.digest(
            str(header.value(ds, "SOPInstanceUID", "")) or hashlib_bytes(ordered[pick][0].read_bytes())
        )
        images.append(RenderedImage(pixels, digest))
        windows.append(window.to_json())
        digests.append(digest)
    meta = deid.allowed_attributes(ordered[picks[0]][1], options.allow_demographics)
    meta.update(
        {
            "sop_uid_sha256": digests,
            "series_slices": picks,
            "series_length": len(ordered),
            "window": windows[0] if all(w == windows[0] for w in windows) else windows,
        }
    )
    return Rendered(images, meta, group=_group(ordered[0][1], digests[0]))


def _slice_position(ds: Any) -> float | None:
    """Position along the slice normal (ImagePositionPatient . normal), or None without both attributes."""
    orientation, position = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if orientation is not None and position is not None and len(orientation) == 6 and len(position) == 3:
        try:
            normal = np.cross(np.array(orientation[:3], float), np.array(orientation[3:], float))
            value = float(np.dot(normal, np.array(position, float)))
        except (TypeError, ValueError):
            raise RenderError("ImagePositionPatient / ImageOrientationPatient is not numeric") from None
        if not math.isfinite(value):
            raise RenderError("ImagePositionPatient / ImageOrientationPatient is not finite")
        return value
    return None

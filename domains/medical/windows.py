"""Window maths on modality values (pure numpy): VOI window functions, CT presets, percentile fallback.

Every function maps to [0, 1]; the caller scales to 0-255. A DICOM window keeps the file's VOI LUT
function (LINEAR, LINEAR_EXACT, SIGMOID, as PS3.3 C.11.2.1 and pydicom's ``apply_windowing`` define
them, whose output range maps linearly onto [0, 1] here); a window the user names is applied as
LINEAR_EXACT: clip((x - (c - w/2)) / w, 0, 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Named CT windows (center, width) in Hounsfield units.
PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
}

PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Window:
    """A window as recorded in a sample's meta.

    Attributes:
        source: "file" (the DICOM's own window), "voi-lut" (its VOI LUT Sequence), "preset:<name>",
            "explicit", "percentile" (no window in the file) or "none" (colour images).
        center: Window center in modality units (None for voi-lut / none).
        width: Window width in modality units.
        function: LINEAR, LINEAR_EXACT or SIGMOID.
        index: Which of a multi-valued window / VOI LUT item was used.
    """

    source: str
    center: float | None = None
    width: float | None = None
    function: str | None = None
    index: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items() if v is not None
        }


def parse_window(spec: str) -> tuple[str, float, float] | None:
    """Parse the ``--window`` option.

    Args:
        spec: "auto", a preset name (see PRESETS) or "CENTER,WIDTH".

    Returns:
        None for auto, else (source label, center, width).

    Raises:
        ValueError: For an unknown name, a malformed pair or a width that is not positive.
    """
    text = spec.strip().lower()
    if text == "auto":
        return None
    if text in PRESETS:
        center, width = PRESETS[text]
        return f"preset:{text}", center, width
    parts = text.split(",")
    values: list[float] = []
    try:
        values = [float(p) for p in parts] if len(parts) == 2 else []
    except ValueError:
        values = []
    if len(values) != 2:
        raise ValueError(
            f"--window must be auto, one of {', '.join(PRESETS)}, or CENTER,WIDTH (e.g. -600,1500); got '{spec}'"
        )
    center, width = values
    if not (math.isfinite(center) and math.isfinite(width)):
        raise ValueError(f"--window center and width must be finite numbers, got '{spec}'")
    if width <= 0:
        raise ValueError(f"--window width must be positive, got {width:g}")
    return "explicit", center, width


def window_unit(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Apply a VOI window and return values in [0, 1] (float32).

    Args:
        values: Modality values (after rescale / modality LUT).
        center: Window center.
        width: Window width.
        function: LINEAR (DICOM's default: c - 0.5, w - 1), LINEAR_EXACT or SIGMOID.

    Raises:
        ValueError: For a width the function does not allow, or an unknown function.
    """
    x = values.astype(np.float32, copy=False)
    function = (function or "LINEAR").upper()
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"window width {width:g} must be >= 1 for a LINEAR window")
        c, w = center - 0.5, width - 1.0
        if w == 0:  # width 1: a pure threshold
            return (x > c).astype(np.float32)
        # Below c - w/2 -> 0 and above c + w/2 -> 1, linear between: clipping the ramp gives exactly that.
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    if width <= 0:
        raise ValueError(f"window width {width:g} must be > 0 for a {function} window")
    if function == "LINEAR_EXACT":
        return np.clip((x - (center - width / 2)) / width, 0.0, 1.0)
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    # The value itself comes from the file and is not echoed (report.json names attributes, never values).
    raise ValueError("unsupported VOILUTFunction (expected LINEAR, LINEAR_EXACT or SIGMOID)")


def percentile_unit(
    values: np.ndarray, reference: np.ndarray | None = None
) -> tuple[np.ndarray, float, float]:
    """Map the 0.5th..99.5th percentiles of `reference` (default: `values`) to [0, 1], clipped.

    Args:
        values: The values to map.
        reference: The values the percentiles are taken from: the image's own values, when `values`
            is a lookup table over every possible stored value rather than the image.

    Returns:
        (mapped values, low, high): the percentiles used, recorded as the window.
    """
    low, high = (float(v) for v in np.percentile(values if reference is None else reference, PERCENTILES))
    span = high - low if high > low else 1.0
    return np.clip((values.astype(np.float32) - low) / span, 0.0, 1.0), low, high


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 with rounding."""
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)

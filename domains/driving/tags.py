"""DriveLM object tags (``<c1,CAM_BACK,1088.3,497.5>``) and their re-encoding for the 2x3 grid image.

A tag names an object and the camera pixel (1600x900) of its 2D box centre. In the grid layout of
Mini-InternVL the six views are tiled 2 rows x 3 columns into one 2688x896 image and tags are written
``<c1,CAM_BACK,[x,y]>`` with x, y on the 0-1000 scale of that grid image; scoring maps them back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CAMERAS = ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
# Grid position (row, column) of each camera: front row left-centre-right, back row left-centre-right.
GRID_POSITION = {
    "CAM_FRONT_LEFT": (0, 0),
    "CAM_FRONT": (0, 1),
    "CAM_FRONT_RIGHT": (0, 2),
    "CAM_BACK_LEFT": (1, 0),
    "CAM_BACK": (1, 1),
    "CAM_BACK_RIGHT": (1, 2),
}
CAMERA_SIZE = (1600, 900)
TILE_SIZE = (896, 448)
GRID_SIZE = (TILE_SIZE[0] * 3, TILE_SIZE[1] * 2)  # 2688 x 896

GRID_EXPLANATION = (
    "Objects are encoded using <c, CAM, [cx,cy]>, where c is the identifier, CAM indicates the camera where the "
    "object's center point is situated, and x, y represent the horizontal and vertical coordinates of the center "
    "point of the 2D bounding box."
)

_NUM = r"-?\d+(?:\.\d+)?"
PIXEL_TAG = re.compile(rf"<(c\d+),\s*(CAM_[A-Z_]+),\s*({_NUM}),\s*({_NUM})>")
GRID_TAG = re.compile(rf"<(c\d+),\s*(CAM_[A-Z_]+),\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*\]>")
# Anything that looks like a tag; used to find malformed ones that neither form parses.
_ANY_TAG = re.compile(r"<c\d[^<>]*>")


class TagError(ValueError):
    """A malformed object tag."""


@dataclass(frozen=True)
class ObjectTag:
    """One object tag: identifier, camera and centre in that camera's pixels."""

    ident: str
    camera: str
    x: float
    y: float

    @classmethod
    def parse(cls, text: str) -> ObjectTag:
        """Parse a pixel tag ``<c1,CAM_BACK,1088.3,497.5>``; raises TagError when malformed."""
        m = PIXEL_TAG.fullmatch(text.strip())
        if m is None:
            raise TagError(f"malformed object tag '{text}'")
        tag = cls(m.group(1), m.group(2), float(m.group(3)), float(m.group(4)))
        if tag.camera not in CAMERAS:
            raise TagError(f"object tag '{text}' names an unknown camera '{tag.camera}'")
        return tag


def check_tags(text: str) -> None:
    """Raise TagError when `text` holds something tag-like that is not a valid pixel tag."""
    for m in _ANY_TAG.finditer(text):
        ObjectTag.parse(m.group(0))


def camera_to_grid(camera: str, x: float, y: float) -> tuple[int, int]:
    """Camera pixel -> integer 0-1000 coordinates of the 2688x896 grid image."""
    row, col = GRID_POSITION[camera]
    gx = (col * TILE_SIZE[0] + x / CAMERA_SIZE[0] * TILE_SIZE[0]) / GRID_SIZE[0] * 1000
    gy = (row * TILE_SIZE[1] + y / CAMERA_SIZE[1] * TILE_SIZE[1]) / GRID_SIZE[1] * 1000
    return min(1000, max(0, round(gx))), min(1000, max(0, round(gy)))


def grid_to_camera(camera: str, gx: float, gy: float) -> tuple[float, float]:
    """0-1000 grid coordinates -> the camera's pixels, clamped to the image, rounded to 1 decimal."""
    row, col = GRID_POSITION[camera]
    x = (gx / 1000 * GRID_SIZE[0] - col * TILE_SIZE[0]) / TILE_SIZE[0] * CAMERA_SIZE[0]
    y = (gy / 1000 * GRID_SIZE[1] - row * TILE_SIZE[1]) / TILE_SIZE[1] * CAMERA_SIZE[1]
    x = min(float(CAMERA_SIZE[0]), max(0.0, x))
    y = min(float(CAMERA_SIZE[1]), max(0.0, y))
    return round(x, 1), round(y, 1)


def encode_grid(text: str) -> str:
    """Rewrite every pixel tag in `text` as a grid tag (raises TagError on a malformed tag)."""
    check_tags(text)

    def repl(m: re.Match[str]) -> str:
        gx, gy = camera_to_grid(m.group(2), float(m.group(3)), float(m.group(4)))
        return f"<{m.group(1)},{m.group(2)},[{gx},{gy}]>"

    return PIXEL_TAG.sub(repl, text)


def decode_grid(text: str) -> str:
    """Rewrite grid tags in a model answer back to pixel tags ``<c,CAM,x.x,y.y>``; unknown cameras stay."""

    def repl(m: re.Match[str]) -> str:
        if m.group(2) not in GRID_POSITION:
            return m.group(0)
        x, y = grid_to_camera(m.group(2), float(m.group(3)), float(m.group(4)))
        return f"<{m.group(1)},{m.group(2)},{x:.1f},{y:.1f}>"

    return GRID_TAG.sub(repl, text)


def box_to_grid(camera: str, box: list[float]) -> list[float]:
    """A camera-pixel box -> pixel box in the 2688x896 grid image."""
    row, col = GRID_POSITION[camera]
    sx, sy = TILE_SIZE[0] / CAMERA_SIZE[0], TILE_SIZE[1] / CAMERA_SIZE[1]
    ox, oy = col * TILE_SIZE[0], row * TILE_SIZE[1]
    return [ox + box[0] * sx, oy + box[1] * sy, ox + box[2] * sx, oy + box[3] * sy]

"""Frames of BDD-X segments: decoded from the videos with PyAV, or taken from pre-extracted frames.

Decoding is frame-accurate and each video is decoded at most once: a video's frame times (all its segments
together) are visited in ascending order in one pass; a gap of more than `SEEK_AHEAD` seconds is crossed by
seeking to the keyframe before the next time (FFmpeg's backward seek), never by decoding the frames between,
and every frame after a seek is decoded up to the first frame at or after the time. The frame nearest the
time (the earlier one on a tie) is written once as ``images/<video>/<video>_<ms>.jpg``, ``<ms>`` the frame's
own timestamp in milliseconds (six digits).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mini_internvl_adapt.errors import MissingDependencyError

SEEK_AHEAD = 2.0  # seconds: a larger gap to the next frame time is crossed by a seek
FRAME_GAP = 0.5  # seconds: how far a pre-extracted frame may be from the time asked for
VIDEO_SUFFIXES = (".mov", ".mp4", ".avi", ".mkv", ".m4v")
_FRAME_NAME = re.compile(r"^(?P<video>.+)_(?P<ms>\d+)\.(?:jpe?g|png)$", re.IGNORECASE)


class VideoError(Exception):
    """A video (or a folder of its frames) that cannot give the frames asked for; the message says why."""


def require_av() -> Any:
    """Import PyAV, or raise MissingDependencyError naming the ``video`` extra."""
    try:
        import av
    except ImportError:
        raise MissingDependencyError("driving", "PyAV (for --format bddx videos)", "video") from None
    return av


@dataclass(frozen=True)
class FrameRef:
    """A written frame: its path relative to the dataset root, its own time (s) and its size."""

    path: str
    time: float
    width: int
    height: int


def frame_name(video: str, seconds: float, suffix: str = ".jpg") -> str:
    """``images/<video>/<video>_<ms>.jpg`` for a frame at `seconds`."""
    return f"images/{video}/{video}_{round(seconds * 1000):06d}{suffix}"


class VideoFrames:
    """One video opened with PyAV: its length, and its frames nearest to ascending times, written as JPEGs.

    Use as a context manager. `decoded` counts the frames decoded so far.
    """

    def __init__(self, path: Path, video: str, root: Path, quality: int = 90) -> None:
        av = require_av()
        self._errors: tuple[type[BaseException], ...] = (av.error.FFmpegError, OSError, ValueError)
        self.video, self.root, self.quality = video, Path(root), quality
        self.decoded = 0
        self._written: dict[int, FrameRef] = {}
        try:
            self._container = av.open(str(path))
        except self._errors as e:
            raise VideoError(f"unreadable video: {e}") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError("unreadable video: no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._origin = float(self._stream.start_time or 0) * float(self._stream.time_base)
        self._frames: Any = None
        self._before: tuple[float, Any] | None = None
        self._ahead: tuple[float, Any] | None = None

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self._container.close()

    @property
    def duration(self) -> float:
        """Length in seconds (stream, then container duration, then frame count / rate)."""
        s = self._stream
        if s.duration:
            return float(s.duration * s.time_base)
        if self._container.duration:
            return self._container.duration / 1_000_000
        if s.frames and s.average_rate:
            return float(s.frames / s.average_rate)
        raise VideoError("unreadable video: its length is unknown")

    def _seek(self, t: float) -> None:
        target = round((t + self._origin) / float(self._stream.time_base))
        self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._before = self._ahead = None

    def _next(self) -> tuple[float, Any] | None:
        for frame in self._frames:
            if frame.time is None:
                continue
            self.decoded += 1
            return float(frame.time) - self._origin, frame
        return None

    def _nearest(self, t: float) -> tuple[float, Any]:
        if self._frames is None or (self._ahead is not None and t - self._ahead[0] > SEEK_AHEAD):
            self._seek(t)
        while self._ahead is None or self._ahead[0] < t:
            decoded = self._next()
            if decoded is None:  # end of the stream: the last frame is the nearest
                break
            self._before, self._ahead = self._ahead, decoded
        candidates = [c for c in (self._before, self._ahead) if c is not None]
        if not candidates:
            raise VideoError(f"unreadable video: no frame decoded at {t:.3f} s")
        return min(candidates, key=lambda c: (abs(c[0] - t), c[0]))

    def frame_at(self, t: float) -> FrameRef:
        """The frame nearest `t` seconds, written once; call with ascending times.

        Raises:
            VideoError: The video cannot be decoded there.
        """
        try:
            seconds, frame = self._nearest(t)
            key = round(seconds * 1000)
            if key not in self._written:
                rel = frame_name(self.video, seconds)
                (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                image = frame.to_image()
                image.save(self.root / rel, "JPEG", quality=self.quality)
                self._written[key] = FrameRef(rel, key / 1000, image.width, image.height)
        except self._errors as e:
            raise VideoError(f"unreadable video: {e}") from None
        return self._written[key]


class ExtractedFrames:
    """Pre-extracted frames of one video (``--frames-from``): ``<video>_<ms>.jpg`` files in DIR or DIR/<video>/.

    The folder a conversion wrote (``DATASET/images``) is such a folder. The length is the last frame's time;
    a time is served by the nearest frame, which must lie within `FRAME_GAP` seconds.
    """

    def __init__(self, folder: Path, video: str, root: Path) -> None:
        self.video, self.root = video, Path(root)
        self.decoded = 0
        self._frames: dict[int, Path] = {}
        for where in (Path(folder), Path(folder) / video):
            if where.is_dir():
                for path in where.glob(f"{video}_*"):
                    m = _FRAME_NAME.match(path.name)
                    if m is not None and m["video"] == video:
                        self._frames.setdefault(int(m["ms"]), path)
        if not self._frames:
            raise VideoError(f"no pre-extracted frames named {video}_<ms>.jpg in {folder}")
        self._times = sorted(self._frames)
        self._written: dict[int, FrameRef] = {}

    def __enter__(self) -> ExtractedFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @property
    def duration(self) -> float:
        """The last frame's time in seconds."""
        return self._times[-1] / 1000

    def frame_at(self, t: float) -> FrameRef:
        """The pre-extracted frame nearest `t` seconds, copied into the dataset once.

        Raises:
            VideoError: No frame lies within `FRAME_GAP` seconds of `t`, or it cannot be read.
        """
        key = min(self._times, key=lambda ms: (abs(ms / 1000 - t), ms))
        if abs(key / 1000 - t) > FRAME_GAP:
            raise VideoError(f"no pre-extracted frame within {FRAME_GAP} s of {t:.3f} s")
        if key not in self._written:
            source = self._frames[key]
            rel = frame_name(self.video, key / 1000, source.suffix.lower())
            dest = self.root / rel
            try:
                if source.resolve() != dest.resolve():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, dest)
                with Image.open(dest) as image:
                    width, height = image.size
            except OSError as e:
                raise VideoError(f"unreadable frame {source}: {e}") from None
            self._written[key] = FrameRef(rel, key / 1000, width, height)
        return self._written[key]


def index_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Files under `folder` (recursively) with one of `suffixes`, by stem (the first one found wins)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file():
            found.setdefault(path.stem, path)
    return found

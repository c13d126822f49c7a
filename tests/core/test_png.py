"""The shared PNG writer: lossless for grey, RGB and grey-broadcast images, atomic, isal optional."""

from __future__ import annotations

import io
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mini_internvl_adapt import png as png_module
from mini_internvl_adapt.png import encode_png, write_png, write_png_planes


def decode_png(data: bytes) -> np.ndarray:
    """The RGB pixels any loader sees (``convert("RGB")``, as ours and the official scripts do)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (33, 17), (64, 64)])
def test_png_writer_round_trips_grey_broadcast_and_rgb(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    grey = rng.integers(0, 256, size=shape, dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    broadcast = np.broadcast_to(grey[..., None], (*shape, 3))
    for pixels, colour_type in ((broadcast, b"\x00"), (rgb, b"\x02")):
        data = encode_png(pixels)
        # 8-bit; grey (type 0) for a grey plane broadcast to RGB, truecolour (type 2) for real RGB
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[24:26] == b"\x08" + colour_type
        assert np.array_equal(decode_png(data), pixels)
    # A non-contiguous RGB view (a crop) is encoded as what it shows.
    crop = rgb[:, ::-1]
    assert np.array_equal(decode_png(encode_png(crop)), crop)


def test_png_writer_refuses_what_is_not_8_bit_grey_or_rgb() -> None:
    with pytest.raises(ValueError, match="8-bit: got dtype uint16"):
        encode_png(np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match=r"got shape \(4, 4, 4\)"):
        encode_png(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"got shape \(0, 4\)"):
        encode_png(np.zeros((0, 4), np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (9, 1), (33, 17)])
def test_planes_are_written_as_the_image_they_stack_to(tmp_path: Path, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    rgb = rng.integers(0, 256, size=(3, *shape), dtype=np.uint8)
    grey = rgb[:1]
    write_png_planes(tmp_path / "rgb.png", rgb)
    write_png_planes(tmp_path / "grey.png", grey)
    # Byte for byte the file write_png makes of the interleaved image: same filter, same deflate.
    assert (tmp_path / "rgb.png").read_bytes() == encode_png(np.ascontiguousarray(rgb.transpose(1, 2, 0)))
    assert (tmp_path / "grey.png").read_bytes() == encode_png(grey[0])
    with Image.open(tmp_path / "grey.png") as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), grey[0])
    with pytest.raises(ValueError, match=r"\(1, H, W\) grey or \(3, H, W\) RGB: got shape \(2, 4, 4\)"):
        write_png_planes(tmp_path / "x.png", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="8-bit: got dtype uint16"):
        write_png_planes(tmp_path / "x.png", np.zeros((3, 4, 4), np.uint16))


def test_png_writer_falls_back_to_zlib_without_isal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "isal", None)  # import isal -> ImportError
    name, deflate = png_module._deflate.__wrapped__()
    assert name == f"zlib {zlib.ZLIB_RUNTIME_VERSION} level 1"
    lines = np.tile(np.arange(257, dtype=np.uint8), (8, 1))  # the writer hands deflate the array's buffer
    assert zlib.decompress(deflate(lines.data)) == lines.tobytes()
    assert png_module.deflate_name() in (name, "isal level 2")


def test_write_png_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    write_png(tmp_path / "a.png", pixels)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    assert (tmp_path / "a.png").read_bytes() == encode_png(pixels)
    assert np.array_equal(decode_png((tmp_path / "a.png").read_bytes()), pixels)


def test_png_writer_is_lossless_for_rgb_and_grey() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    rgb[10:20] = rgb[9]  # repeated rows: the Up filter gives zeros there
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    broadcast = np.broadcast_to(grey[..., None], (*grey.shape, 3))
    for pixels, mode in ((rgb, "RGB"), (grey, "L"), (broadcast, "L")):
        with Image.open(io.BytesIO(encode_png(pixels))) as im:
            assert im.mode == mode and im.size == (pixels.shape[1], pixels.shape[0])
            assert (np.asarray(im.convert("RGB") if pixels.ndim == 3 else im) == pixels).all()
    with pytest.raises(ValueError, match="8-bit: got dtype uint16"):
        encode_png(rgb.astype(np.uint16))
    with pytest.raises(ValueError, match=r"got shape \(4, 4, 4\)"):
        encode_png(np.zeros((4, 4, 4), dtype=np.uint8))


def test_a_grey_png_tiles_exactly_like_the_rgb_png_it_stands_for(tmp_path: Path) -> None:
    from mini_internvl_adapt.processing.tiling import tile_image

    grey = np.random.default_rng(1).integers(0, 256, (300, 500), dtype=np.uint8)
    write_png(tmp_path / "grey.png", np.broadcast_to(grey[..., None], (300, 500, 3)))
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB").save(tmp_path / "rgb.png")
    with Image.open(tmp_path / "grey.png") as g, Image.open(tmp_path / "rgb.png") as c:
        assert g.mode == "L" and c.mode == "RGB"
        assert torch.equal(tile_image(g, max_tiles=6), tile_image(c, max_tiles=6))

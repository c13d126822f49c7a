"""What a sample may hold before any work is done on it: a cheap length check (characters and images,
no tokenizer) and Pillow's decompression-bomb limit on an image's pixels, named in one error.

Every reader of samples (the training budget check, evaluation, preview) runs `length_problem` before it
tokenizes or decodes anything, so a 50 MB answer or a line with thousands of images costs a string length,
not gigabytes. The pixel limit is Pillow's own (``PIL.Image.MAX_IMAGE_PIXELS``; Pillow refuses an image
declaring more than twice that); ``MINI_INTERNVL_ADAPT_MAX_IMAGE_PIXELS=N`` sets the most pixels an image may
have (``none`` for no limit).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mini_internvl_adapt.data_format.samples import Sample
from mini_internvl_adapt.errors import ImageTooLargeError, InputError

# A token of the models' tokenizers rarely covers more than a dozen characters: text longer than this many
# characters per token of the budget cannot fit and would keep under 1/32 of itself after truncation, so it
# is dropped before any tokenizer sees it.
CHARS_PER_TOKEN = 32
MAX_PIXELS_ENV = "MINI_INTERNVL_ADAPT_MAX_IMAGE_PIXELS"


@dataclass(frozen=True)
class LengthProblem:
    """Why a sample cannot fit the token budget, from its lengths alone.

    Attributes:
        tokens: A lower bound of its token count (above the budget).
        reason: One line saying what is too long.
    """

    tokens: int
    reason: str


def length_problem(sample: Sample, max_length: int, tokens_per_image: int) -> LengthProblem | None:
    """Whether `sample` certainly exceeds `max_length` tokens, judged from character and image counts.

    Args:
        sample: The sample (its turns and image list; nothing is read from disk).
        max_length: The token budget.
        tokens_per_image: The fewest tokens one image takes (one tile's context tokens plus its
            ``<img>`` / ``</img>``).

    Returns:
        None when the sample may fit (then count its tokens), else the problem.
    """
    n_images = len(sample.images)
    image_tokens = n_images * tokens_per_image
    if image_tokens > max_length:
        return LengthProblem(
            image_tokens,
            f"{n_images} images take at least {image_tokens} tokens ({tokens_per_image} each), over the "
            f"budget of {max_length} (max_length)",
        )
    chars = sum(len(turn.value) for turn in sample.conversations)
    limit = max_length * CHARS_PER_TOKEN
    if chars > limit:
        return LengthProblem(
            max(max_length + 1, chars // CHARS_PER_TOKEN),
            f"{chars} characters of text, over {limit} ({CHARS_PER_TOKEN} per token of max_length {max_length}): "
            "far over the budget, not tokenized",
        )
    return None


def apply_pixel_limit() -> None:
    """Set Pillow's decompression-bomb limit from MINI_INTERNVL_ADAPT_MAX_IMAGE_PIXELS, when it is set.

    Raises:
        InputError: The variable holds neither a whole number of pixels nor 'none'.
    """
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return
    from PIL import Image

    if value.lower() in ("none", "off"):
        Image.MAX_IMAGE_PIXELS = None
        return
    try:
        pixels = int(value.replace("_", ""))
    except ValueError:
        pixels = 0
    if pixels < 2:
        raise InputError(f"{MAX_PIXELS_ENV} must be a number of pixels (or 'none'), got '{value}'")
    Image.MAX_IMAGE_PIXELS = pixels // 2  # Pillow refuses an image over twice its limit


def too_large(path: str | Path, error: Exception) -> ImageTooLargeError:
    """The error for an image Pillow refused as a decompression bomb, naming the limit and how to raise it."""
    from PIL import Image

    declared = re.search(r"\((\d+) pixels\)", str(error))
    pixels = f"{int(declared.group(1))} pixels" if declared else "more pixels than allowed"
    limit = Image.MAX_IMAGE_PIXELS
    shown = f"{2 * limit} pixels (twice PIL.Image.MAX_IMAGE_PIXELS = {limit})" if limit else "its limit"
    return ImageTooLargeError(
        f"image {path} declares {pixels}, over Pillow's decompression-bomb limit of {shown}; if the image is "
        f"genuine, raise the limit with the environment variable {MAX_PIXELS_ENV}=<pixels> (or 'none')"
    )


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding its pixels.

    Raises:
        ImageTooLargeError: The header declares more pixels than Pillow's limit.
        OSError: The file is missing or not an image.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Image.DecompressionBombError as e:
        raise too_large(path, e) from None

"""Shared fixtures: the real test data in ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data next to the checkout; tests using it skip when it is not there (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def sentencepiece_model(tmp_path: Path) -> Callable[..., Path]:
    """Train a tiny Llama-style SentencePiece BPE model (as InternLM2 and Phi-3 ship one) on given lines.

    Call it with (lines, vocab_size, symbols): it returns the path of the trained ``.model`` file, with
    ``symbols`` as user-defined pieces. Identity normalisation and byte fallback, as LLaMA / InternLM2
    tokenizers: newlines are kept, unknown bytes fall back to byte pieces.
    """

    def train(lines: list[str], vocab_size: int, symbols: list[str]) -> Path:
        import sentencepiece as spm

        corpus = tmp_path / "sp_corpus.txt"
        corpus.write_text("\n".join(lines))
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(tmp_path / "sp"),
            vocab_size=vocab_size,
            model_type="bpe",
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            byte_fallback=True,
            bos_id=1,
            eos_id=2,
            unk_id=0,
            pad_id=-1,
            user_defined_symbols=symbols,
        )
        return tmp_path / "sp.model"

    return train


# Pillow's limit before any test module imported anything: nuscenes-devkit raises it process-wide on import.
_PILLOW_PIXEL_LIMIT = Image.MAX_IMAGE_PIXELS


@pytest.fixture(autouse=True)
def _pillow_pixel_limit() -> Iterator[None]:
    """Each test starts with Pillow's own decompression-bomb limit and leaves it so (the CLI sets it from
    MINI_INTERNVL_ADAPT_MAX_IMAGE_PIXELS; importing nuscenes-devkit raises it)."""
    Image.MAX_IMAGE_PIXELS = _PILLOW_PIXEL_LIMIT
    yield
    Image.MAX_IMAGE_PIXELS = _PILLOW_PIXEL_LIMIT

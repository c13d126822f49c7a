"""Shared fixtures: the real test data in ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(autouse=True)
def _pillow_pixel_limit() -> Iterator[None]:
    """Restore Pillow's process-wide decompression-bomb limit after each test (the CLI sets it from
    MINI_INTERNVL_ADAPT_MAX_IMAGE_PIXELS, and a test that does so must not change the next test's limit)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit

"""What a benchmark reader hands out: generation settings, one record per entry, skips and entry problems.

A record carries everything a generic generator needs (id, image paths, the prompt with its ``<image>``
placeholders, the tiling ``max_num`` and thumbnail flag, ``max_new_tokens``) and everything the benchmark's
scorer needs (the ground truth and the entry's category / type fields). Nothing here knows a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mini_internvl_adapt.errors import DatasetError

IMAGE_PLACEHOLDER = "<image>"
# How many entry problems an error message lists before it says "... and N more".
MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class GenerationSettings:
    """How the official script generates an answer: tiling and decoding.

    Attributes:
        max_new_tokens: The official ``max_new_tokens``.
        max_num: Most tiles per image (dynamic resolution, ``--max-num``).
        use_thumbnail: Append a 448x448 thumbnail when an image gives more than one tile. The InternVL
            scripts read it from the model's config (``use_thumbnail``, true for every Mini-InternVL2
            checkpoint); VLMEvalKit always sets it.
        min_new_tokens: The official ``min_new_tokens`` (0 where the script sets none).
        dynamic: Dynamic resolution on (``--dynamic``); off would mean one 448x448 tile per image.
        do_sample: Sampling; every official run decodes greedily.
        num_beams: Beam count; 1 (greedy) everywhere.
    """

    max_new_tokens: int
    max_num: int
    use_thumbnail: bool = True
    min_new_tokens: int = 0
    dynamic: bool = True
    do_sample: bool = False
    num_beams: int = 1

    def generate_kwargs(self) -> dict[str, Any]:
        """The decoding arguments of ``generate`` (greedy, as the official ``generation_config``)."""
        out: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "num_beams": self.num_beams,
        }
        if self.min_new_tokens:
            out["min_new_tokens"] = self.min_new_tokens
        return out


@dataclass(frozen=True)
class BenchRecord:
    """One benchmark entry, read exactly as the official reader reads it.

    Attributes:
        id: The entry's own id field where the official reader uses one, else its 0-based position.
        entry: 0-based position of the entry in the file (GMAI-MMBench: its data row).
        images: Image paths, resolved against the images folder (GMAI-MMBench: the decoded image files).
        question: Exactly the text the official script passes to ``model.chat`` as ``question`` (VLMEvalKit:
            its prompt after ``reorganize_prompt``, placeholders included).
        prompt: ``question`` with the ``<image>`` placeholders where ``model.chat`` puts them (it prepends
            ``<image>\\n`` when the question has none): what a generic generator feeds the chat template.
        answer: The ground truth as the official scorer reads it.
        generation: Tiling and decoding settings for this entry.
        fields: What the scorer needs besides the answer (question type, category, task, image size ...).
    """

    id: str
    entry: int
    images: tuple[str, ...]
    question: str
    prompt: str
    answer: Any
    generation: GenerationSettings
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def max_num(self) -> int:
        """Most tiles per image for this entry."""
        return self.generation.max_num

    @property
    def use_thumbnail(self) -> bool:
        """Whether a thumbnail tile is appended."""
        return self.generation.use_thumbnail

    @property
    def max_new_tokens(self) -> int:
        """The official generation length."""
        return self.generation.max_new_tokens


def chat_prompt(question: str, n_images: int) -> str:
    """The text ``model.chat`` builds from ``question``: ``<image>\\n`` is prepended when it has none."""
    if n_images and IMAGE_PLACEHOLDER not in question:
        return f"{IMAGE_PLACEHOLDER}\n{question}"
    return question


@dataclass(frozen=True)
class SkippedEntry:
    """An entry that cannot be generated (its image is missing); it stays in the score, counted wrong."""

    record: BenchRecord
    reason: str


@dataclass
class BenchRead:
    """A benchmark file read: the records to generate and the entries skipped.

    Attributes:
        benchmark: The benchmark name.
        data_file: The file read.
        images_dir: Where the images were looked up (None when images were not checked).
        records: The entries to generate, in file order.
        skipped: Entries whose image is missing; they are scored as wrong.
    """

    benchmark: str
    data_file: Path
    images_dir: Path | None
    records: list[BenchRecord]
    skipped: list[SkippedEntry] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Entries read: generated plus skipped."""
        return len(self.records) + len(self.skipped)

    def all_records(self) -> list[BenchRecord]:
        """Every entry read, skipped ones included, in file order (what the scorer counts)."""
        return sorted([*self.records, *(s.record for s in self.skipped)], key=lambda r: r.entry)

    def skipped_ids(self) -> set[str]:
        """Ids of the skipped entries."""
        return {s.record.id for s in self.skipped}


@dataclass(frozen=True)
class EntryProblem:
    """A bad entry: which file, which entry, what is wrong."""

    path: str
    entry: int
    problem: str
    entry_id: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"entry {self.entry}"
        if self.line is not None:
            where += f" (line {self.line})"
        if self.entry_id is not None:
            where += f" (id {self.entry_id!r})"
        return f"{self.path}: {where}: {self.problem}"


class BenchmarkDataError(DatasetError):
    """A benchmark file with bad entries (or one that cannot be read at all); lists file, entry, problem.

    Attributes:
        problems: Every bad entry found (the message lists the first ``MAX_LISTED_PROBLEMS``).
    """

    def __init__(self, path: str | Path, problems: Sequence[EntryProblem] = (), message: str = "") -> None:
        self.problems = list(problems)
        if not message:
            n = len(self.problems)
            listed = "\n".join(f"  {p}" for p in self.problems[:MAX_LISTED_PROBLEMS])
            more = f"\n  ... and {n - MAX_LISTED_PROBLEMS} more" if n > MAX_LISTED_PROBLEMS else ""
            message = f"{n} bad entr{'y' if n == 1 else 'ies'}:\n{listed}{more}"
        super().__init__(path, message)

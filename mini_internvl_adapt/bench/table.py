"""The official benchmarks of the Mini-InternVL paper: files, generation settings, readers, scorers, paper keys.

Generation settings are the official ones: the InternVL scripts (``internvl_chat/eval/domain_specific/``) run
with ``--dynamic --max-num 12`` as the InternVL documentation's domain-adaptation commands give them (DriveLM
hard-codes it in evaluate.sh), the thumbnail from the model's config (true for Mini-InternVL2), greedy
decoding, ``min_new_tokens`` 1 and each dataset's ``max_new_tokens``. GMAI-MMBench runs in VLMEvalKit
(``InternVLChat``, version V2.0): 6 tiles, thumbnail, greedy, ``max_new_tokens`` 4096 (VLMEvalKit e8e78f05;
1024 in the October 2024 release the paper used, which only matters for answers longer than 1024 tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mini_internvl_adapt.errors import InputError

from . import dior_rsvg, drivelm, gmai, mme_realworld, rsvqa
from .reading import Problems, assemble, default_images_dir
from .records import BenchRead, BenchRecord, GenerationSettings

Reader = Callable[[Path, Path, int | None, GenerationSettings], tuple[list[BenchRecord], Problems]]
Scorer = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class PaperMetric:
    """How one of the paper's numbers (a key of the published-model registry) is read from our metrics.

    Attributes:
        key: The registry's score key (``rsvqa_hr_test2``).
        metric: Our metric key holding it, or None when our metrics cannot give it.
        scale: Factor from our metric to the paper's unit (100 for a percentage).
        note: Why ``metric`` is None, or what to watch when comparing.
    """

    key: str
    metric: str | None
    scale: float = 1.0
    note: str = ""


@dataclass(frozen=True)
class Benchmark:
    """One official benchmark.

    Attributes:
        name: The name ``adapt bench`` takes (``rsvqa-hr-test2``).
        domain: The domain plugin it belongs to.
        adaptation: The published adaptation set whose checkpoints the paper scores on it (``RS``).
        official_file: The official data file, as named in its source.
        source: Where the file comes from.
        official_code: The script whose reading and scoring this reproduces.
        image_root: The official images folder, relative to the dataset root (the folder holding ``val/``);
            for GMAI-MMBench, where the TSV's images are decoded, relative to the TSV's folder (``<stem>`` is
            the TSV's name without ``.tsv``, as VLMEvalKit's ``LMUData/images/<dataset>``).
        generation: Tiling and decoding settings.
        metric: The headline metric key in the scores.
        paper: The paper's numbers this benchmark reproduces.
        loader: Reads the file into a `BenchRead`.
        scorer: Scores (records, predictions, wrong ids, **options).
        options: The scoring options the scorer accepts.
        embedded_images: The images are inside the data file (GMAI-MMBench's base64): scoring never looks
            at image files, and only an entry without an image is skipped.
    """

    name: str
    domain: str
    adaptation: str
    official_file: str
    source: str
    official_code: str
    image_root: str
    generation: GenerationSettings
    metric: str
    paper: tuple[PaperMetric, ...]
    loader: Callable[..., BenchRead]
    scorer: Scorer
    options: tuple[str, ...] = ()
    embedded_images: bool = False


def _internvl_loader(reader: Reader) -> Callable[..., BenchRead]:
    """A loader for the InternVL-repository files: read, raise entry problems, split off missing images."""

    def load(
        bench: Benchmark, data_file: Path, images_dir: Path | None, limit: int | None, check_images: bool
    ) -> BenchRead:
        """Read `data_file`; images under `images_dir` (default: the official layout)."""
        root = images_dir if images_dir is not None else default_images_dir(data_file, bench.image_root)
        records, problems = reader(data_file, root, limit, bench.generation)
        problems.raise_if_any()
        return assemble(bench.name, data_file, root if check_images else None, records)

    return load


def _gmai_loader(
    bench: Benchmark, data_file: Path, images_dir: Path | None, limit: int | None, check_images: bool
) -> BenchRead:
    """GMAI-MMBench: rows without an image are skipped; with `check_images` the images are decoded."""
    default = data_file.resolve().parent / bench.image_root.replace("<stem>", data_file.stem)
    root = images_dir if images_dir is not None else default
    records, skipped, problems, sources = gmai.read_gmai(data_file, root, limit, bench.generation)
    problems.raise_if_any()
    read = BenchRead(bench.name, data_file, root if check_images else None, records, skipped)
    return gmai.decode_images(data_file, read, sources) if check_images else read


_INTERNVL_DATA = "OpenGVLab/InternVL-Domain-Adaptation-Data (Hugging Face dataset)"
_RSVQA_CODE = "internvl_chat/eval/domain_specific/rs_vqa/evaluate.py + score.py"
_RS_GEN = GenerationSettings(max_new_tokens=50, max_num=12, min_new_tokens=1)


def _rsvqa(name: str, file: str, image_root: str, paper_key: str) -> Benchmark:
    return Benchmark(
        name=name,
        domain="remote-sensing",
        adaptation="RS",
        official_file=file,
        source=_INTERNVL_DATA,
        official_code=_RSVQA_CODE,
        image_root=image_root,
        generation=_RS_GEN,
        metric="accuracy_without_count_area",
        paper=(PaperMetric(paper_key, "accuracy_without_count_area", 100.0),),
        loader=_internvl_loader(rsvqa.read_rsvqa),
        scorer=rsvqa.score_rsvqa,
    )


_TABLE: Sequence[Benchmark] = (
    Benchmark(
        name="drivelm-val",
        domain="driving",
        adaptation="DriveLM",
        official_file="val/drivelm_val.jsonl",
        source=_INTERNVL_DATA + "; stitched images from DriveLM + nuScenes by tools/images_stitching.py",
        official_code="internvl_chat/eval/domain_specific/drivelm/evaluate.py; DriveLM challenge metrics",
        image_root="images/drivelm/stitch",
        generation=GenerationSettings(max_new_tokens=200, max_num=12, min_new_tokens=1),
        metric="final",
        paper=(
            PaperMetric("final_score", "final", note="needs the GPT judge (scoring option judge)"),
            PaperMetric("accuracy", "accuracy"),
            PaperMetric("gpt_score", "gpt", note="needs the GPT judge"),
            PaperMetric("match", "match", note="needs the GPT judge"),
        ),
        loader=_internvl_loader(drivelm.read_drivelm),
        scorer=drivelm.score_drivelm,
        options=("tags", "judge", "judge_model", "judge_workers"),
    ),
    _rsvqa("rsvqa-lr", "val/rsvqa_l_test_instruct.json", "images/RSVQA_L/Images_LR", "rsvqa_lr_avg"),
    _rsvqa("rsvqa-hr-test1", "val/rsvqa_h_test_1_instruct.json", "images/RSVQA-H/Data", "rsvqa_hr_test1"),
    _rsvqa("rsvqa-hr-test2", "val/rsvqa_h_test_2_instruct.json", "images/RSVQA-H/Data", "rsvqa_hr_test2"),
    Benchmark(
        name="dior-rsvg",
        domain="remote-sensing",
        adaptation="RS",
        official_file="val/dior_rsvg_test.json",
        source=_INTERNVL_DATA + "; images from DIOR-RSVG (images/DIOR-RSVG/JPEGImages)",
        official_code="internvl_chat/eval/domain_specific/rs_det/evaluate.py + caculate.py",
        image_root="images",
        generation=GenerationSettings(max_new_tokens=200, max_num=12, min_new_tokens=1),
        metric="acc_at_0_5",
        paper=(PaperMetric("dior_rsvg_acc@0.5", "acc_at_0_5", 100.0),),
        loader=_internvl_loader(dior_rsvg.read_dior_rsvg),
        scorer=dior_rsvg.score_dior_rsvg,
    ),
    Benchmark(
        name="gmai-mmbench",
        domain="medical",
        adaptation="Medical",
        official_file="GMAI-MMBench_VAL.tsv",
        source="VLMEvalKit TSV (huggingface.co/datasets/VLMEval/GMAI-MMBench, OpenGVLab/GMAI-MMBench)",
        official_code="VLMEvalKit: GMAIMMBenchDataset + InternVLChat (V2.0), exact_matching",
        image_root="images/<stem>",
        generation=GenerationSettings(max_new_tokens=4096, max_num=6),
        metric="accuracy",
        paper=(
            PaperMetric(
                "gmai_2d_cls", None, 100.0, "the paper's 2D-Cls split is not a documented TSV column"
            ),
            PaperMetric(
                "gmai_2d_det", None, 100.0, "the paper's 2D-Det split is not a documented TSV column"
            ),
        ),
        loader=_gmai_loader,
        scorer=gmai.score_gmai,
        embedded_images=True,
    ),
    Benchmark(
        name="mme-realworld-ad",
        domain="driving",
        adaptation="DriveLM",
        official_file="val/MME_RealWorld.json",
        source="MME-RealWorld (huggingface.co/datasets/yifanzhang114/MME-RealWorld), autonomous-driving images",
        official_code="internvl_chat/eval/domain_specific/mme_rw/evaluate.py (--subtask Autonomous_Driving)",
        image_root="images/MME-RealWorld/data",
        generation=GenerationSettings(max_new_tokens=100, max_num=12, min_new_tokens=1),
        metric="accuracy",
        paper=(),
        loader=_internvl_loader(mme_realworld.read_mme_realworld),
        scorer=mme_realworld.score_mme_realworld,
    ),
)

BENCHMARKS: Mapping[str, Benchmark] = {b.name: b for b in _TABLE}


class UnknownBenchmarkError(InputError):
    """A benchmark name that is not in `BENCHMARKS`."""


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`; raises `UnknownBenchmarkError` listing the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UnknownBenchmarkError(
            f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}"
        ) from None

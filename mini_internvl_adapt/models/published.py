"""The published domain-adapted checkpoints (Mini-InternVL2-{1B,2B,4B}-DA-*) with the paper's scores, and
where to find a local copy of one.

Hub ids are the repositories' own names on the Hugging Face Hub (their model pages): ``-DA-DriveLM``,
``-DA-BDD``, ``-DA-RS``, ``-DA-Medical``. The official README (internvl_chat/shell/mini_internvl/README.md)
links the DriveLM ones as ``-DA-Drivelm``; the Hub resolves repository names whatever their case, so that
spelling is accepted as an alias, and a local copy is found in the Hugging Face cache under either spelling
(the cache folder is named after the id as it was typed: ``models--OpenGVLab--Mini-InternVL2-1B-DA-Drivelm``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mini_internvl_adapt.errors import HubUnavailableError

MODELS_DIR_ENV = "MINI_INTERNVL_ADAPT_MODELS"


# The adaptation sets as the Hub repositories spell them, and as the official README's links spell them.
_README_SPELLING = {"DriveLM": "Drivelm", "BDD": "BDD", "RS": "RS", "Medical": "Medical"}


_DOMAIN_OF = {"DriveLM": "driving", "BDD": "driving", "RS": "remote-sensing", "Medical": "medical"}


_BASE_OF = {
    "1B": ("mini-internvl-1b", "OpenGVLab/InternVL2-1B", "qwen2", "Hermes-2"),
    "2B": ("mini-internvl-2b", "OpenGVLab/InternVL2-2B", "internlm2", "internlm2-chat"),
    "4B": ("mini-internvl-4b", "OpenGVLab/InternVL2-4B", "phi3", "phi3-chat"),
}


# What the paper reports per adaptation set; names are fixed so a missing score shows as None.
_BENCHMARKS = {
    "DriveLM": ("DriveLM-nuScenes val", ("final_score", "accuracy", "gpt_score", "match")),
    "BDD": (
        "BDD-X test",
        (
            "action_cider",
            "action_bleu_4",
            "action_rouge_l",
            "justification_cider",
            "justification_bleu_4",
            "justification_rouge_l",
            "speed_rmse",
            "turning_angle_rmse",
        ),
    ),
    "RS": ("RSVQA / DIOR-RSVG", ("dior_rsvg_acc@0.5", "rsvqa_lr_avg", "rsvqa_hr_test1", "rsvqa_hr_test2")),
    "Medical": ("GMAI-MMBench", ("gmai_2d_cls", "gmai_2d_det")),
}


# Scores from /work/shared/reference (driving.md, medical-and-remote-sensing.md); None where they give none.
_PAPER_SCORES: dict[tuple[str, str], dict[str, float]] = {
    ("DriveLM", "1B"): {"final_score": 0.5686, "accuracy": 0.7007, "gpt_score": 63.84, "match": 39.76},
    ("DriveLM", "2B"): {"final_score": 0.5958, "accuracy": 0.7628, "gpt_score": 65.23, "match": 43.24},
    ("DriveLM", "4B"): {"final_score": 0.5821},
    ("BDD", "1B"): {
        "action_cider": 223.85,
        "action_bleu_4": 34.17,
        "action_rouge_l": 62.11,
        "justification_cider": 95.52,
        "justification_bleu_4": 9.70,
        "justification_rouge_l": 32.58,
        "speed_rmse": 1.28,
        "turning_angle_rmse": 9.45,
    },
    ("BDD", "2B"): {
        "action_cider": 242.14,
        "action_bleu_4": 35.77,
        "action_rouge_l": 63.03,
        "justification_cider": 105.06,
        "justification_bleu_4": 10.63,
        "justification_rouge_l": 32.46,
        "speed_rmse": 1.26,
        "turning_angle_rmse": 9.52,
    },
    ("BDD", "4B"): {
        "action_cider": 237.41,
        "action_bleu_4": 35.94,
        "action_rouge_l": 63.67,
        "justification_cider": 104.62,
        "justification_bleu_4": 9.51,
        "justification_rouge_l": 32.23,
        "speed_rmse": 1.31,
        "turning_angle_rmse": 9.46,
    },
    ("RS", "1B"): {"dior_rsvg_acc@0.5": 89.73},
    ("RS", "2B"): {
        "dior_rsvg_acc@0.5": 89.24,
        "rsvqa_lr_avg": 89.87,
        "rsvqa_hr_test1": 92.27,
        "rsvqa_hr_test2": 90.30,
    },
    ("RS", "4B"): {"dior_rsvg_acc@0.5": 92.04},
    ("Medical", "1B"): {"gmai_2d_cls": 35.87, "gmai_2d_det": 23.09},
    ("Medical", "2B"): {"gmai_2d_cls": 39.34, "gmai_2d_det": 25.59},
    ("Medical", "4B"): {"gmai_2d_cls": 41.34, "gmai_2d_det": 24.84},
}


@dataclass(frozen=True)
class PublishedModel:
    """One published Mini-InternVL domain-adapted checkpoint (original layout, full fine-tune).

    Attributes:
        name: Short name for ``--model`` (``mini-internvl2-2b-da-drivelm``).
        hub_id: Hugging Face repository id, as the repository spells its name on the Hub.
        domain: The domain plugin whose test sets it answers ("driving", "medical", "remote-sensing").
        adaptation: The paper's adaptation set ("DriveLM", "BDD", "RS", "Medical").
        size: "1B", "2B" or "4B".
        base_variant: Our variant name of the base model (``mini-internvl-2b``).
        base_model: Hub id of the base model.
        llm_family: "qwen2", "internlm2" or "phi3".
        template: Official chat template name.
        benchmark: What the scores were measured on.
        scores: The paper's scores; None where the references give none.
        readme_id: The id as the official README links it (``-DA-Drivelm``), when it differs.
    """

    name: str
    hub_id: str
    domain: str
    adaptation: str
    size: str
    base_variant: str
    base_model: str
    llm_family: str
    template: str
    benchmark: str
    scores: dict[str, float | None] = field(default_factory=dict)
    readme_id: str | None = None

    @property
    def ids(self) -> tuple[str, ...]:
        """Every spelling of the hub id: the Hub's own, then the README's when it differs."""
        return (self.hub_id,) if self.readme_id is None else (self.hub_id, self.readme_id)


def _published() -> dict[str, PublishedModel]:
    models = {}
    for adaptation in ("DriveLM", "BDD", "RS", "Medical"):
        benchmark, metric_names = _BENCHMARKS[adaptation]
        for size, (variant, base, family, template) in _BASE_OF.items():
            known = _PAPER_SCORES.get((adaptation, size), {})
            readme = _README_SPELLING[adaptation]
            model = PublishedModel(
                name=f"mini-internvl2-{size.lower()}-da-{adaptation.lower()}",
                hub_id=f"OpenGVLab/Mini-InternVL2-{size}-DA-{adaptation}",
                domain=_DOMAIN_OF[adaptation],
                adaptation=adaptation,
                size=size,
                base_variant=variant,
                base_model=base,
                llm_family=family,
                template=template,
                benchmark=benchmark,
                scores={m: known.get(m) for m in metric_names},
                readme_id=None if readme == adaptation else f"OpenGVLab/Mini-InternVL2-{size}-DA-{readme}",
            )
            models[model.name] = model
    return models


def list_published() -> list[PublishedModel]:
    """The 12 published Mini-InternVL2-{1B,2B,4B}-DA-{DriveLM,BDD,RS,Medical} checkpoints."""
    return list(_published().values())


def get_published(name: str) -> PublishedModel | None:
    """The published checkpoint called `name` (short name or hub id in any spelling and case), or None."""
    key = name.strip().lower()
    for model in _published().values():
        if key == model.name or key in (i.lower() for i in model.ids):
            return model
    return None


def format_published_table() -> str:
    """A text table of the published checkpoints for ``adapt models --published``."""
    lines = [f"{'name':32s} {'domain':15s} {'base':18s} {'hub id':42s} paper scores"]
    for m in list_published():
        shown = {k: v for k, v in m.scores.items() if v is not None}
        scores = ", ".join(f"{k} {v:g}" for k, v in shown.items()) or "(none in the references)"
        lines.append(
            f"{m.name:32s} {m.domain:15s} {m.base_variant:18s} {m.hub_id:42s} {m.benchmark}: {scores}"
        )
    return "\n".join(lines)


def hub_offline() -> bool:
    """Whether Hugging Face Hub access is switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    # The environment is read now, not at import time as huggingface_hub's constant is.
    return any(
        os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _local_copy(model: PublishedModel) -> Path | None:
    """A local copy: $MINI_INTERNVL_ADAPT_MODELS/<repo name>, or a snapshot in the Hugging Face cache; the
    folder names are compared whatever their case (``-DA-DriveLM`` and ``-DA-Drivelm`` are one repository)."""
    models_dir = os.environ.get(MODELS_DIR_ENV)
    if models_dir:
        wanted = [model.hub_id.split("/")[-1], model.name]
        for candidate in _entries_named(Path(models_dir), wanted):
            if (candidate / "config.json").is_file():
                return candidate
    return cached_snapshot(model.hub_id)


def _entries_named(folder: Path, names: list[str]) -> list[Path]:
    """The entries of `folder` named like one of `names` whatever the case, in the order of `names`; an
    entry spelled exactly as given comes first."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    found = [e for n in names for e in entries if e.name.lower() == n.lower()]
    return sorted(found, key=lambda e: e.name not in names)  # stable: keeps the order of `names`


def cached_snapshot(hub_id: str) -> Path | None:
    """The snapshot of `hub_id` in the local Hugging Face cache, whatever the case its folder was written in.

    The cache names a repository's folder after the id as it was typed (``huggingface-cli download
    OpenGVLab/Mini-InternVL2-1B-DA-Drivelm`` writes ``models--OpenGVLab--Mini-InternVL2-1B-DA-Drivelm``),
    while the Hub resolves names in any case; every folder whose name matches without regard to case counts.

    Args:
        hub_id: ORG/NAME.

    Returns:
        The snapshot folder (the ``main`` ref's, else the newest snapshot) holding a config.json, or None.
    """
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)  # read now: tests and users may point it elsewhere after import
    wanted = "models--" + hub_id.replace("/", "--")
    for repo in _entries_named(cache, [wanted]):
        snapshot = _snapshot_of(repo)
        if snapshot is not None:
            return snapshot
    return None


def _snapshot_of(repo: Path) -> Path | None:
    """The snapshot of one cache folder (``models--ORG--NAME``): refs/main's, else the newest one with a
    config.json."""
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text(encoding="utf-8").strip()
        if (candidate / "config.json").is_file():
            return candidate
    try:
        found = [s for s in snapshots.iterdir() if (s / "config.json").is_file()]
    except OSError:
        return None
    return max(found, key=lambda s: s.stat().st_mtime) if found else None


def resolve_published(name: str) -> Path:
    """The local folder of a published checkpoint: a local copy if there is one, else a download.

    Args:
        name: Short name (``mini-internvl2-2b-da-drivelm``) or hub id.

    Returns:
        A folder holding the original-layout checkpoint.

    Raises:
        KeyError: `name` is not a published checkpoint.
        HubUnavailableError: No local copy and the hub cannot be reached; the message says how to get one.
    """
    model = get_published(name)
    if model is None:
        raise KeyError(f"'{name}' is not a published checkpoint; `adapt models --published` lists them")
    local = _local_copy(model)
    if local is not None:
        return local
    how = (
        f"download it where there is network (`huggingface-cli download {model.hub_id}`), then copy the "
        f"Hugging Face cache here or put the folder at ${MODELS_DIR_ENV}/{model.hub_id.split('/')[-1]}, "
        "or pass --model PATH"
    )
    if hub_offline():
        raise HubUnavailableError(
            f"{model.name} ({model.hub_id}) is not in the local cache and hub access is off (HF_HUB_OFFLINE=1): {how}"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model.hub_id))
    except Exception as e:  # network, auth and offline errors all end the same way for the user
        raise HubUnavailableError(f"cannot download {model.hub_id} ({type(e).__name__}: {e}); {how}") from e

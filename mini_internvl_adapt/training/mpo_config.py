"""The ``mpo`` section of a training config: Mixed Preference Optimization settings (``train.objective: mpo``).

The defaults are the official InternVL2.5-MPO / InternVL3 scripts' (``internvl_chat_mpo.py`` with
``--loss_type sigmoid,bco_pair --sigmoid_loss_weight 0.8 --bco_pair_loss_weight 0.2 --rpo_alpha 1`` and TRL's
default ``beta`` 0.1): MPO = 0.8 x DPO (sigmoid) + 0.2 x BCO-pair + 1.0 x SFT on the chosen answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OBJECTIVES = ("sft", "mpo")


@dataclass
class MPOSection:
    """Mixed Preference Optimization (used when train.objective is mpo).

    Attributes:
        beta: KL penalty coefficient of the DPO and BCO terms (TRL's default, which the official scripts keep).
        sigmoid_weight: Weight of the DPO (sigmoid) preference loss (official 0.8).
        bco_pair_weight: Weight of the BCO-pair quality loss (official 0.2).
        sft_weight: Weight of the SFT (generation) loss on the chosen answer, the official rpo_alpha (1.0).
    """

    beta: float = 0.1
    sigmoid_weight: float = 0.8
    bco_pair_weight: float = 0.2
    sft_weight: float = 1.0


def _finite_at_least_zero(value: Any) -> bool:
    return math.isfinite(value) and value >= 0


# (section, key, test, what the value must be), checked with the rest of the config (training.config).
MPO_VALUE_RULES: tuple[tuple[str, str, Callable[[Any], bool], str], ...] = (
    ("train", "objective", lambda v: v in OBJECTIVES, " or ".join(OBJECTIVES)),
    ("mpo", "beta", lambda v: math.isfinite(v) and v > 0, "a positive number"),
    ("mpo", "sigmoid_weight", _finite_at_least_zero, "0 or more"),
    ("mpo", "bco_pair_weight", _finite_at_least_zero, "0 or more"),
    ("mpo", "sft_weight", _finite_at_least_zero, "0 or more"),
)

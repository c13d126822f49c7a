"""Fine-tuning under Lightning: the recipe (config), the data module, the task, callbacks and the run.

The names users call are importable from here: `run_training` (and `run_mpo_training` for
``train.objective: mpo``), the config API, and `load_run_model`
(which lives with the run folder, in `mini_internvl_adapt.runs`). They resolve on first use, so importing
one submodule (the config, for `adapt --help` of a command) does not import the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "run_training": "mini_internvl_adapt.training.run",
    "run_mpo_training": "mini_internvl_adapt.training.mpo_run",
    "load_run_model": "mini_internvl_adapt.runs",
    **{
        name: "mini_internvl_adapt.training.config"
        for name in (
            "LAST_CHECKPOINT",
            "RUN_CONFIG",
            "DataSection",
            "ModelSection",
            "TrainConfig",
            "TrainSection",
            "config_from_args",
            "config_from_dict",
            "load_config",
            "save_config",
        )
    },
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mini_internvl_adapt.training' has no attribute '{name}'")

"""``python -m mini_internvl_adapt.cli ...`` runs `adapt ...` (what Lightning's DDP launcher re-runs)."""

from mini_internvl_adapt.cli import main

raise SystemExit(main())

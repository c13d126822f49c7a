"""Export: a run as a transformers-native model or a peft adapter with its model card; Hub upload."""

from mini_internvl_adapt.export.exporter import export
from mini_internvl_adapt.export.hub import push_to_hub

__all__ = ["export", "push_to_hub"]

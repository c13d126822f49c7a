"""The shared conversation format: a superset of the official InternVL fine-tuning JSONL.

A dataset is a folder holding ``<split>.jsonl`` files, an ``images/`` folder, ``meta.json`` in the
official InternVL meta format and ``report.json`` (what the converter read, wrote and skipped).
A plain official JSONL file or an official meta JSON reads as a dataset too.
"""

from mini_internvl_adapt.data_format.dataset import (
    EXCLUDED_SPLITS,
    VAL_SPLITS,
    ConversionReport,
    Skip,
    write_dataset,
)
from mini_internvl_adapt.data_format.free_text import SPECIAL_STRINGS, clean_free_text, special_strings
from mini_internvl_adapt.data_format.samples import (
    GPT,
    HUMAN,
    IMAGE_PLACEHOLDER,
    SYSTEM,
    Sample,
    Turn,
    check_relative_path,
    check_unique_ids,
    iter_samples,
    read_samples,
    resolve_image,
    write_samples,
)
from mini_internvl_adapt.data_format.sources import DatasetSource, resolve_sources
from mini_internvl_adapt.errors import DatasetError

__all__ = [
    "EXCLUDED_SPLITS",
    "GPT",
    "HUMAN",
    "IMAGE_PLACEHOLDER",
    "SPECIAL_STRINGS",
    "SYSTEM",
    "VAL_SPLITS",
    "ConversionReport",
    "DatasetError",
    "DatasetSource",
    "Sample",
    "Skip",
    "Turn",
    "check_relative_path",
    "clean_free_text",
    "check_unique_ids",
    "iter_samples",
    "read_samples",
    "resolve_image",
    "resolve_sources",
    "special_strings",
    "write_dataset",
    "write_samples",
]

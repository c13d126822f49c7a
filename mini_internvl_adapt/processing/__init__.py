"""The model transform: a sample's messages -> tiles, tokens, template and labels; packing; the processor
files a model ships with. Knows the model family, never a domain."""

from mini_internvl_adapt.models.templates import IMG_CONTEXT, IMG_END, IMG_START
from mini_internvl_adapt.processing.transform import (
    IGNORE_INDEX,
    BudgetReport,
    ProcessedSample,
    ProcessingConfig,
    SampleProcessor,
    check_token_budget,
    collate,
)

__all__ = [
    "IGNORE_INDEX",
    "IMG_CONTEXT",
    "IMG_END",
    "IMG_START",
    "BudgetReport",
    "ProcessedSample",
    "ProcessingConfig",
    "SampleProcessor",
    "check_token_budget",
    "collate",
]

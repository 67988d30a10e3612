"""Datasets: the records, preference judgements and pairs (:mod:`.records`), the parser of one line
(:mod:`.parse`), the JSONL format with its validator and loaders (:mod:`.format`), preference datasets
made from scored ones (:mod:`.preferences`), and the synthetic generator (:mod:`.synth`, imported on
use). See docs/data.md."""

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the submodule defining it; loaded on first use (PEP 562), so that importing a light
# submodule (``synth_config``) does not import the format's dependencies (transformers, through config)
_EXPORTS = {
    "load_dataset": "format",
    "load_preferences": "format",
    "load_split": "format",
    "read_dataset": "format",
    "read_preferences": "format",
    "validate_dataset": "format",
    "preferences_from_scores": "preferences",
    "write_preference_dataset": "preferences",
    "OVERALL": "records",
    "SPLITS": "records",
    "DatasetError": "records",
    "Pair": "records",
    "Preference": "records",
    "Problem": "records",
    "Record": "records",
    "aggregate_annotations": "records",
    "build_pairs": "records",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .format import (
        load_dataset,
        load_preferences,
        load_split,
        read_dataset,
        read_preferences,
        validate_dataset,
    )
    from .preferences import preferences_from_scores, write_preference_dataset
    from .records import (
        OVERALL,
        SPLITS,
        DatasetError,
        Pair,
        Preference,
        Problem,
        Record,
        aggregate_annotations,
        build_pairs,
    )

__all__ = [
    "OVERALL",
    "SPLITS",
    "DatasetError",
    "Pair",
    "Preference",
    "Problem",
    "Record",
    "aggregate_annotations",
    "build_pairs",
    "load_dataset",
    "load_preferences",
    "load_split",
    "preferences_from_scores",
    "read_dataset",
    "read_preferences",
    "validate_dataset",
    "write_preference_dataset",
]

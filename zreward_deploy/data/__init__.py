"""Datasets: the JSONL format, its validator and pair builder (:mod:`.format`), and the synthetic
generator (:mod:`.synth`, imported on use). See docs/data.md."""

from .format import (
    SPLITS,
    DatasetError,
    Pair,
    Problem,
    Record,
    aggregate_annotations,
    build_pairs,
    load_dataset,
    load_split,
    read_dataset,
    validate_dataset,
)

__all__ = [
    "SPLITS",
    "DatasetError",
    "Pair",
    "Problem",
    "Record",
    "aggregate_annotations",
    "build_pairs",
    "load_dataset",
    "load_split",
    "read_dataset",
    "validate_dataset",
]

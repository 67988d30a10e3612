"""Datasets: the records and pairs (:mod:`.records`), the parser of one line (:mod:`.parse`), the JSONL
format with its validator and loaders (:mod:`.format`), and the synthetic generator (:mod:`.synth`,
imported on use). See docs/data.md."""

from .format import load_dataset, load_split, read_dataset, validate_dataset
from .records import SPLITS, DatasetError, Pair, Problem, Record, aggregate_annotations, build_pairs

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

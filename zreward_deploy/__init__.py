"""zreward-deploy: score-distribution reward models for text-to-image, trained and deployed fast.

What a user imports lives here::

    from zreward_deploy import Scorer, load_scorer

    scorer = load_scorer("path/to/model_dir")               # or backend="onnx" on an export folder
    result = scorer.score(["a.png"], "two red cubes", errors="collect")

The names load on first use (PEP 562), so ``import zreward_deploy`` and ``zreward --help`` do not import
torch or transformers. Trainer configs live with their trainers (``zreward_deploy.training.sft.SFTConfig``
and siblings), exporter and benchmark configs with theirs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module (under zreward_deploy) that defines it
_EXPORTS = {
    # scoring
    "BaseScorer": "scoring",
    "Scorer": "scoring",
    "ScoreResult": "scoring",
    "load_scorer": "scoring",
    # model, processor, configs
    "ZRewardConfig": "config",
    "Rubric": "config",
    "Dimension": "config",
    "ScoreScale": "config",
    "load_config": "config",
    "ZRewardModel": "modeling",
    "ZRewardProcessor": "processing",
    "build_preset": "presets",
    "compose": "presets",
    # data and evaluation
    "SynthConfig": "data.synth",
    "generate_dataset": "data.synth",
    "evaluate": "evaluation",
    # errors
    "ZRewardInputError": "errors",
    "InvalidImageError": "errors",
    "InvalidPromptError": "errors",
    "InvalidModelError": "errors",
    "UnknownDimensionError": "errors",
    "MissingDependencyError": "errors",
}

__all__ = [  # a literal list, so linters see the names (tests/test_public_api.py keeps it equal to _EXPORTS)
    "BaseScorer",
    "Dimension",
    "InvalidImageError",
    "InvalidModelError",
    "InvalidPromptError",
    "MissingDependencyError",
    "Rubric",
    "ScoreResult",
    "ScoreScale",
    "Scorer",
    "SynthConfig",
    "UnknownDimensionError",
    "ZRewardConfig",
    "ZRewardInputError",
    "ZRewardModel",
    "ZRewardProcessor",
    "build_preset",
    "compose",
    "evaluate",
    "generate_dataset",
    "load_config",
    "load_scorer",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zreward_deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .config import Dimension, Rubric, ScoreScale, ZRewardConfig, load_config
    from .data.synth import SynthConfig, generate_dataset
    from .errors import (
        InvalidImageError,
        InvalidModelError,
        InvalidPromptError,
        MissingDependencyError,
        UnknownDimensionError,
        ZRewardInputError,
    )
    from .evaluation import evaluate
    from .modeling import ZRewardModel
    from .presets import build_preset, compose
    from .processing import ZRewardProcessor
    from .scoring import BaseScorer, Scorer, ScoreResult, load_scorer

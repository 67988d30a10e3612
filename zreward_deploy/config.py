"""Configuration: the score scale, the rubric, the prompt templates and the model config.

The score scale and the rubric are data (they live in ``config.json`` beside the weights), so a model
directory fully describes what its outputs mean. See docs/design.md §3–4.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig

from .errors import InvalidModelError, UnknownDimensionError, ZRewardInputError
from .fileio import read_json_object

# --------------------------------------------------------------------------------------------------
# Score scale
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreScale:
    """The closed set of K scores the model can give, and the token that stands for each.

    ``values`` are ascending floats (default 1..5); ``tokens[k]`` is the text of the token whose logit
    at the answer position scores ``values[k]``. Every token must be exactly one token of the tokenizer
    (checked by :meth:`token_ids`). A label between two values becomes a two-hot soft target
    (:meth:`soft_target`), e.g. 3.5 -> 0.5 on 3 and 0.5 on 4.
    """

    values: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)
    tokens: tuple[str, ...] = ("1", "2", "3", "4", "5")

    def __post_init__(self) -> None:
        values = tuple(float(v) for v in self.values)
        tokens = tuple(str(t) for t in self.tokens)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "tokens", tokens)
        if len(values) < 2:
            raise ZRewardInputError("score_scale", f"needs at least 2 values, got {len(values)}")
        if len(values) != len(tokens):
            raise ZRewardInputError(
                "score_scale", f"{len(values)} values but {len(tokens)} tokens; they must pair up"
            )
        if any(not math.isfinite(v) for v in values):
            raise ZRewardInputError("score_scale", f"values must be finite, got {values}")
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise ZRewardInputError("score_scale", f"values must be strictly ascending, got {values}")
        if len(set(tokens)) != len(tokens):
            raise ZRewardInputError("score_scale", f"tokens must be distinct, got {tokens}")

    @property
    def num_scores(self) -> int:
        return len(self.values)

    @property
    def min(self) -> float:
        return self.values[0]

    @property
    def max(self) -> float:
        return self.values[-1]

    @property
    def range(self) -> float:
        """S_max - S_min, the normaliser R of the rewards and the gap loss."""
        return self.values[-1] - self.values[0]

    def values_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.tensor(self.values, dtype=torch.float32, device=device)

    def token_ids(self, tokenizer: Any) -> list[int]:
        """Token id of each score token; raises if a token is not exactly one token of ``tokenizer``."""
        ids = []
        for text in self.tokens:
            encoded = tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) != 1:
                raise InvalidModelError(
                    f"score token {text!r}",
                    f"must be a single token of the tokenizer, but encodes to {len(encoded)} tokens "
                    f"{encoded}; choose other score tokens or add them as special tokens",
                )
            ids.append(int(encoded[0]))
        if len(set(ids)) != len(ids):
            raise InvalidModelError("score_scale", f"score tokens map to repeated ids {ids}")
        return ids

    def soft_target(self, scores: torch.Tensor | Sequence[float] | float) -> torch.Tensor:
        """Two-hot soft targets ``[..., K]`` for labels that may fall between two values.

        A label equal to a value is one-hot; a label between values ``v_k < s < v_{k+1}`` puts
        ``(v_{k+1} - s) / (v_{k+1} - v_k)`` on k and the rest on k+1, so the target's expectation is s.
        Labels outside ``[min, max]`` or non-finite raise :class:`ZRewardInputError`.
        """
        s = torch.as_tensor(scores, dtype=torch.float64)
        if not torch.isfinite(s).all():
            raise ZRewardInputError("scores", "labels must be finite")
        if (s < self.min).any() or (s > self.max).any():
            bad = s[(s < self.min) | (s > self.max)].flatten()[0].item()
            raise ZRewardInputError("scores", f"label {bad} is outside the scale [{self.min}, {self.max}]")
        values = torch.tensor(self.values, dtype=torch.float64)
        # index of the upper neighbour, clamped so that s == max uses the last interval
        upper = torch.searchsorted(values, s, right=False).clamp(1, len(values) - 1)
        lower = upper - 1
        v_lo, v_hi = values[lower], values[upper]
        w_hi = (s - v_lo) / (v_hi - v_lo)
        target = torch.zeros((*s.shape, len(values)), dtype=torch.float64)
        target.scatter_(-1, lower.unsqueeze(-1), (1 - w_hi).unsqueeze(-1))
        target.scatter_add_(-1, upper.unsqueeze(-1), w_hi.unsqueeze(-1))
        return target.float()

    def to_dict(self) -> dict[str, list]:
        return {"values": list(self.values), "tokens": list(self.tokens)}


# The paper's nine-level half-point scale with nine distinct single tokens (docs/method.md §2, option (a)).
HALF_POINT_SCALE = ScoreScale(
    values=(1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0),
    tokens=("A", "B", "C", "D", "E", "F", "G", "H", "I"),
)


# --------------------------------------------------------------------------------------------------
# Rubric
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One rubric dimension: a name, the instruction text shown to the model, and its reward weight."""

    name: str
    instruction: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ZRewardInputError(self.name, "dimension names must be non-empty identifiers")
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ZRewardInputError(self.name, f"weight must be finite and >= 0, got {self.weight}")


DEFAULT_DIMENSIONS: tuple[Dimension, ...] = (
    Dimension(
        "alignment",
        "how faithfully the image shows what the prompt asks for: objects, counts, colours, positions.",
    ),
    Dimension("realism", "how real and free of rendering artefacts, blur and noise the image looks."),
    Dimension("aesthetics", "how pleasing the composition, colour and clarity of the image are."),
    Dimension(
        "plausibility",
        "how physically plausible the scene is: intact objects, sensible structure, no occlusion errors.",
    ),
)


@dataclass(frozen=True)
class Rubric:
    """Ordered rubric dimensions. The scalar reward is ``R = sum_d w_d mu_d / sum_d w_d`` over the scored
    dimensions (default weights 1: the mean)."""

    dimensions: tuple[Dimension, ...] = DEFAULT_DIMENSIONS

    def __post_init__(self) -> None:
        dims = tuple(d if isinstance(d, Dimension) else Dimension(**d) for d in self.dimensions)
        object.__setattr__(self, "dimensions", dims)
        if not dims:
            raise ZRewardInputError("rubric", "needs at least one dimension")
        names = [d.name for d in dims]
        if len(set(names)) != len(names):
            raise ZRewardInputError("rubric", f"dimension names repeat: {names}")

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def __len__(self) -> int:
        return len(self.dimensions)

    def __getitem__(self, name: str) -> Dimension:
        for d in self.dimensions:
            if d.name == name:
                return d
        raise UnknownDimensionError(name, f"unknown dimension; this model knows {self.names}")

    def select(self, names: Iterable[str] | str | None) -> list[Dimension]:
        """The dimensions named (all when ``None``), in the order given; unknown names raise."""
        if names is None:
            return list(self.dimensions)
        if isinstance(names, str):
            names = [names]
        names = list(names)
        if not names:
            raise UnknownDimensionError(
                names, "no dimension named; name at least one, or leave it out for the default"
            )
        if len(set(names)) != len(names):
            raise UnknownDimensionError(names, "a dimension is asked for twice")
        return [self[n] for n in names]

    def weights(self, names: Iterable[str] | None = None) -> torch.Tensor:
        """Normalised reward weights ``[D]`` for the selected dimensions (sum to 1)."""
        dims = self.select(names)
        w = torch.tensor([d.weight for d in dims], dtype=torch.float32)
        total = w.sum()
        if total <= 0:
            raise ZRewardInputError([d.name for d in dims], "the selected dimensions' weights sum to 0")
        return w / total

    def to_list(self) -> list[dict[str, Any]]:
        return [{"name": d.name, "instruction": d.instruction, "weight": d.weight} for d in self.dimensions]


# --------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------

# Fields: {prompt} in the prompt templates; {name}, {instruction}, {min}, {max} in the others.
# The student answers right after its suffix; the teacher writes reasoning after `teacher_prompt`, then
# `teacher_think_end` (forced if it ran out of tokens) and `teacher_answer`, then the score token.
DEFAULT_TEMPLATES: dict[str, str] = {
    "student_prompt": '<|im_start|>user\nAn image was generated for the prompt: "{prompt}"\n',
    "student_suffix": (
        "Rate its {name}: {instruction} Answer with one score from {min} to {max}."
        "<|im_end|>\n<|im_start|>assistant\n"
    ),
    "teacher_prompt": (
        '<|im_start|>user\nAn image was generated for the prompt: "{prompt}"\n'
        "Judge its {name}: {instruction} Reason step by step inside <think></think>, then answer with "
        "one score from {min} to {max}.<|im_end|>\n<|im_start|>assistant\n<think>"
    ),
    "teacher_think_end": "</think>",
    "teacher_answer": "\nScore: ",
}


def fill_template(template: str, **fields: Any) -> str:
    """Substitute ``{field}`` markers by plain replacement (braces inside a user prompt stay literal)."""
    out = template
    for key, value in fields.items():
        out = out.replace("{" + key + "}", str(value))
    return out


def format_score(v: float) -> str:
    """A score value as text: ``3.0`` -> ``"3"``, ``3.5`` -> ``"3.5"`` (JSON keys, tick labels, templates)."""
    return str(int(v)) if float(v).is_integer() else str(v)


# --------------------------------------------------------------------------------------------------
# Model config
# --------------------------------------------------------------------------------------------------


class ScoringFields:
    """Views of the scoring fields a config holds as plain data (``score_scale``, ``rubric``,
    ``training``): shared by :class:`ZRewardConfig` and the native models' ``NativeConfig``."""

    score_scale: dict[str, Any]
    rubric: list[dict[str, Any]]
    training: dict[str, Any] | None

    def trained_dimensions(self) -> list[str] | None:
        """The rubric dimensions this model was trained to score (its training record), ``[]`` for a
        model that was never trained (a preset or a composed model), ``None`` when the model carries no
        record (saved before records existed: unknown)."""
        if self.training is None:
            return None
        return [d for d in self.get_rubric().names if d in self.training["dimensions"]]

    def get_score_scale(self) -> ScoreScale:
        return ScoreScale(**self.score_scale)

    def get_rubric(self) -> Rubric:
        return Rubric(tuple(Dimension(**d) for d in self.rubric))

    def scale_fields(self) -> dict[str, str]:
        scale = self.get_score_scale()
        return {"min": format_score(scale.min), "max": format_score(scale.max)}


class ZRewardConfig(ScoringFields, PretrainedConfig):
    """Config of :class:`~zreward_deploy.modeling.ZRewardModel` (``model_type="zreward_vlm"``).

    Args:
        vision_config: a SigLIP- or CLIP-style vision config (object or dict with ``model_type``).
        text_config: a Qwen2, Qwen3 or Llama text config (object or dict with ``model_type``).
        projector_hidden_act: activation between the two projector layers.
        vision_feature_select: ``"full"`` keeps every vision token, ``"patch"`` drops a leading CLS token
            (CLIP).
        image_mean, image_std: per-channel normalisation applied after resizing to ``image_size``.
        score_scale: ``{"values": [...], "tokens": [...]}`` (see :class:`ScoreScale`).
        score_token_ids: the tokenizer ids of the score tokens (resolved when the model is built).
        score_temperature: temperature of the score softmax (1.0 = the model's own distribution).
        rubric: list of ``{"name", "instruction", "weight"}`` (see :class:`Rubric`).
        templates: prompt templates (see ``DEFAULT_TEMPLATES``).
        max_prompt_tokens: longest prompt accepted (tokens, after the template); longer raises.
        score_head_backend: ``"auto"`` (Triton kernel on CUDA, PyTorch reference elsewhere; the
            ``ZREWARD_SCORE_HEAD`` environment variable may force either), ``"triton"`` or ``"torch"``.
        training: what the weights were trained on (:func:`check_training_record`): ``method``,
            ``dimensions`` (the trained ones; ``[]`` for an untrained preset or composed model), and
            optionally ``data``, ``steps``, ``metrics``. Scoring defaults to the trained dimensions and
            marks the others; ``None`` means unknown (a model saved before records existed).
    """

    model_type = "zreward_vlm"
    sub_configs: ClassVar[dict[str, type]] = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: PretrainedConfig | dict | None = None,
        text_config: PretrainedConfig | dict | None = None,
        projector_hidden_act: str = "gelu",
        vision_feature_select: str = "full",
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        score_scale: Mapping[str, Sequence] | None = None,
        score_token_ids: Sequence[int] | None = None,
        score_temperature: float = 1.0,
        rubric: Sequence[Mapping[str, Any]] | None = None,
        templates: Mapping[str, str] | None = None,
        max_prompt_tokens: int = 256,
        score_head_backend: str = "auto",
        training: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        self.vision_config = _sub_config(vision_config, "siglip_vision_model")
        self.text_config = _sub_config(text_config, "qwen2")
        self.projector_hidden_act = projector_hidden_act
        if vision_feature_select not in ("full", "patch"):
            raise InvalidModelError(
                "vision_feature_select", f"must be 'full' or 'patch', got {vision_feature_select!r}"
            )
        self.vision_feature_select = vision_feature_select
        self.image_mean = _channel_values("image_mean", image_mean)
        self.image_std = _channel_values("image_std", image_std)
        if not all(x > 0 for x in self.image_std):
            # a zero std divides every pixel by zero: the model would score NaN for every image
            raise InvalidModelError("image_std", f"every channel must be > 0, got {self.image_std}")
        scale = ScoreScale(**score_scale) if score_scale is not None else ScoreScale()
        self.score_scale = scale.to_dict()
        self.score_token_ids = [int(i) for i in score_token_ids] if score_token_ids is not None else None
        if self.score_token_ids is not None and len(self.score_token_ids) != scale.num_scores:
            raise InvalidModelError(
                "score_token_ids", f"{len(self.score_token_ids)} ids for {scale.num_scores} score values"
            )
        if not score_temperature > 0:
            raise InvalidModelError("score_temperature", f"must be > 0, got {score_temperature}")
        self.score_temperature = float(score_temperature)
        self.rubric = Rubric(tuple(rubric)).to_list() if rubric is not None else Rubric().to_list()
        merged = dict(DEFAULT_TEMPLATES)
        if templates is not None:
            unknown = set(templates) - set(DEFAULT_TEMPLATES)
            if unknown:
                raise InvalidModelError("templates", f"unknown template names {sorted(unknown)}")
            merged.update(templates)
        self.templates = merged
        self.max_prompt_tokens = int(max_prompt_tokens)
        if score_head_backend not in ("auto", "triton", "torch"):
            raise InvalidModelError(
                "score_head_backend", f"must be 'auto', 'triton' or 'torch', got {score_head_backend!r}"
            )
        self.score_head_backend = score_head_backend
        self.training = check_training_record(training)
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """``PretrainedConfig.to_dict`` with the text config's RoPE settings written for both transformers
        lines (:func:`portable_rope_fields`)."""
        out = super().to_dict()
        if isinstance(out.get("text_config"), dict):
            out["text_config"] = portable_rope_fields(out["text_config"])
        return out

    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def num_image_tokens(self) -> int:
        n = (self.vision_config.image_size // self.vision_config.patch_size) ** 2
        # CLIP-style towers add a CLS token, which "patch" selection drops again
        has_cls = self.vision_config.model_type.startswith("clip")
        return n + int(has_cls and self.vision_feature_select == "full")


TRAINING_METHODS = ("none", "compose", "sft", "grpo", "gdso", "risd", "opd")

NATIVE_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm", "idefics3")
"""``model_type`` of the native HF VLM checkpoints that score as they are (``zreward_deploy.native``)."""
SMOLVLM_FAMILIES = ("smolvlm", "idefics3")
"""The SmolVLM kind (a SigLIP tower, pixel shuffle, a Llama LM with 1-D positions): SmolVLM2 checkpoints are
``smolvlm``; the first SmolVLM releases (256M, 500M, 2.2B) and Idefics3 are published as ``idefics3``,
transformers' class of the same architecture."""


def check_training_record(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validate a model's training record (``config.training``) and return it as a plain dict.

    Keys: ``method`` (one of :data:`TRAINING_METHODS`; ``none`` = randomly initialised, ``compose`` =
    pretrained towers with an untrained projector), ``dimensions`` (list of the rubric dimensions the
    weights were trained on), and optional free-form ``data`` (dataset path), ``steps`` (int),
    ``metrics`` (final evaluation, JSON-friendly), ``base`` (the model training started from).
    """
    if record is None:
        return None
    if not isinstance(record, Mapping):
        raise InvalidModelError("training", f"must be an object, got {type(record).__name__}")
    method, dims = record.get("method"), record.get("dimensions")
    if method not in TRAINING_METHODS:
        raise InvalidModelError("training", f"method must be one of {TRAINING_METHODS}, got {method!r}")
    if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
        raise InvalidModelError("training", f"dimensions must be a list of names, got {dims!r}")
    steps = record.get("steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise InvalidModelError("training", f"steps must be a non-negative integer, got {steps!r}")
    return dict(record)


def portable_rope_fields(text_config: Mapping[str, Any]) -> dict[str, Any]:
    """A text config dict that states its RoPE settings in the fields of both transformers lines.

    transformers 5 writes them as one ``rope_parameters`` dict (``rope_theta`` inside it); 4.57 reads
    ``rope_theta`` and ``rope_scaling`` only and would silently fall back to its default base (10000,
    where Qwen2 uses 1e6) on a folder written under 5. This adds the two 4.57 fields beside
    ``rope_parameters``; transformers 5 reads either form, and a dict without ``rope_parameters`` (4.57's
    own) is returned unchanged.
    """
    out = dict(text_config)
    rope = out.get("rope_parameters")
    if not isinstance(rope, Mapping) or "rope_theta" not in rope:
        return out
    out.setdefault("rope_theta", rope["rope_theta"])
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    # a plain default RoPE is no scaling to 4.57; M-RoPE's sections (Qwen-VL) are, whatever its type
    plain = scaling.get("rope_type", "default") == "default" and set(scaling) <= {"rope_type", "type"}
    out.setdefault("rope_scaling", None if plain else scaling)
    return out


def _channel_values(name: str, values: Any) -> list[float]:
    """Three finite per-channel numbers (RGB), or :class:`InvalidModelError` naming the field."""
    try:
        out = [float(x) for x in values]
    except (TypeError, ValueError):
        raise InvalidModelError(name, f"must be three numbers (R, G, B), got {values!r}") from None
    if len(out) != 3 or not all(math.isfinite(x) for x in out):
        raise InvalidModelError(name, f"must be three finite numbers (R, G, B), got {values!r}")
    return out


def _sub_config(value: PretrainedConfig | dict | None, default_type: str) -> PretrainedConfig:
    if isinstance(value, PretrainedConfig):
        return value
    if value is None:
        return CONFIG_MAPPING[default_type]()
    if not isinstance(value, Mapping):
        raise InvalidModelError(
            "config", f"sub-config must be a config or a dict, got {type(value).__name__}"
        )
    model_type = value.get("model_type", default_type)
    if model_type not in CONFIG_MAPPING:
        raise InvalidModelError("config", f"unknown sub-config model_type {model_type!r}")
    return CONFIG_MAPPING[model_type](**{k: v for k, v in value.items() if k != "model_type"})


def load_config(directory: str | os.PathLike) -> ZRewardConfig:
    """The ``config.json`` of a model folder; any failure is an :class:`InvalidModelError` naming it."""
    path = Path(directory, "config.json")
    read_json_object(path, InvalidModelError)  # not a file, not JSON, not an object: say so plainly
    try:
        return ZRewardConfig.from_pretrained(str(directory), local_files_only=True)
    except InvalidModelError as exc:
        raise InvalidModelError(str(path), f"{exc.item}: {exc.reason}") from None
    except Exception as exc:
        raise InvalidModelError(str(path), f"is not a usable config ({type(exc).__name__}: {exc})") from None

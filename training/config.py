"""The shared base of every trainer's config: a dataclass, overridden by YAML, then by ``key=value``.

One dataclass per trainer (``SFTConfig``, ``GDSOConfig``, ...) subclasses :class:`TrainConfig`. Every
field has a type, a default and help text in ``field(metadata={"help": ...})``; ``__post_init__``
validates. Values are resolved in this order (later wins):

1. the dataclass defaults;
2. a YAML file (``--config FILE``): a mapping of field names to values;
3. ``key=value`` overrides from the command line; each value is parsed as YAML, so ``beta=0.04``,
   ``dimensions=[realism]``, ``tensorboard=true`` and ``dimensions=null`` all mean what they say.

A key that is not a field is an error (a typo must not silently train with a default), and so is a value
of the wrong type. The resolved config is written to ``output_dir/config.yaml`` at the start of a run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from zreward_deploy.errors import ZRewardInputError

C = TypeVar("C", bound="TrainConfig")

LR_SCHEDULERS = ("constant", "linear", "cosine")
RESUME_MODES = ("auto", "never")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ZRewardInputError):
    """A config file or override that is not valid for the trainer (unknown key, wrong type, bad value)."""


class NonFiniteLossError(ZRewardInputError):
    """A run stopped because its loss, its gradient norm or its weights became NaN or infinite.

    Raised by the shared loop (:meth:`~.loop.TrainLoop.update`) on every process at the same step,
    before the optimizer applies the update, so nothing non-finite reaches a checkpoint or the final model.
    ``item`` is the method; the message names the step, the value and the last good checkpoint.
    """


def require_finite(cfg: Any) -> None:
    """Raise :class:`ConfigError` naming the first float field of ``cfg`` (or float in a list field) that
    is NaN or infinite.

    Walks every dataclass field generically, so a float field added to any trainer config is covered
    without a per-field check; the range checks that follow in ``__post_init__`` then only compare
    finite numbers (``inf > 0`` would pass them, and a NaN fails them with a confusing message).
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f.name, f"must be a finite number, got {v}")


def help_text(text: str) -> dict[str, str]:
    """``field(metadata=help_text("..."))``: the help ``--help-config`` prints for a field."""
    return {"help": text}


def require_at_least(cfg: Any, minimum: float, *names: str) -> None:
    """Raise :class:`ConfigError` naming the first field of ``names`` below ``minimum``."""
    for name in names:
        value = getattr(cfg, name)
        if value < minimum:
            raise ConfigError(name, f"must be >= {minimum}, got {value}")


def require_one_of(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(name, f"must be one of {tuple(choices)}, got {value!r}")


LABEL_SOURCES = ("scores", "annotations", "auto")
MIXED_PRECISIONS = ("no", "bf16")
# The language model's attention and MLP projections: the names of the Qwen2 / Llama decoders of the
# package's own models and of the Qwen2-VL, Qwen2.5-VL, Qwen3-VL and SmolVLM text models.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_EXTRA = "pip install 'zreward-deploy[lora]'"


@dataclass
class TrainConfig:
    """Fields every trainer shares: run, model, data, optimisation, logging and checkpoints."""

    method: ClassVar[str] = "base"
    # Fields an earlier run in output_dir may be continued with other values of (docs/training.md §4):
    # the step budget, and fields that only decide how a run is watched, saved or placed; none changes
    # what a step does to the weights (and gradient_accumulation_steps, conditionally: resume_changeable).
    # Any other difference is refused (training/run_rules.py).
    changeable_on_resume: ClassVar[tuple[str, ...]] = (
        "max_steps", "output_dir", "resume", "overwrite", "device", "num_threads", "log_every",
        "eval_every", "eval_split", "eval_at_end", "save_every", "keep_checkpoints", "progress",
        "tensorboard",
    )  # fmt: skip

    # -- run ----------------------------------------------------------------------------------------
    output_dir: str = field(
        default="runs/train",
        metadata=help_text(
            "folder for checkpoints (checkpoints/step_*), the final model (model/), metrics.jsonl and "
            "config.yaml"
        ),
    )
    seed: int = field(
        default=0,
        metadata=help_text(
            "seed of everything random: model init of a preset, data order, rollout sampling (each "
            "rollout chunk's seed is derived from it, the step and the chunk's place in the global batch)"
        ),
    )
    resume: str = field(
        default="auto",
        metadata=help_text(
            "'auto': continue from the latest checkpoint in output_dir if there is one (exact resume: "
            "weights, optimizer, scheduler, data order, RNG states), refused when output_dir's earlier "
            "run has other settings (anything but max_steps and the logging, eval and checkpoint "
            "intervals); 'never': start from scratch in output_dir, deleting the earlier run's model/ "
            "and checkpoints/; or a path to a checkpoint folder"
        ),
    )
    overwrite: bool = field(
        default=False,
        metadata=help_text(
            "delete output_dir's earlier run (the whole folder) and start over (`--overwrite`); only a "
            "folder that holds a training run (config.yaml and metrics.jsonl) is deleted"
        ),
    )
    device: str = field(
        default="auto",
        metadata=help_text(
            f"where to train, one of {DEVICES}: 'auto' = a CUDA GPU when one is visible, else the CPU; "
            "'cuda' fails with one line on a machine or PyTorch build without CUDA (`--device`). Under "
            "accelerate/torchrun each process takes its own GPU"
        ),
    )

    # -- model and data ------------------------------------------------------------------------------
    model: str = field(
        default="preset:tiny",
        metadata=help_text(
            "model to train: a model directory (the package's, or a native Qwen2-VL / Qwen2.5-VL / Qwen3-VL / "
            "SmolVLM checkpoint folder as published) or 'preset:NAME' (a randomly initialised preset of "
            "zreward_deploy.presets, or 'preset:tiny-FAMILY' for a tiny native one, e.g. tiny-qwen2_5_vl; built "
            "with `seed`)"
        ),
    )
    data: str = field(
        default="",
        metadata=help_text("dataset folder (train.jsonl, val.jsonl, test.jsonl and images; docs/data.md)"),
    )
    train_split: str = field(default="train", metadata=help_text("split to train on"))
    dimensions: list[str] | None = field(
        default=None,
        metadata=help_text(
            "rubric dimensions to train on (default: every dimension of the model's rubric that the data "
            "labels; for distillation every rubric dimension)"
        ),
    )

    # -- optimisation ----------------------------------------------------------------------------------
    max_steps: int = field(default=100, metadata=help_text("training steps (global batches) to run"))
    batch_size: int = field(
        default=16,
        metadata=help_text(
            "global batch size (items, or pairs for GDSO/GRPO), split evenly across processes; must be "
            "divisible by the number of processes"
        ),
    )
    learning_rate: float = field(default=1e-3, metadata=help_text("peak AdamW learning rate"))
    weight_decay: float = field(default=0.0, metadata=help_text("AdamW weight decay"))
    adam_beta1: float = field(default=0.9, metadata=help_text("AdamW β1"))
    adam_beta2: float = field(default=0.999, metadata=help_text("AdamW β2"))
    adam_epsilon: float = field(
        default=1e-8,
        metadata=help_text(
            "AdamW ε; Adam turns gradients far below it into updates far below the learning rate, and "
            "gradients far above it (even rounding noise on a parameter whose true gradient is 0) into "
            "updates of about the learning rate"
        ),
    )
    lr_scheduler: str = field(
        default="constant",
        metadata=help_text(f"learning-rate schedule after warm-up: one of {LR_SCHEDULERS}"),
    )
    warmup_steps: int = field(default=0, metadata=help_text("linear warm-up, in optimizer updates"))
    max_grad_norm: float = field(
        default=1.0, metadata=help_text("clip the global gradient norm to this (0 = no clipping)")
    )
    freeze_vision: bool = field(
        default=False,
        metadata=help_text(
            "keep the vision tower's weights as they are (no gradient, no optimizer state); the projector "
            "and the language model train"
        ),
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata=help_text(
            "recompute activations in the backward pass instead of keeping them (less memory, more "
            "compute); the gradients are the same"
        ),
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata=help_text(
            "split each process's share of the global batch into this many micro-batches (whole pairs "
            "for GDSO/GRPO, whole items otherwise), each with its own forward and backward, and sum their "
            "gradients into one clipped optimizer update: memory scales with the micro-batch, the update "
            "is the whole batch's to fp32 rounding (each micro-batch's loss is weighted by its share of "
            "the batch's normaliser: labelled entries, sequences or tokens). batch_size must be divisible "
            "by it times the number of processes. May change on resume unless lora_dropout > 0"
        ),
    )
    mixed_precision: str = field(
        default="no",
        metadata=help_text(
            f"one of {MIXED_PRECISIONS}: 'bf16' runs the vision tower, projector and language model "
            "under torch.autocast(bfloat16) (CPU or GPU) in training passes, rollout sampling and "
            "frozen-model passes; weights, gradients, optimizer state and the saved model stay fp32, and "
            "the score head (lm_head's score rows and their softmax), the reasoning tokens' log-softmax "
            "and every loss run in fp32. fp16 is not offered (it needs loss scaling)"
        ),
    )
    lora_r: int = field(
        default=0,
        metadata=help_text(
            "LoRA rank; 0 = off (full training). > 0: peft LoRA adapters on the language model's "
            "lora_target_modules, and only they train: the vision tower, projector, embeddings, norms "
            "and lm_head (with the score-token rows the score head reads) stay frozen, bit for bit. "
            "Checkpoints keep the adapters; output_dir/model is the merged, ordinary model (loads "
            f"without peft). Needs the `lora` extra: {LORA_EXTRA}"
        ),
    )
    lora_alpha: float = field(
        default=16.0,
        metadata=help_text("LoRA scale: an adapter adds (lora_alpha / lora_r) * B @ A to its layer's weight"),
    )
    lora_dropout: float = field(
        default=0.0,
        metadata=help_text(
            "dropout on the adapters' inputs during training (0 = none); its masks come from the global "
            "random generator, drawn per micro-batch"
        ),
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGET_MODULES),
        metadata=help_text(
            "the language model's linear layers that get adapters, by the last part of their module "
            "name (the vision tower's layers never do); the default, the attention and MLP projections, "
            "fits the package's Qwen2/Llama language models and the Qwen-VL and SmolVLM text models"
        ),
    )

    # -- logging, evaluation, checkpoints --------------------------------------------------------------
    log_every: int = field(default=1, metadata=help_text("write a metrics.jsonl line every N steps"))
    eval_every: int = field(
        default=0, metadata=help_text("evaluate on eval_split every N steps (0 = never during training)")
    )
    eval_split: str = field(default="val", metadata=help_text("split for evaluation during training"))
    eval_at_end: bool = field(default=False, metadata=help_text("evaluate on eval_split after the last step"))
    save_every: int = field(
        default=0, metadata=help_text("write a resumable checkpoint every N steps (0 = only at the end)")
    )
    keep_checkpoints: int = field(
        default=2, metadata=help_text("resumable checkpoints kept in output_dir/checkpoints (oldest deleted)")
    )
    progress: bool = field(
        default=True,
        metadata=help_text(
            "show progress (main process): a bar on a terminal; when stderr is not a terminal, one log "
            "line every 5% of the run and at least every 30 s"
        ),
    )
    tensorboard: bool = field(
        default=False, metadata=help_text("also write TensorBoard scalars to output_dir/tensorboard")
    )
    num_threads: int = field(
        default=0, metadata=help_text("torch intra-op threads per process (0 = leave torch's default)")
    )

    def __post_init__(self) -> None:
        require_finite(self)  # first: every subclass calls this before its own range checks
        require_at_least(self, 1, "max_steps", "batch_size", "log_every", "keep_checkpoints")
        require_at_least(
            self, 0, "warmup_steps", "eval_every", "save_every", "num_threads", "weight_decay",
            "max_grad_norm", "seed",
        )  # fmt: skip
        if not self.adam_epsilon > 0:
            raise ConfigError("adam_epsilon", f"must be > 0, got {self.adam_epsilon}")
        if not self.learning_rate > 0:
            raise ConfigError("learning_rate", f"must be > 0, got {self.learning_rate}")
        if self.learning_rate > 1:
            # AdamW moves each weight by up to about the learning rate per update, so above 1 no run
            # learns anything; far above it (~1e37) torch's Adam step even overflows with a raw error
            raise ConfigError("learning_rate", f"must be at most 1 for AdamW, got {self.learning_rate}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(name, f"must be in [0, 1), got {getattr(self, name)}")
        require_one_of("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        require_one_of("device", self.device, DEVICES)
        if not self.output_dir:
            raise ConfigError("output_dir", "must not be empty")
        if self.dimensions is not None and not self.dimensions:
            raise ConfigError("dimensions", "must be null (all) or a non-empty list")
        self._check_scale_options()

    def _check_scale_options(self) -> None:
        """gradient_accumulation_steps, mixed_precision and the LoRA fields (docs/training.md, "Real
        model sizes")."""
        require_at_least(self, 1, "gradient_accumulation_steps")
        k = self.gradient_accumulation_steps
        if self.batch_size % k:
            raise ConfigError(
                "gradient_accumulation_steps",
                f"{k} does not divide batch_size {self.batch_size}: each update's batch is split into "
                "equal micro-batches",
            )
        require_one_of("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        require_at_least(self, 0, "lora_r")
        if not self.lora_alpha > 0:
            raise ConfigError("lora_alpha", f"must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules or not all(
            isinstance(m, str) and m.strip() for m in self.lora_target_modules
        ):
            raise ConfigError("lora_target_modules", "must be a non-empty list of module names")
        if self.lora_r > 0 and importlib.util.find_spec("peft") is None:
            raise ConfigError("lora_r", f"LoRA needs peft, which is not installed: {LORA_EXTRA}")

    def resume_changeable(self) -> tuple[str, ...]:
        """The fields an earlier run in output_dir may be continued with other values of:
        :attr:`changeable_on_resume`, and ``gradient_accumulation_steps`` when no forward draws random
        numbers (``lora_dropout == 0``), since then the update is the same whatever the split (to fp32
        rounding, as for another number of processes)."""
        if self.lora_dropout == 0:
            return (*self.changeable_on_resume, "gradient_accumulation_steps")
        return self.changeable_on_resume

    # -- (de)serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump({"method": self.method, **self.to_dict()}, sort_keys=False)

    @classmethod
    def from_sources(
        cls: type[C],
        config_file: str | Path | None = None,
        overrides: Sequence[str] = (),
        **values: Any,
    ) -> C:
        """Build the config from a YAML file, then ``key=value`` overrides, then keyword values.

        Raises:
            ConfigError: an unknown key, a value of the wrong type, a malformed override, or a value
                ``__post_init__`` refuses.
        """
        merged: dict[str, Any] = {}
        if config_file is not None:
            merged.update(_read_yaml(config_file))
            # A file written by to_yaml() names its method; it must match the trainer it is given to.
            method = merged.pop("method", cls.method)
            if method != cls.method:
                raise ConfigError(str(config_file), f"is a {method!r} config, not {cls.method!r}")
        merged.update(parse_overrides(overrides))
        merged.update(values)
        return build_config(cls, merged)


@dataclass
class StudentConfig(TrainConfig):
    """The one-pass student trainers' shared fields (SFT, RISD): training on judgements without scores
    (the train split's preference file, docs/data.md "Preference records") with a pairwise term."""

    preference_weight: float = field(
        default=1.0,
        metadata=help_text(
            "λ: weight of the pairwise term on the judgements of train_split's preference file "
            "({split}.preferences.jsonl), added to the method's loss: λ times the mean over the step's "
            "judgements of the Bradley–Terry loss −[t log σ(μ_a − μ_b) + (1 − t) log σ(μ_b − μ_a)] on the "
            "student's μ of the judged dimension ('overall': the reward Σ_d w_d μ_d over the rubric), "
            "t = 1 (a preferred), 0 (b) or 0.5 (tie). 0 = the judgements are not read. Without a "
            "preference file nothing changes"
        ),
    )
    preference_batch_size: int = field(
        default=0,
        metadata=help_text(
            "judgements per step (global, split like batch_size over processes and micro-batches); "
            "0 = batch_size. Each judgement puts its two images in the step's forward pass. With "
            "judgements only (no record has a label or target) a step is this many judgements"
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 0, "preference_weight", "preference_batch_size")
        k = self.gradient_accumulation_steps
        if self.preference_batch_size % k:
            raise ConfigError(
                "preference_batch_size",
                f"{self.preference_batch_size} is not divisible by gradient_accumulation_steps {k}: each "
                "update's judgements are split into equal micro-batches",
            )

    @property
    def judgements_per_step(self) -> int:
        """The global number of judgements per step (``preference_batch_size``, or ``batch_size``)."""
        return self.preference_batch_size or self.batch_size


def _read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "config file does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(str(path), f"must hold a mapping of field: value, got {type(data).__name__}")
    return dict(data)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["beta=0.04", "dimensions=[realism]"]`` -> ``{"beta": 0.04, "dimensions": ["realism"]}``."""
    import yaml

    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(item, "overrides must look like key=value")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(item, f"value is not valid YAML: {exc}") from None
    return out


def build_config(cls: type[C], values: Mapping[str, Any]) -> C:
    """``cls(**values)`` after rejecting unknown keys and checking each value against its field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        close = {k: _closest(k, fields) for k in unknown}
        hints = "; ".join(f"{k!r}" + (f" (did you mean {c!r}?)" if c else "") for k, c in close.items())
        raise ConfigError(
            cls.method, f"unknown config key(s) {hints}; see `zreward train {cls.method} --help-config`"
        )
    hints = typing.get_type_hints(cls)
    checked = {name: _coerce(name, value, hints[name]) for name, value in values.items()}
    try:
        return cls(**checked)
    except TypeError as exc:  # e.g. a required field left out
        raise ConfigError(cls.method, str(exc)) from None


def _closest(key: str, fields: Mapping[str, Any]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.7)
    return match[0] if match else None


def _comma_list(name: str, text: str) -> list[Any]:
    """``"a,b"`` -> ``["a", "b"]``, each entry read as a YAML scalar (``1,8`` -> ``[1, 8]``); an empty entry
    is refused naming the field."""
    import yaml

    from zreward_deploy.cliargs import parse_list

    try:
        return parse_list(text, name, yaml.safe_load) or []
    except ZRewardInputError as exc:  # the trainers' configs raise their own subclass
        raise ConfigError(name, exc.reason) from None


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation (int, float, str, bool, list[...], X | None)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(name, value, option)
            except ConfigError as exc:
                errors.append(exc.reason)
        raise ConfigError(name, errors[0] if len(errors) == 1 else f"no allowed type fits {value!r}")
    if origin is list:
        if isinstance(value, str):  # dimensions=realism,alignment: the comma convention of every command
            value = _comma_list(name, value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f"must be a list, got {value!r}")
        (item_type,) = args or (Any,)
        return [_coerce(name, v, item_type) for v in value]
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads "1e-3" (no dot) as a string; accept what float() accepts
            try:
                return float(value)
            except ValueError:
                raise ConfigError(name, f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a string, got {value!r}")
        return value
    raise ConfigError(name, f"unsupported field type {annotation!r}")  # a config-class bug

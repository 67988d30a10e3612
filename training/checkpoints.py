"""Atomic checkpoints with exact resume: where they are, which one a run resumes from, writing and
restoring them.

``output_dir/checkpoints/step_XXXXXXXX/`` holds ``model/`` (``save_pretrained``: safetensors + tokenizer,
loadable by ``zreward eval``), ``optimizer.pt``, ``scheduler.pt``, ``trainer_state.json`` (step, data
order, method state), one ``rng_state_rank{r}.pt`` per process and any extra models (GDSO's reference
policy). A LoRA run's ``model/`` is the merged model and the adapters are kept beside it
(``lora_adapter.safetensors``): resume rebuilds the frozen base from the run's ``model`` and loads them. It is written to a temporary folder, every file is fsynced, ``trainer_state.json`` is written
last, and the folder is renamed into place (:func:`zreward_deploy.fileio.replace_dir`), so a crash leaves
either the old or the new checkpoint, never half of one; ``latest`` names the newest. A checkpoint is
*complete* when its ``step_*`` folder holds ``trainer_state.json`` (:func:`is_complete_checkpoint`).
``.pt`` files are loaded with ``torch.load(weights_only=True)``.

What resume tolerates (docs/training.md §4): a missing RNG file (a warning) and a ``latest`` that names a
missing or incomplete checkpoint (the newest complete older one is used, with a warning). A damaged
checkpoint file is an :class:`~zreward_deploy.errors.InvalidModelError` naming the file, never a raw
exception.

Every function that writes or restores takes the run's ``accelerate.Accelerator``: saving is collective
(every process writes its RNG state, and FSDP gathers the weights), restoring is per process.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zreward_deploy.errors import InvalidModelError
from zreward_deploy.fileio import atomic_write_text, read_json_object, replace_dir
from zreward_deploy.modeling import ZRewardModel, weights_from_file
from zreward_deploy.native import NativeRewardModel, native_weights_from_folder
from zreward_deploy.processing import ZRewardProcessor

from .config import ConfigError, TrainConfig
from .lora import ADAPTER_FILE, has_lora, is_adapter_weight

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
MODEL_DIR = "model"  # the weights' folder, in a checkpoint and in output_dir (the final model)
TRAINER_STATE = "trainer_state.json"

# the trainers' logger (`zreward train` prints its warnings)
logger = logging.getLogger("zreward_deploy.training")

Warn = Callable[[str], None]


def no_warning(message: str) -> None:
    """The ``warn`` of the processes other than the main one: one copy of each warning per run."""


# --------------------------------------------------------------------------------------------------
# Which checkpoint
# --------------------------------------------------------------------------------------------------


def find_resume_checkpoint(cfg: TrainConfig, warn: Warn = logger.warning) -> Path | None:
    """The checkpoint ``cfg.resume`` asks for: the latest one in ``output_dir`` ('auto', if any), none
    ('never'), or an explicit folder (which must hold a complete checkpoint).

    With 'auto', a ``latest`` that names a missing or incomplete checkpoint (deleted by hand, or a file
    system that lost the rename) falls back to the newest complete checkpoint *older* than the one it
    names, and ``warn`` says so. Newer ``step_*`` folders are not considered: after ``resume=never`` they
    may be left over from an earlier run with another config.
    """
    if cfg.resume == "never":
        return None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        if not is_complete_checkpoint(path):
            raise ConfigError("resume", f"{path} is not a checkpoint folder (no {TRAINER_STATE})")
        return path
    root = Path(cfg.output_dir) / CHECKPOINT_DIR
    latest = root / LATEST_FILE
    if not latest.is_file():
        return None
    name = latest.read_text(encoding="utf-8", errors="replace").strip()
    path = root / name
    named_step = checkpoint_step(path)
    if named_step is not None and is_complete_checkpoint(path):
        return path
    problem = "is missing" if not path.exists() else f"is incomplete (no {TRAINER_STATE})"
    if named_step is None:
        problem = "is not a checkpoint name"
    older = complete_checkpoints(root, below=named_step)
    if not older:
        raise ConfigError(
            "resume",
            f"{latest} names {name!r}, which {problem}, and {root} holds no older complete checkpoint; "
            "pass resume=never to start over",
        )
    warn(
        f"{latest} names {name!r}, which {problem}; resuming from the newest complete checkpoint, {older[0]}"
    )
    return older[0]


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``step_XXXXXXXX`` checkpoint folder name, ``None`` for any other name."""
    match = re.fullmatch(r"step_(\d+)", path.name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint folder is complete when it holds ``trainer_state.json``: :func:`save_checkpoint`
    writes that file last, after every process's files, inside the temporary folder it then renames.
    (Damage after the fact is what :func:`load_checkpoint` detects.)"""
    return path.is_dir() and (path / TRAINER_STATE).is_file()


def complete_checkpoints(root: Path, below: int | None = None) -> list[Path]:
    """The complete ``step_*`` checkpoints in ``root``, newest first; with ``below``, only those of
    earlier steps."""
    found = []
    for p in root.glob("step_*"):
        step = checkpoint_step(p)
        if step is not None and (below is None or step < below) and is_complete_checkpoint(p):
            found.append((step, p))
    return [p for _, p in sorted(found, reverse=True)]


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors, lists and numbers only (loadable with ``weights_only=True``)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, inner, gauss = state["python"]
    random.setstate((version, tuple(inner), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrapped_state_dict(accelerator: Any, wrapped: nn.Module) -> dict[str, torch.Tensor]:
    """The inner :class:`ZRewardModel`'s full state dict from the prepared
    :class:`~.models.TrainingForward` (``accelerator.get_state_dict`` gathers FSDP shards; on DDP it is
    the plain state dict)."""
    full = accelerator.get_state_dict(wrapped)
    return {k[len("model.") :]: v for k, v in full.items() if k.startswith("model.")}


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_checkpoint(
    accelerator: Any,
    output_dir: Path,
    step: int,
    wrapped: nn.Module,
    model: ZRewardModel,
    processor: ZRewardProcessor,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: Mapping[str, Any],
    keep: int,
    extra_models: Mapping[str, ZRewardModel] | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
    adapter: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a resumable checkpoint for ``step`` into ``output_dir/checkpoints`` atomically, keeping the
    newest ``keep``; every process must call it.

    Args:
        wrapped: the prepared :class:`~.models.TrainingForward` (its weights are gathered from it).
        model, processor: the inner model (for its config) and its processor.
        state: JSON-able trainer state (``step`` is added; include the sampler's ``state_dict``).
        extra_models: further models to keep (name -> model), e.g. GDSO's π_ref.
        weights: the model's full state dict when the caller already gathered it (to check it); a LoRA
            run's merged one.
        adapter: a LoRA run's adapter weights (written to :data:`~.lora.ADAPTER_FILE`).
    """
    is_main = accelerator.is_main_process
    root = output_dir / CHECKPOINT_DIR
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if weights is None:
        weights = unwrapped_state_dict(accelerator, wrapped)  # collective under FSDP: every process calls it
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_state_rank{accelerator.process_index}.pt")
    if is_main:
        model.save_pretrained(tmp / MODEL_DIR, state_dict=dict(weights))
        processor.save_pretrained(tmp / MODEL_DIR)
        for name, extra in (extra_models or {}).items():
            extra.save_pretrained(tmp / name)
        if adapter is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in adapter.items()}, tmp / ADAPTER_FILE)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()  # every process's RNG file is written
    if is_main:
        # written last: its presence is what makes a checkpoint complete (is_complete_checkpoint)
        meta = {"step": step, "world_size": accelerator.num_processes, **state}
        atomic_write_text(tmp / TRAINER_STATE, json.dumps(meta, indent=2) + "\n")
        replace_dir(tmp, final)
        atomic_write_text(root / LATEST_FILE, final.name)
        # only checkpoints of this run's past count: after resume=never (or resuming from an earlier
        # step) higher-numbered folders are another timeline's, and deleting by position would remove
        # the checkpoint just written
        kept = sorted(
            (s, p) for p in root.glob("step_*") if p.is_dir() and (s := checkpoint_step(p)) is not None
        )
        kept = [p for s, p in kept if s <= step]
        for old in kept[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------------------------------
# Reading and restoring
# --------------------------------------------------------------------------------------------------


def read_trainer_state(path: Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint (with an integer ``step``).

    Raises:
        InvalidModelError: naming the file when it is missing, not JSON, or has no step.
    """
    file = path / TRAINER_STATE
    if not file.exists():
        raise damaged_checkpoint(file, "is missing: the checkpoint is incomplete")
    try:
        state = read_json_object(file, InvalidModelError)
    except InvalidModelError as exc:  # again, with the hint of an older checkpoint
        raise damaged_checkpoint(file, exc.reason) from None
    if type(state.get("step")) is not int or state["step"] < 0:
        raise damaged_checkpoint(file, "holds no step number")
    return state


def damaged_checkpoint(file: Path, reason: str) -> InvalidModelError:
    """The error for a damaged checkpoint file; names an older complete checkpoint to resume from, if any
    (it is not loaded instead: the user asked for this one)."""
    checkpoint = next((p for p in file.parents if checkpoint_step(p) is not None), None)
    hint = ""
    if checkpoint is not None:
        older = complete_checkpoints(checkpoint.parent, below=checkpoint_step(checkpoint))
        if older:
            hint = f"; an older complete checkpoint exists: resume={older[0]} continues from it"
    return InvalidModelError(str(file), f"damaged checkpoint file: {reason}{hint}")


def _torch_load(file: Path) -> Any:
    """``torch.load(weights_only=True)``, any failure an :class:`InvalidModelError` naming the file."""
    if not file.is_file():
        raise damaged_checkpoint(file, "is missing")
    try:
        return torch.load(file, weights_only=True)
    except Exception as exc:  # unpickling, zip and EOF errors all mean the same: unreadable
        # torch's own messages for these run to several lines and suggest weights_only=False: not shown
        reason = "is empty" if file.stat().st_size == 0 else f"cannot be read ({type(exc).__name__})"
        raise damaged_checkpoint(
            file, f"{reason}; it is not a file torch.save wrote, or it was cut short"
        ) from None


def _load_weights(target: ZRewardModel, folder: Path) -> None:
    """Load a checkpoint's ``*.safetensors`` into ``target``; every problem names the file."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise damaged_checkpoint(folder, "holds no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        if f.stat().st_size == 0:
            raise damaged_checkpoint(f, "is empty")
        try:
            part = load_file(f)
        except Exception as exc:  # SafetensorError (truncated, bad header) derives from Exception only
            raise damaged_checkpoint(f, f"is not a readable safetensors file ({exc})") from None
        bad = non_finite_tensors(part)
        if bad:  # a model that would score NaN: refused here rather than trained on
            raise damaged_checkpoint(f, f"holds NaN or infinite values in {bad[:3]}")
        weights.update(part)
    if isinstance(target, NativeRewardModel):
        # the checkpoint's own weight names, mapped onto the modules by the HF class's loader
        state = native_weights_from_folder(target, folder)
    else:  # the files' weight names are the same on every transformers line; the modules' are not
        state = weights_from_file(target, weights)
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise damaged_checkpoint(
            folder, f"weights do not fit the model ({str(exc).splitlines()[0]})"
        ) from None
    # a tied lm_head is not stored separately; anything else missing is a broken checkpoint
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise damaged_checkpoint(folder, f"checkpoint weights do not match ({missing[:3]}, {unexpected[:3]})")


def _load_adapter(target: nn.Module, file: Path) -> None:
    """Load a LoRA checkpoint's adapters into ``target`` (adapters injected); every adapter weight of
    ``target`` must be in the file, and nothing else; every problem names the file."""
    from safetensors.torch import load_file

    if not file.is_file() or file.stat().st_size == 0:
        raise damaged_checkpoint(
            file, "is missing or empty: a LoRA run's checkpoint keeps its adapters there"
        )
    try:
        adapter = load_file(file)
    except Exception as exc:  # SafetensorError (truncated, bad header) derives from Exception only
        raise damaged_checkpoint(file, f"is not a readable safetensors file ({exc})") from None
    bad = non_finite_tensors(adapter)
    if bad:
        raise damaged_checkpoint(file, f"holds NaN or infinite values in {bad[:3]}")
    expected = {k for k in target.state_dict() if is_adapter_weight(k)}
    if set(adapter) != expected:
        missing, unexpected = sorted(expected - set(adapter)), sorted(set(adapter) - expected)
        raise damaged_checkpoint(
            file, f"does not hold this run's adapters (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    try:
        target.load_state_dict(adapter, strict=False)
    except RuntimeError as exc:  # shape mismatches (another lora_r)
        raise damaged_checkpoint(
            file, f"adapters do not fit the model ({str(exc).splitlines()[0]})"
        ) from None


def _load_into(target: Any, file: Path) -> None:
    """``target.load_state_dict(torch.load(file))`` (an optimizer or a scheduler)."""
    state = _torch_load(file)
    try:
        target.load_state_dict(state)
    except Exception as exc:  # a readable file of something else: wrong keys, sizes or types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise damaged_checkpoint(file, f"does not fit this run's {type(target).__name__} ({first})") from None


def load_checkpoint(
    accelerator: Any,
    path: Path,
    model: ZRewardModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra_models: Mapping[str, ZRewardModel] | None = None,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler, extra models and this process's RNG state from ``path``
    (before ``accelerate.prepare``). Returns the trainer state (with ``step``).

    Raises:
        InvalidModelError: naming the damaged file (truncated or empty safetensors, weights with NaN,
            unreadable ``.pt`` files, invalid ``trainer_state.json``).

    A missing RNG file, or a checkpoint written by another number of processes, only gives a warning:
    the run continues, but draws from the global random generators differ from an uninterrupted run.
    """
    warn = logger.warning
    state = read_trainer_state(path)
    if has_lora(model):  # the frozen base is the run's `model` already; model/ holds the merged weights
        _load_adapter(model, path / ADAPTER_FILE)
    else:
        _load_weights(model, path / MODEL_DIR)
    for name, extra in (extra_models or {}).items():
        _load_weights(extra, path / name)
    _load_into(optimizer, path / "optimizer.pt")
    _load_into(scheduler, path / "scheduler.pt")
    rng_file = path / f"rng_state_rank{accelerator.process_index}.pt"
    consequence = (
        "draws from the global random generators after resume (anything not seeded per step) will "
        "differ from an uninterrupted run"
    )
    world_size = accelerator.num_processes
    if state.get("world_size") != world_size:
        if accelerator.is_main_process:
            warn(
                f"checkpoint {path} was written by {state.get('world_size')} process(es), this run has "
                f"{world_size}: RNG states are not restored; {consequence}"
            )
    elif not rng_file.is_file():
        warn(f"checkpoint {path} has no RNG state ({rng_file.name}); {consequence}")
    else:
        rng = _torch_load(rng_file)
        try:
            _set_rng_state(rng)
        except Exception as exc:  # readable, but not an RNG state this code wrote
            raise damaged_checkpoint(rng_file, f"is not an RNG state ({type(exc).__name__})") from None
    return state

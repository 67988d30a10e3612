"""Protocol v1 of ``zreward serve`` (docs/serving.md is the contract): requests parsed into items, items'
scores written back.

Two bodies on ``POST /v1/score``, one response:

- JSON (``application/json``): ``{"protocol_version": "1", "requests": [item, ...], "options": {...}}``.
  An item is ``{"text", "image_b64", "metadata", "request_id", "idempotency_key", ...}`` or UniRL's form
  ``{"history": [{"text", "image_b64"}], "required_rewards": [...], ...}`` (a superset of UniRL's
  ``reward_service/schemas.py``, so its remote backend points at this server unchanged).
- safetensors (``application/x-safetensors``): a tensor ``images`` uint8 ``[B, H, W, 3]``, and the JSON
  above (without ``image_b64``) as the string ``request`` in the file's ``__metadata__``. No PNG encode or
  decode on the trainer's hot path; the format holds no code.

Nothing here unpickles; every image is checked against the pixel limit from its header (PNG/JPEG) or from
the safetensors header, before any pixel is decoded. A bad item becomes its own error
(:class:`~zreward_deploy.errors.ZRewardInputError` naming the item's index in the request), never a 0;
a malformed request as a whole is a :class:`ProtocolError` with an HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidImageError, InvalidPromptError, UnknownDimensionError, ZRewardInputError
from ..imagefile import check_image_size
from ..scoring import BaseScorer, item_call
from .config import ServeConfig

PROTOCOL_VERSION = "1"
SAFETENSORS_TYPE = "application/x-safetensors"
RETURN_LEVELS = ("score", "dims", "probs")
# identity fields of an item echoed back in `identities` (UniRL's RewardIdentity)
IDENTITY_FIELDS = ("request_id", "sample_id", "group_id", "source_rank", "policy_version", "idempotency_key")
# the safetensors header is JSON; a real one for one tensor is ~100 bytes
MAX_SAFETENSORS_HEADER = 1 << 20


class ProtocolError(Exception):
    """A request refused as a whole: ``status`` is the HTTP status (400, 413, 415), ``message`` the reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ScoreOptions:
    """``options`` of a request: the dimensions scored, what is returned, the deadline."""

    dims: tuple[str, ...]
    returns: frozenset[str]
    deadline_ms: float


@dataclass
class Item:
    """One (image, prompt) of a request, decoded to the model's resolution, or the error that refused it."""

    index: int
    prompt: str | None = None
    image: torch.Tensor | None = None  # [3, S, S] float in [0, 1], as BaseScorer.score's lazy decode makes it
    error: ZRewardInputError | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None


@dataclass
class ItemScore:
    """The scores of one item: reward, per-dimension mean and std, distributions (``[D, K]``)."""

    reward: float
    mean: list[float]
    std: list[float]
    probs: list[list[float]]


Outcome = ItemScore | ZRewardInputError


# --------------------------------------------------------------------------------------------------
# Model identity
# --------------------------------------------------------------------------------------------------

WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".engine", ".plan", ".bin")


def checkpoint_sha256(scorer: BaseScorer, model_dir: str | os.PathLike | None = None) -> str:
    """sha256 of the weights: the weight files of ``model_dir`` (names and bytes, sorted), else the
    parameters of an in-memory torch model (names, dtypes, shapes and bytes). ``"unknown"`` when neither."""
    digest = hashlib.sha256()
    if model_dir is not None:
        files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        for path in files:
            digest.update(str(path.relative_to(model_dir)).encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        if files:
            return digest.hexdigest()
    model = getattr(scorer, "model", None)
    if isinstance(model, torch.nn.Module):
        for name, tensor in sorted(model.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()
    return "unknown"


def model_identity(
    scorer: BaseScorer, model_dir: str | os.PathLike | None = None, name: str | None = None
) -> dict[str, Any]:
    """The identity block of every response: name, checkpoint sha256, backend, dtype, score values,
    rubric dimensions (and which of them the model was trained on)."""
    model = getattr(scorer, "model", None)
    if isinstance(model, torch.nn.Module):
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    else:
        dtype = str(getattr(scorer, "dtype", "unknown")).removeprefix("torch.")
    config = scorer.config
    sha = checkpoint_sha256(scorer, model_dir)
    if name is None:
        name = Path(model_dir).resolve().name if model_dir is not None else f"{config.model_type}-in-memory"
    return {
        "name": name,
        "checkpoint_sha256": sha,
        "backend": scorer.backend,
        "dtype": dtype,
        "score_values": [float(v) for v in config.get_score_scale().values],
        "dimensions": [d.name for d in config.get_rubric().dimensions],
        "default_dimensions": scorer.dimension_names(None),
        "version": f"{name}@{sha[:12]}",
    }


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


def parse_options(raw: Any, scorer: BaseScorer, config: ServeConfig) -> ScoreOptions:
    """``options`` -> :class:`ScoreOptions` (400 on an unknown dimension or return level)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ProtocolError(400, f"options: expected an object, got {type(raw).__name__}")
    dims = raw.get("dims")
    if dims is not None and (not isinstance(dims, list) or not all(isinstance(d, str) for d in dims)):
        raise ProtocolError(400, "options.dims: expected a list of dimension names")
    try:
        names = tuple(scorer.dimension_names(dims))
    except UnknownDimensionError as exc:
        raise ProtocolError(400, f"options.dims: {exc}") from None
    except ZRewardInputError as exc:
        raise ProtocolError(400, f"options.dims: {exc}") from None
    returns = raw.get("return", ["score", "dims"])
    if isinstance(returns, str):
        returns = [returns]
    if not isinstance(returns, list) or not returns or any(r not in RETURN_LEVELS for r in returns):
        raise ProtocolError(
            400, f"options.return: expected one or more of {list(RETURN_LEVELS)}, got {returns!r}"
        )
    deadline = raw.get("deadline_ms", config.default_deadline_ms)
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0:
        raise ProtocolError(400, f"options.deadline_ms: expected a positive number, got {deadline!r}")
    if not math.isfinite(deadline):
        raise ProtocolError(400, "options.deadline_ms: must be finite")
    levels = (
        set(returns) | {"score"} | ({"dims"} if "probs" in returns else set())
    )  # each level adds to the one before
    return ScoreOptions(dims=names, returns=frozenset(levels), deadline_ms=float(deadline))


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def decode_image_b64(data: Any, item: int, max_pixels: int) -> Any:
    """Base64 PNG or JPEG (optionally a ``data:image/...;base64,`` URL) -> a decoded PIL image.

    The pixel limit is checked from the header, before decoding (decompression bombs are refused); any
    failure is an :class:`InvalidImageError` naming ``item``.
    """
    from PIL import Image

    if not isinstance(data, str):
        raise InvalidImageError(item, f"image_b64 must be a base64 string, got {type(data).__name__}")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError(item, "image_b64 is not valid base64") from None
    if not raw:
        raise InvalidImageError(item, "image_b64 is empty")
    try:
        with warnings.catch_warnings():
            # scoped: PIL's bomb warning becomes an error here only, PIL's globals are untouched
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=("PNG", "JPEG"))
        check_image_size(item, image.size, max_pixels)
        image.load()
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(item, f"refused as a decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise InvalidImageError(item, "image_b64 is not a PNG or JPEG image") from None
    except Exception as exc:  # a decoder's own exception type (truncated data, bad chunks, ...)
        raise InvalidImageError(item, f"cannot be decoded ({type(exc).__name__}: {exc})") from None
    return image


def _model_image(scorer: BaseScorer, image: Any, item: int) -> torch.Tensor:
    """A decoded image -> ``[3, S, S]`` exactly as ``BaseScorer.score`` decodes it (batch invariance)."""
    return item_call(scorer.processor.model_image, image, item, InvalidImageError)


def _check_prompt(scorer: BaseScorer, text: Any, item: int) -> str:
    item_call(scorer.processor.prompt_ids, text, item, InvalidPromptError)
    return text


# --------------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------------


def load_json(body: bytes) -> Any:
    """The JSON body, or 400 (a pickle or any other non-JSON body lands here: it is never unpickled)."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(400, f"the body is not valid JSON ({exc.__class__.__name__}: {exc})") from None


def _item_fields(raw: Any, index: int, reward_name: str) -> tuple[Any, Any, dict[str, Any], str | None]:
    """One request entry -> (text, image_b64, identity, idempotency_key); raises per-item errors."""
    if not isinstance(raw, dict):
        raise ZRewardInputError(index, f"expected an object, got {type(raw).__name__}")
    if "history" in raw:  # UniRL: the turn that carries the image is scored against its text
        history = raw["history"]
        if not isinstance(history, list) or not history or not all(isinstance(t, dict) for t in history):
            raise ZRewardInputError(index, "history must be a non-empty list of {text, image_b64} objects")
        turns = [t for t in history if "image_b64" in t or "image_ipc" in t]
        if not turns:
            raise InvalidImageError(index, "no turn of the history carries image_b64")
        turn = turns[-1]
        if turn.get("image_ipc") is not None:
            raise InvalidImageError(index, "image_ipc (CUDA IPC) is not served; send image_b64")
        text, image = turn.get("text"), turn.get("image_b64")
        required = raw.get("required_rewards")
        if required is not None and (
            not isinstance(required, list) or any(name != reward_name for name in required)
        ):
            raise ZRewardInputError(
                index, f"required_rewards {required!r}: this server serves only {[reward_name]}"
            )
    else:
        text, image = raw.get("text"), raw.get("image_b64")
    identity = {k: raw[k] for k in IDENTITY_FIELDS if raw.get(k) is not None}
    key = raw.get("idempotency_key")
    if key is not None and not isinstance(key, str):
        raise ZRewardInputError(index, "idempotency_key must be a string")
    return text, image, identity, key


def parse_json_request(
    body: bytes, scorer: BaseScorer, config: ServeConfig
) -> tuple[list[Item], ScoreOptions, dict[str, Any]]:
    """A protocol-v1 JSON body -> (items, options, the parsed body). Blocking (decodes images): run it off
    the event loop."""
    payload = load_json(body)
    if not isinstance(payload, dict):
        raise ProtocolError(400, f"expected a JSON object, got {type(payload).__name__}")
    _check_version(payload.get("protocol_version", PROTOCOL_VERSION))
    if payload.get("grad_mode"):
        raise ProtocolError(
            400, "grad_mode is not served over HTTP; use Scorer.score_tensor in-process (docs/serving.md)"
        )
    entries = payload.get("requests")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError(400, "requests: expected a non-empty list of items")
    _check_count(len(entries), config)
    options = parse_options(payload.get("options"), scorer, config)
    items = []
    for i, raw in enumerate(entries):
        item = Item(index=i)
        try:
            text, image_b64, item.identity, item.idempotency_key = _item_fields(raw, i, config.reward_name)
            item.prompt = _check_prompt(scorer, text, i)
            if image_b64 is None:
                raise InvalidImageError(i, "image_b64 is missing")
            item.image = _model_image(scorer, decode_image_b64(image_b64, i, config.max_image_pixels), i)
        except ZRewardInputError as exc:
            item.error, item.image = exc, None
        items.append(item)
    return items, options, payload


def parse_safetensors_request(
    body: bytes, scorer: BaseScorer, config: ServeConfig
) -> tuple[list[Item], ScoreOptions, dict[str, Any]]:
    """A safetensors body (``images`` uint8 ``[B, H, W, 3]``; the request JSON in ``__metadata__["request"]``)
    -> (items, options, the request JSON). The header is checked (dtype, shape, pixel limit, offsets)
    before the tensor is read."""
    from safetensors.numpy import load as load_safetensors

    if len(body) < 8:
        raise ProtocolError(400, "safetensors body shorter than its 8-byte header length")
    n = int.from_bytes(body[:8], "little")
    if n > min(MAX_SAFETENSORS_HEADER, len(body) - 8):
        raise ProtocolError(400, f"safetensors header length {n} is larger than the body or the 1 MiB limit")
    header = load_json(body[8 : 8 + n])
    if not isinstance(header, dict):
        raise ProtocolError(400, "safetensors header is not a JSON object")
    meta = header.get("__metadata__") or {}
    request = load_json(meta.get("request", "{}").encode()) if isinstance(meta, dict) else None
    if not isinstance(request, dict):
        raise ProtocolError(400, "__metadata__.request must hold the request JSON object (a string)")
    _check_version(request.get("protocol_version", PROTOCOL_VERSION))
    spec = header.get("images")
    if not isinstance(spec, dict):
        raise ProtocolError(400, "the safetensors body has no tensor named 'images'")
    shape = spec.get("shape")
    if spec.get("dtype") != "U8" or not isinstance(shape, list) or len(shape) != 4 or shape[3] != 3:
        raise ProtocolError(400, f"images must be uint8 [B, H, W, 3], got {spec.get('dtype')} {shape}")
    b, h, w, _ = shape
    _check_count(b, config)
    if b < 1:
        raise ProtocolError(400, "images holds no image")
    try:
        check_image_size("images", (w, h), config.max_image_pixels)
    except InvalidImageError as exc:
        raise ProtocolError(413, str(exc)) from None
    entries = request.get("requests")
    if not isinstance(entries, list) or len(entries) != b:
        raise ProtocolError(
            400,
            f"__metadata__.request.requests must list one item per image ({b}), got "
            f"{len(entries) if isinstance(entries, list) else type(entries).__name__}",
        )
    options = parse_options(request.get("options"), scorer, config)
    try:
        images = load_safetensors(body)["images"]
    except Exception as exc:  # safetensors' own errors: bad offsets, truncated data
        raise ProtocolError(400, f"not a valid safetensors body ({type(exc).__name__}: {exc})") from None
    items = []
    for i, raw in enumerate(entries):
        item = Item(index=i)
        try:
            text, image_b64, item.identity, item.idempotency_key = _item_fields(
                {"image_b64": None, **raw} if isinstance(raw, dict) else raw, i, config.reward_name
            )
            if image_b64 is not None:
                raise ZRewardInputError(i, "image_b64 given in a safetensors request; the image is images[i]")
            item.prompt = _check_prompt(scorer, text, i)
            item.image = _model_image(scorer, images[i], i)
        except ZRewardInputError as exc:
            item.error, item.image = exc, None
        items.append(item)
    return items, options, request


def parse_prompt_image_lists(
    prompts: Any, images: Any, scorer: BaseScorer, config: ServeConfig
) -> list[Item]:
    """The compatibility routes' lists (``prompts`` and base64 ``images``) -> items. One prompt for all
    images is accepted, as ``Scorer.score`` accepts it."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(images, list) or not images:
        raise ProtocolError(400, "images: expected a non-empty list of base64 PNG/JPEG strings")
    if not isinstance(prompts, list) or len(prompts) not in (1, len(images)):
        raise ProtocolError(400, f"prompts: expected one prompt per image ({len(images)}) or one for all")
    _check_count(len(images), config)
    if len(prompts) == 1:
        prompts = prompts * len(images)
    items = []
    for i, (text, image_b64) in enumerate(zip(prompts, images, strict=True)):
        item = Item(index=i)
        try:
            item.prompt = _check_prompt(scorer, text, i)
            item.image = _model_image(scorer, decode_image_b64(image_b64, i, config.max_image_pixels), i)
        except ZRewardInputError as exc:
            item.error = exc
        items.append(item)
    return items


def _check_version(version: Any) -> None:
    if str(version) != PROTOCOL_VERSION:
        raise ProtocolError(
            400, f"protocol_version {version!r} is not served; this server speaks {PROTOCOL_VERSION!r}"
        )


def _check_count(n: int, config: ServeConfig) -> None:
    if n > config.max_images_per_request:
        raise ProtocolError(
            413, f"{n} images in one request, over the limit of {config.max_images_per_request}; split it"
        )


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


def error_text(exc: BaseException) -> str:
    """``"<class>: <message>"``, the per-item error of every route."""
    return f"{type(exc).__name__}: {exc}"


def v1_response(
    outcomes: Sequence[Outcome],
    items: Sequence[Item],
    options: ScoreOptions,
    identity: dict[str, Any],
    reward_name: str,
    cached: Sequence[bool],
) -> dict[str, Any]:
    """The protocol-v1 response, one entry per item in request order (docs/serving.md)."""
    results, probs, errors, scores = [], [], [], []
    for outcome in outcomes:
        if isinstance(outcome, ItemScore):
            entry: dict[str, float] = {"score": outcome.reward}
            if "dims" in options.returns:
                for d, name in enumerate(options.dims):
                    entry[name] = outcome.mean[d]
                    entry[f"{name}_var"] = outcome.std[d] ** 2
            results.append({reward_name: entry})
            probs.append({name: outcome.probs[d] for d, name in enumerate(options.dims)})
            errors.append({})
            scores.append(outcome.reward)
        else:
            results.append({})
            probs.append(None)
            errors.append({reward_name: error_text(outcome)})
            scores.append(None)
    response: dict[str, Any] = {
        "protocol_version": PROTOCOL_VERSION,
        "model": identity,
        "reward_name": reward_name,
        "dimensions": list(options.dims),
        "results": results,
        "errors": errors,
        "scores": scores,
        "identities": [{**item.identity, "scorer_version": identity["version"]} for item in items],
        "cached": list(cached),
    }
    if "probs" in options.returns:
        response["probs"] = probs
    return response


def item_scores(result: Any, rows: Sequence[int]) -> list[Outcome]:
    """Rows of a :class:`~zreward_deploy.scoring.ScoreResult` -> outcomes (the result's per-item errors
    kept as they are; their item index is the batch row, renamed by the caller)."""
    probs = result.probs.detach().float().cpu().numpy()
    mean = result.mean.detach().float().cpu().numpy()
    std = result.std.detach().float().cpu().numpy()
    reward = result.reward.detach().float().cpu().numpy()
    out: list[Outcome] = []
    for r in rows:
        if r in result.errors:
            out.append(result.errors[r])
        elif not (
            np.isfinite(probs[r]).all() and np.isfinite(reward[r])
        ):  # never a NaN score without an error
            out.append(ZRewardInputError(r, "the model produced non-finite scores"))
        else:
            out.append(
                ItemScore(
                    reward=float(reward[r]),
                    mean=[float(x) for x in mean[r]],
                    std=[float(x) for x in std[r]],
                    probs=[[float(x) for x in row] for row in probs[r]],
                )
            )
    return out

"""``ZRewardClient`` / ``AsyncZRewardClient``: call ``zreward serve`` from a trainer (docs/serving.md).

What a trainer needs from a reward client, and what the clients in the wild got wrong (unbounded retries
that stall a run for hours, a 500 or a short list passed on as scores, a silent 0 on error):

- a timeout on every call and a bounded number of retries with exponential backoff (503 honours
  ``Retry-After``); every item carries an idempotency key, so a retry of a request the server already
  scored costs no forward pass;
- every response verified before it is returned: status 200, one entry per item, finite scores, the
  model identity present and unchanged since the first response (a model swapped under a running
  experiment is an error, not a drift);
- images sent lossless: uint8 ``[B, H, W, 3]`` in a safetensors body when all have one size (no PNG
  encoding on the hot path), else PNG in JSON. Never pickle.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MissingDependencyError
from .protocol import PROTOCOL_VERSION, SAFETENSORS_TYPE

RETRY_STATUSES = (500, 502, 503, 504)


class ZRewardClientError(RuntimeError):
    """The server could not be reached within the retries, or answered something that is not a valid
    protocol-v1 response (wrong length, non-finite score, missing or changed model identity)."""


@dataclass
class ClientResult:
    """Scores of B items. ``reward[i]`` and ``dims[name][i]`` are NaN exactly where ``errors`` has ``i``."""

    reward: np.ndarray
    dims: dict[str, np.ndarray]
    errors: dict[int, str]
    model: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    def raise_for_errors(self) -> ClientResult:
        """Raise :class:`ZRewardClientError` naming the failed items, if any (a trainer must not take a
        NaN for a reward); else return self."""
        if self.errors:
            first = list(self.errors.items())[:5]
            raise ZRewardClientError(f"{len(self.errors)} item(s) failed: {first}")
        return self


def to_uint8_hwc(image: Any) -> np.ndarray:
    """One image (PIL, numpy HWC uint8 or float in [0, 1], torch CHW uint8 or float in [0, 1]) -> uint8 HWC."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    try:
        import torch

        if isinstance(image, torch.Tensor):
            t = image.detach()
            if t.ndim != 3 or t.shape[0] not in (1, 3):
                raise ValueError(f"torch images must be [3, H, W], got {tuple(t.shape)}")
            if t.is_floating_point():
                t = (t.float() * 255).round().clamp(0, 255).to(torch.uint8)
            return t.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy()
    except ModuleNotFoundError:
        pass
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"numpy images must be [H, W, 3], got {array.shape}")
    if array.dtype != np.uint8:
        array = (array.astype(np.float32) * 255).round().clip(0, 255).astype(np.uint8)
    return array


def encode_request(
    images: Sequence[Any],
    prompts: Sequence[str],
    dims: Sequence[str] | None = None,
    returns: Sequence[str] = ("score", "dims"),
    deadline_ms: float | None = None,
    metadata: Sequence[dict[str, Any]] | None = None,
    idempotency_keys: Sequence[str] | None = None,
    binary: bool | None = None,
) -> tuple[bytes, str]:
    """(body, content type) of a protocol-v1 request. ``binary=None``: safetensors when every image has
    the same size, else JSON with PNG."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    arrays = [to_uint8_hwc(im) for im in images]
    keys = list(idempotency_keys) if idempotency_keys is not None else [uuid.uuid4().hex for _ in arrays]
    options: dict[str, Any] = {"return": list(returns)}
    if dims is not None:
        options["dims"] = list(dims)
    if deadline_ms is not None:
        options["deadline_ms"] = deadline_ms
    entries = []
    for i, prompt in enumerate(prompts):
        entry: dict[str, Any] = {"text": prompt, "idempotency_key": keys[i]}
        if metadata is not None:
            entry["metadata"] = metadata[i]
        entries.append(entry)
    if binary is None:
        binary = len({a.shape for a in arrays}) == 1
    request = {"protocol_version": PROTOCOL_VERSION, "requests": entries, "options": options}
    if binary:
        from safetensors.numpy import save

        body = save(
            {"images": np.ascontiguousarray(np.stack(arrays))}, metadata={"request": json.dumps(request)}
        )
        return body, SAFETENSORS_TYPE
    from PIL import Image

    for entry, array in zip(entries, arrays, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        entry["image_b64"] = base64.b64encode(buffer.getvalue()).decode()
    return json.dumps(request).encode(), "application/json"


def decode_response(payload: Any, n: int, pinned: dict[str, Any] | None) -> ClientResult:
    """Verify a protocol-v1 response for ``n`` items and read it (see the module docstring)."""
    if not isinstance(payload, dict):
        raise ZRewardClientError(f"the response is not a JSON object: {str(payload)[:200]}")
    model = payload.get("model")
    if not isinstance(model, dict) or not model.get("checkpoint_sha256"):
        raise ZRewardClientError("the response carries no model identity")
    if pinned is not None and model["checkpoint_sha256"] != pinned["checkpoint_sha256"]:
        raise ZRewardClientError(
            f"the model changed: {pinned.get('version')} before, {model.get('version')} now"
        )
    results, errors, scores = payload.get("results"), payload.get("errors"), payload.get("scores")
    if not all(isinstance(x, list) and len(x) == n for x in (results, errors, scores)):
        raise ZRewardClientError(
            f"the response does not hold one entry per item ({n}): "
            f"results/errors/scores of lengths {[len(x) if isinstance(x, list) else None for x in (results, errors, scores)]}"
        )
    name = payload.get("reward_name", "zreward")
    dim_names = payload.get("dimensions") or []
    reward = np.full(n, np.nan)
    dims = {d: np.full(n, np.nan) for d in dim_names}
    failed: dict[int, str] = {}
    for i in range(n):
        if errors[i]:
            failed[i] = "; ".join(str(v) for v in errors[i].values())
            if scores[i] is not None:
                raise ZRewardClientError(f"item {i} has both an error and a score")
            continue
        entry = results[i].get(name) if isinstance(results[i], dict) else None
        score = scores[i]
        if entry is None or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ZRewardClientError(f"item {i} has neither a finite score nor an error: {results[i]!r}")
        reward[i] = score
        for d in dim_names:
            if d in entry:
                value = entry[d]
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ZRewardClientError(f"item {i}: dimension {d} is not a finite number ({value!r})")
                dims[d][i] = value
    return ClientResult(reward=reward, dims=dims, errors=failed, model=model, raw=payload)


def _httpx() -> Any:
    try:
        import httpx
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("httpx", "serve", "ZRewardClient") from exc
    return httpx


class _ClientBase:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        pin_model: bool = True,
    ):
        self.url = url.rstrip("/")
        self.headers = {"x-zreward-protocol-version": PROTOCOL_VERSION}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.pin_model = pin_model
        self.model: dict[str, Any] | None = None

    def _delay(self, attempt: int, response: Any) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), self.max_backoff_s)
        return min(self.backoff_s * 2**attempt, self.max_backoff_s)

    def _accept(self, response: Any, n: int) -> ClientResult | None:
        """The result of a final response; None when the status is worth a retry; raises otherwise."""
        if response.status_code in RETRY_STATUSES:
            return None
        if response.status_code != 200:
            raise ZRewardClientError(f"HTTP {response.status_code}: {response.text[:500]}")
        result = decode_response(response.json(), n, self.model if self.pin_model else None)
        if self.model is None:
            self.model = result.model
        return result

    def _fail(self, attempts: int, last: Any) -> ZRewardClientError:
        what = f"HTTP {last.status_code}: {last.text[:300]}" if hasattr(last, "status_code") else repr(last)
        return ZRewardClientError(f"{self.url}: no valid answer after {attempts} attempt(s); last: {what}")


class ZRewardClient(_ClientBase):
    """Blocking client. ``score(images, prompts)`` -> :class:`ClientResult` (see the module docstring)."""

    def __init__(self, url: str, **kwargs: Any):
        super().__init__(url, **kwargs)
        self._http = _httpx().Client(timeout=self.timeout_s, headers=self.headers, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ZRewardClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        response = self._http.get(f"{self.url}/v1/health")
        response.raise_for_status()
        return response.json()

    def score(self, images: Sequence[Any], prompts: Sequence[str] | str, **options: Any) -> ClientResult:
        """Score ``images`` against ``prompts`` (one per image, or one for all). ``options``: ``dims``,
        ``returns``, ``deadline_ms``, ``metadata``, ``idempotency_keys``, ``binary`` (:func:`encode_request`)."""
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        body, content_type = encode_request(images, prompts, **options)
        httpx = _httpx()
        last: Any = None
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.post(
                    f"{self.url}/v1/score", content=body, headers={"Content-Type": content_type}
                )
            except httpx.TransportError as exc:  # refused, reset, timed out: retried
                last, response = exc, None
            else:
                last = response
                result = self._accept(response, len(prompts))
                if result is not None:
                    return result
            if attempt < self.max_retries:
                time.sleep(self._delay(attempt, response))
        raise self._fail(self.max_retries + 1, last)


class AsyncZRewardClient(_ClientBase):
    """The same as :class:`ZRewardClient` for asyncio callers (verl-omni's async reward functions)."""

    def __init__(self, url: str, **kwargs: Any):
        super().__init__(url, **kwargs)
        self._http = _httpx().AsyncClient(timeout=self.timeout_s, headers=self.headers, trust_env=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncZRewardClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def score(
        self, images: Sequence[Any], prompts: Sequence[str] | str, **options: Any
    ) -> ClientResult:
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        body, content_type = await asyncio.to_thread(encode_request, images, prompts, **options)
        httpx = _httpx()
        last: Any = None
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._http.post(
                    f"{self.url}/v1/score", content=body, headers={"Content-Type": content_type}
                )
            except httpx.TransportError as exc:
                last, response = exc, None
            else:
                last = response
                result = self._accept(response, len(prompts))
                if result is not None:
                    return result
            if attempt < self.max_retries:
                await asyncio.sleep(self._delay(attempt, response))
        raise self._fail(self.max_retries + 1, last)

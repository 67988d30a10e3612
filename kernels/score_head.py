"""Score-distribution head: restricted read-out of the score tokens, softmax over them, and moments.

Math (docs/design.md §3, §8). For N hidden rows ``h_n`` (the answer positions), the K score-token rows
``W_k`` of ``lm_head`` (rows ``score_ids`` of a ``[V, H]`` matrix, or a ready ``[K, H]`` matrix), the
score values ``v_k`` and a temperature ``T``::

    z_nk  = <h_n, W_k> / T                       logits restricted to the K score tokens
    q_nk  = softmax_k(z_nk)                      probs, a distribution over the closed score set
    mu_n  = sum_k q_nk v_k                       mean (the per-dimension reward)
    var_n = sum_k q_nk (v_k - mu_n)^2            variance (the model's uncertainty)
    l_nk  = z_nk - logsumexp_k(z_nk)             log-probs (optional, for the CE / KL losses)

Generic VLM scoring computes the full-vocabulary projection ``[N, V]`` and then selects K columns;
this head never does: it reads K rows of the weight. Everything after the matmul runs in fp32, whatever
the input dtype, and the outputs (probs, mean, var, log-probs) are fp32.

Gradient (per row; ``G_p, g_m, g_v, G_l`` the upstream gradients of probs, mean, var, log-probs, any of
them absent). With ``mu`` and ``var`` functions of ``q``: ``d mu / d q_k = v_k`` and
``d var / d q_k = (v_k - mu)^2 - 2 (d mu / d q_k) sum_j q_j (v_j - mu) = (v_k - mu)^2``, the second term
vanishing because ``sum_j q_j (v_j - mu) = 0``. Through the softmax Jacobian ``q_k (delta_kj - q_j)``::

    g'_k     = G_p,k + g_m v_k + g_v (v_k - mu)^2
    dL/dz_k  = q_k (g'_k - sum_j q_j g'_j) + G_l,k - q_k sum_j G_l,j
    dS       = dL/dz / T                                    [N, K]
    dL/dh    = dS @ W          [N, H]          dL/dW = dS^T @ h          [K, H]
    dL/dv_k  = sum_n q_nk (g_m,n + 2 g_v,n (v_k - mu_n))    (the values rarely need it; done in PyTorch)

Bytes the operation must move (s_h, s_w the element sizes of hidden and weight):

* forward: ``N H s_h`` (hidden, once) + ``K H s_w`` (score rows) + ``12 K`` (values, ids) +
  ``4 N K`` (probs) + ``8 N`` (mean, var) [+ ``4 N K`` log-probs]. For N ≫ 1 it is the hidden read.
* backward: ``4 N K`` + ``4 N`` (saved probs, mean) + the upstream gradients present (``4 N K`` or ``4 N``
  each) + ``K H s_w`` + ``N H s_h`` (write d hidden) [+ ``N H s_h`` (read hidden again, only for dW) +
  ``K H s_w`` (write dW)], plus the zero-fill of the ``[V, H]`` weight gradient when ``score_ids`` is given.

Dispatch (:func:`score_head`): ``backend`` argument, else the ``ZREWARD_SCORE_HEAD`` environment variable
(``auto`` | ``triton`` | ``torch``; default ``auto``). ``auto`` runs the Triton kernel for CUDA tensors
when Triton imports (and K ≤ 32, dtypes fp32/fp16/bf16), the reference otherwise. ``triton`` forces the
kernel (CPU tensors only under ``TRITON_INTERPRET=1``, Triton's interpreter, which is how the tests run
it). ``torch`` forces the reference. While exporting (ONNX, ``torch.export``, ``torch.jit.trace``) the
reference runs whatever the backend, so exported graphs hold plain ops; under ``torch.compile`` the
kernel stays an opaque custom op (``zreward::score_head_fwd`` / ``zreward::score_head_bwd``, with fake
implementations for tracing).

This file holds the reference (`score_head_ref`), the custom ops with their autograd formula, and the
public entry point (`score_head`). The Triton kernels and launchers live in ``_score_head_triton.py``,
imported only when the kernel runs: Triton is an optional dependency.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor

from zreward_deploy.errors import MissingDependencyError

ENV_VAR = "ZREWARD_SCORE_HEAD"
"""Environment variable read when ``backend`` is ``None``: ``auto`` (default), ``triton`` or ``torch``."""

SCORE_HEAD_BACKENDS = ("auto", "triton", "torch")
MAX_K = 32
"""Largest K the Triton kernel takes; ``auto`` uses the reference above it."""

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ScoreHeadOutput(NamedTuple):
    """Outputs of the score head; all fp32.

    probs: ``[N, K]`` distribution over the score values.
    mean: ``[N]`` expectation ``sum_k q_k v_k``.
    var: ``[N]`` variance ``sum_k q_k (v_k - mean)^2``.
    logprobs: ``[N, K]`` log of probs (computed stably), or ``None`` when not requested.
    """

    probs: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    logprobs: torch.Tensor | None = None


def score_head_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    values: torch.Tensor,
    temperature: float = 1.0,
    score_ids: torch.Tensor | None = None,
    return_logprobs: bool = False,
) -> ScoreHeadOutput:
    """PyTorch reference of the fused score head: the test oracle, the CPU path and the export path.

    Upcasts hidden and the K weight rows to fp32 before the matmul, so its error in any input dtype is
    fp32 rounding only; autograd gives the gradients (cast back to the input dtypes).

    Args:
        hidden: ``[N, H]`` hidden states at the answer positions (any float dtype).
        weight: ``[K, H]`` score-token rows, or the full ``[V, H]`` ``lm_head`` weight with ``score_ids``.
        values: ``[K]`` score values.
        temperature: softmax temperature (> 0).
        score_ids: ``[K]`` rows of ``weight`` to read, or ``None`` if ``weight`` is already ``[K, H]``.
        return_logprobs: also return ``log q`` (for the CE / KL losses).

    Returns:
        :class:`ScoreHeadOutput` with fp32 ``probs [N, K]``, ``mean [N]``, ``var [N]`` (and ``logprobs``).
    """
    if score_ids is not None:
        weight = weight.index_select(0, score_ids)
    logits = (hidden.float() @ weight.float().t()) / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    probs = logprobs.exp()
    v = values.to(device=probs.device, dtype=torch.float32)
    mean = probs @ v
    # centred form: E[v^2] - mu^2 cancels catastrophically for peaked distributions
    var = (probs * (v - mean.unsqueeze(-1)).square()).sum(-1)
    return ScoreHeadOutput(probs, mean, var, logprobs if return_logprobs else None)


# --- the Triton module, imported on first use -----------------------------------------------------------

_triton_impl: ModuleType | None = None


def _kernels() -> ModuleType:
    """The Triton kernel module; raises :class:`MissingDependencyError` when Triton is not installed."""
    global _triton_impl
    if _triton_impl is None:
        try:
            _triton_impl = importlib.import_module("zreward_deploy.kernels._score_head_triton")
        except ImportError as exc:
            if (exc.name or "").split(".")[0] == "triton":
                raise MissingDependencyError("triton", "triton", "the Triton score-head kernel") from exc
            raise
    return _triton_impl


@torch.compiler.assume_constant_result
def _triton_state() -> str:
    """``"missing"`` (Triton not installed), ``"interpreted"`` (kernels built for Triton's CPU interpreter),
    ``"interpreter-unusable"`` (built for it, but it cannot run them here: ``interpreter_problem``) or
    ``"compiled"``.

    A constant to torch.compile: dynamo calls it once while tracing instead of tracing the import inside.
    """
    try:
        kernels = _kernels()
    except MissingDependencyError:
        return "missing"
    if not kernels.INTERPRETED:
        return "compiled"
    return "interpreter-unusable" if kernels.interpreter_problem() else "interpreted"


# --- custom ops: what torch.compile sees, and where the autograd formula lives ----------------------------


@torch.library.custom_op("zreward::score_head_fwd", mutates_args=())
def _score_head_fwd_op(
    hidden: Tensor,
    weight: Tensor,
    score_ids: Tensor | None,
    values: Tensor,
    temperature: float,
    return_logprobs: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton forward; returns fp32 ``probs [N, K]``, ``mean [N]``, ``var [N]``, ``logprobs [N or 0, K]``."""
    # an out-of-range row would be read out of bounds; checking CUDA ids would cost a device sync
    on_cpu = score_ids is not None and score_ids.device.type == "cpu" and score_ids.numel() > 0
    if on_cpu and (int(score_ids.min()) < 0 or int(score_ids.max()) >= weight.shape[0]):
        raise IndexError(f"score_ids must lie in [0, {weight.shape[0]}), got {score_ids.tolist()}")
    return _kernels().score_head_fwd(hidden, weight, score_ids, values, temperature, return_logprobs)


@_score_head_fwd_op.register_fake
def _(hidden, weight, score_ids, values, temperature, return_logprobs):
    n, k = hidden.shape[0], values.shape[0]
    new = hidden.new_empty
    f32 = torch.float32
    logprobs = new((n if return_logprobs else 0, k), dtype=f32)
    return new((n, k), dtype=f32), new((n,), dtype=f32), new((n,), dtype=f32), logprobs


@torch.library.custom_op("zreward::score_head_bwd", mutates_args=())
def _score_head_bwd_op(
    grad_probs: Tensor | None,
    grad_mean: Tensor | None,
    grad_var: Tensor | None,
    grad_logprobs: Tensor | None,
    hidden: Tensor,
    weight: Tensor,
    score_ids: Tensor | None,
    values: Tensor,
    probs: Tensor,
    mean: Tensor,
    temperature: float,
    compute_grad_hidden: bool,
    compute_grad_weight: bool,
) -> tuple[Tensor, Tensor]:
    """Triton backward; returns ``grad_hidden [N, H]`` and ``grad_weight`` (weight's shape), ``[0]`` if unused."""
    return _kernels().score_head_bwd(
        grad_probs, grad_mean, grad_var, grad_logprobs, hidden, weight, score_ids, values, probs, mean,
        temperature, compute_grad_hidden, compute_grad_weight,
    )  # fmt: skip


@_score_head_bwd_op.register_fake
def _(grad_probs, grad_mean, grad_var, grad_logprobs, hidden, weight, score_ids, values, probs, mean,
      temperature, compute_grad_hidden, compute_grad_weight):  # fmt: skip
    grad_hidden = hidden.new_empty(hidden.shape if compute_grad_hidden else (0,))
    grad_weight = weight.new_empty(weight.shape if compute_grad_weight else (0,))
    return grad_hidden, grad_weight


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    hidden, weight, score_ids, values, temperature, _ = inputs
    probs, mean, _, _ = output
    ctx.save_for_backward(hidden, weight, score_ids, values, probs, mean)
    ctx.temperature = temperature
    # unused outputs then arrive as None, and the kernel skips their terms instead of reading zeros
    ctx.set_materialize_grads(False)


def _backward(ctx: Any, grad_probs: Tensor | None, grad_mean: Tensor | None, grad_var: Tensor | None,
              grad_logprobs: Tensor | None) -> tuple:  # fmt: skip
    hidden, weight, score_ids, values, probs, mean = ctx.saved_tensors
    need_hidden, need_weight, _, need_values = ctx.needs_input_grad[:4]
    if grad_logprobs is not None and grad_logprobs.shape[0] != probs.shape[0]:
        # log-probs were not requested (a [0, K] placeholder); a materialised zero gradient is not [N, K]
        grad_logprobs = None
    grad_hidden = grad_weight = grad_values = None
    if need_hidden or need_weight:
        grad_hidden, grad_weight = torch.ops.zreward.score_head_bwd(
            grad_probs, grad_mean, grad_var, grad_logprobs, hidden, weight, score_ids, values, probs, mean,
            ctx.temperature, need_hidden, need_weight,
        )  # fmt: skip
    if need_values:
        # dmu/dv_k = q_k, dvar/dv_k = 2 q_k (v_k - mu) (the term through mu vanishes again); [N, K] only
        g = torch.zeros_like(probs)
        if grad_mean is not None:
            g = g + grad_mean.unsqueeze(-1)
        if grad_var is not None:
            g = g + 2 * grad_var.unsqueeze(-1) * (values.unsqueeze(0) - mean.unsqueeze(-1))
        grad_values = (probs * g).sum(0)
    return (
        grad_hidden if need_hidden else None,
        grad_weight if need_weight else None,
        None,
        grad_values,
        None,
        None,
    )


_score_head_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# --- dispatch ------------------------------------------------------------------------------------------


def resolve_backend(backend: str | None = None) -> str:
    """``backend``, or ``$ZREWARD_SCORE_HEAD`` when ``None`` (default ``auto``); raises on unknown values."""
    source = "backend"
    if backend is None:
        backend, source = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", ENV_VAR
    if backend not in SCORE_HEAD_BACKENDS:
        raise ValueError(
            f"score-head {source} must be one of {', '.join(SCORE_HEAD_BACKENDS)}; got {backend!r}"
        )
    return backend


def _exporting() -> bool:
    """True while a graph is exported (ONNX, torch.export, jit.trace): those must hold plain ops."""
    if torch.compiler.is_exporting():  # torch.export, which the dynamo ONNX exporter runs
        return True
    if torch.compiler.is_compiling():  # torch.compile keeps the custom op (it is opaque to the compiler)
        return False
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _kernel_unsupported(
    hidden: Tensor, weight: Tensor, values: Tensor, score_ids: Tensor | None
) -> str | None:
    """Why the kernel cannot take these inputs, or ``None`` if it can."""
    if hidden.dim() != 2 or weight.dim() != 2 or values.dim() != 1:
        return (
            f"needs hidden [N, H], weight [K or V, H] and values [K]; got shapes "
            f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(values.shape)}"
        )
    if hidden.shape[1] != weight.shape[1]:
        return f"hidden has H={hidden.shape[1]} but weight has H={weight.shape[1]}"
    k = values.shape[0]
    rows = weight.shape[0] if score_ids is None else score_ids.shape[0]
    if rows != k or (score_ids is not None and score_ids.dim() != 1):
        return f"values has K={k} entries but the weight rows / score_ids give {rows}"
    if not 1 <= k <= MAX_K:
        return f"takes 1 <= K <= {MAX_K} score tokens, got K={k}"
    if hidden.dtype not in _KERNEL_DTYPES or weight.dtype not in _KERNEL_DTYPES:
        return f"takes fp32, fp16 or bf16 inputs, got {hidden.dtype} and {weight.dtype}"
    if weight.device != hidden.device or (score_ids is not None and score_ids.device != hidden.device):
        return f"needs hidden, weight and score_ids on one device, got {hidden.device} and {weight.device}"
    return None


def score_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    values: torch.Tensor,
    temperature: float = 1.0,
    score_ids: torch.Tensor | None = None,
    return_logprobs: bool = False,
    backend: str | None = None,
) -> ScoreHeadOutput:
    """Fused score head (the module docstring has the math); same arguments as :func:`score_head_ref`.

    Args:
        hidden: ``[N, H]`` hidden states (fp32, fp16 or bf16 for the kernel; any strides).
        weight: ``[K, H]`` score-token rows, or the ``[V, H]`` ``lm_head`` weight with ``score_ids``.
        values: ``[K]`` score values.
        temperature: softmax temperature (> 0).
        score_ids: ``[K]`` rows of ``weight`` to read (gathered by pointer inside the kernel, not copied).
        return_logprobs: also return ``log q``.
        backend: ``"auto"``, ``"triton"``, ``"torch"``, or ``None`` to read ``$ZREWARD_SCORE_HEAD``.

    Returns:
        :class:`ScoreHeadOutput` with fp32 ``probs [N, K]``, ``mean [N]``, ``var [N]`` (and ``logprobs``);
        gradients flow to hidden and weight (in their dtypes) and to values.

    Raises:
        ValueError: unknown backend, or ``backend="triton"`` with inputs the kernel does not take.
        MissingDependencyError: ``backend="triton"`` without Triton installed.
        RuntimeError: ``backend="triton"`` with CPU tensors outside Triton's interpreter.
    """
    choice = resolve_backend(backend)
    if choice == "torch" or _exporting():
        return score_head_ref(hidden, weight, values, temperature, score_ids, return_logprobs)
    if choice == "auto":
        if not hidden.is_cuda or _kernel_unsupported(hidden, weight, values, score_ids) is not None:
            return score_head_ref(hidden, weight, values, temperature, score_ids, return_logprobs)
        if _triton_state() == "missing":
            return score_head_ref(hidden, weight, values, temperature, score_ids, return_logprobs)
    else:
        reason = _kernel_unsupported(hidden, weight, values, score_ids)
        if reason is not None:
            raise ValueError(f"the Triton score-head kernel {reason}")
        state = _triton_state()
        if state == "missing":
            _kernels()  # raises MissingDependencyError with its message
        if not hidden.is_cuda and state not in ("interpreted", "interpreter-unusable"):
            raise RuntimeError(
                f"the Triton score-head kernel needs CUDA tensors, got {hidden.device}; CPU tensors run it only "
                "under Triton's interpreter (TRITON_INTERPRET=1 set before Triton is imported, as the tests do)"
            )
        if not hidden.is_cuda and state == "interpreter-unusable":
            problem = _kernels().interpreter_problem()
            raise RuntimeError(f"the Triton score-head kernel cannot run on CPU tensors here: {problem}")
    v = values.to(device=hidden.device, dtype=torch.float32)
    probs, mean, var, logprobs = torch.ops.zreward.score_head_fwd(
        hidden, weight, score_ids, v, float(temperature), return_logprobs
    )
    return ScoreHeadOutput(probs, mean, var, logprobs if return_logprobs else None)

"""Triton kernels of the fused score head: forward, backward and their launchers.

Imported lazily by :mod:`zreward_deploy.kernels.score_head` only when the Triton path runs, because Triton
is an optional dependency (``pip install 'zreward-deploy[triton]'``). The math, the gradient derivation
and the bytes moved are in the docstring of ``kernels/score_head.py`` and in ``docs/kernels.md``; this
file holds the device code.

Forward, one program per ``BLOCK_N`` hidden rows::

    for each H chunk:  acc[BLOCK_N, BLOCK_K] += hidden[rows, chunk] @ W[score rows, chunk]^T   (fp32 acc)
    z = acc / T ; q = softmax_K(z) ; mu = <q, v> ; var = <q, (v - mu)^2> ; log q = z - logsumexp(z)

Each hidden row is read once; the K weight rows are read once per program (they stay in L2). The weight
rows are gathered by pointer (``ids[k] * stride``), so a ``[V, H]`` ``lm_head`` is never copied.

Backward, a 2-D grid of (row-range program ``p``, H chunk ``c``); each program rebuilds the logit gradient
``dS [BLOCK_N, BLOCK_K]`` of its rows from the saved probs and mean and the upstream gradients (cheap:
``O(K)`` per row; recomputing it per H chunk avoids a second launch and a ``[N, K]`` round trip), then::

    grad_hidden[rows, c] = dS @ W[:, c]                 (stored in hidden's dtype)
    dW_partial[p, :, c] += dS^T @ hidden[rows, c]       (fp32, summed over p by the launcher)

Partial sums instead of atomics keep the weight gradient deterministic; the number of row-range programs
is chosen so the partial buffer stays small against the hidden tensor (see ``_gpu_bwd_config``).

All dot products accumulate in fp32. fp16/bf16 operands go to ``tl.dot`` as they are (products of two
16-bit floats are exact in fp32); fp32 operands, mixed dtypes and the fp32 ``dS`` use
``input_precision="ieee"`` so no TF32 rounding sneaks in.

Triton's CPU interpreter (the tests) needs two workarounds, both neutral to the result and both off on a
GPU: it multiplies bf16 ``tl.dot`` operands as raw integers, so bf16 is upcast first
(``_dot_needs_fp32``); and its fp32 -> bf16 cast truncates, so a bf16 ``grad_hidden`` is staged in fp32
and rounded by torch (``score_head_bwd``).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import triton
import triton.language as tl


@triton.jit
def _score_head_fwd_kernel(
    hidden_ptr,  # [N, H] any float dtype
    weight_ptr,  # [K, H], or [V, H] with ids
    ids_ptr,  # [K] int rows of weight (read only when HAS_IDS)
    values_ptr,  # [K] fp32
    probs_ptr,  # [N, K] fp32 out, contiguous
    mean_ptr,  # [N] fp32 out
    var_ptr,  # [N] fp32 out
    logprobs_ptr,  # [N, K] fp32 out, contiguous (written only when STORE_LOGPROBS)
    N,
    H,
    K,
    temperature,
    stride_hn,
    stride_hh,
    stride_wk,
    stride_wh,
    stride_ids,
    stride_v,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_IDS: tl.constexpr,
    STORE_LOGPROBS: tl.constexpr,
    DOT_IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols_k = tl.arange(0, BLOCK_K)
    row_mask = rows < N
    k_mask = cols_k < K
    # int64 offsets: N * stride_hn exceeds 2^31 for a few hundred thousand rows of H = 3584 in strided views
    h_row_off = rows.to(tl.int64) * stride_hn
    if HAS_IDS:
        w_rows = tl.load(ids_ptr + cols_k * stride_ids, mask=k_mask, other=0).to(tl.int64)
    else:
        w_rows = cols_k.to(tl.int64)
    w_row_off = w_rows * stride_wk

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        cols_h = h0 + tl.arange(0, BLOCK_H)
        h_mask = cols_h < H
        x = tl.load(
            hidden_ptr + h_row_off[:, None] + cols_h[None, :] * stride_hh,
            mask=row_mask[:, None] & h_mask[None, :],
            other=0.0,
        )
        # weight tile loaded transposed, [BLOCK_H, BLOCK_K], so the dot needs no tl.trans
        w = tl.load(
            weight_ptr + w_row_off[None, :] + cols_h[:, None] * stride_wh,
            mask=k_mask[None, :] & h_mask[:, None],
            other=0.0,
        )
        if DOT_IEEE:
            acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)

    z = acc / temperature
    z = tl.where(k_mask[None, :], z, float("-inf"))
    z_max = tl.max(z, axis=1)
    e = tl.exp(z - z_max[:, None])  # padded columns: exp(-inf) = 0
    denom = tl.sum(e, axis=1)
    q = e / denom[:, None]
    v = tl.load(values_ptr + cols_k * stride_v, mask=k_mask, other=0.0).to(tl.float32)
    mu = tl.sum(q * v[None, :], axis=1)
    d = v[None, :] - mu[:, None]
    # centred form: E[v^2] - mu^2 cancels catastrophically for peaked distributions
    var = tl.sum(q * d * d, axis=1)

    out_off = rows.to(tl.int64)[:, None] * K + cols_k[None, :]
    out_mask = row_mask[:, None] & k_mask[None, :]
    tl.store(probs_ptr + out_off, q, mask=out_mask)
    tl.store(mean_ptr + rows, mu, mask=row_mask)
    tl.store(var_ptr + rows, var, mask=row_mask)
    if STORE_LOGPROBS:
        logq = z - z_max[:, None] - tl.log(denom)[:, None]
        tl.store(logprobs_ptr + out_off, logq, mask=out_mask)


@triton.jit
def _score_head_bwd_kernel(
    hidden_ptr,  # [N, H]
    weight_ptr,  # [K, H], or [V, H] with ids
    ids_ptr,  # [K]
    values_ptr,  # [K] fp32
    probs_ptr,  # [N, K] fp32 saved by the forward, contiguous
    mean_ptr,  # [N] fp32 saved by the forward
    gprobs_ptr,  # [N, K] upstream gradient of probs (read only when HAS_GP)
    gmean_ptr,  # [N] upstream gradient of mean (HAS_GM)
    gvar_ptr,  # [N] upstream gradient of var (HAS_GV)
    glogprobs_ptr,  # [N, K] upstream gradient of logprobs (HAS_GL)
    grad_hidden_ptr,  # [N, H] out in hidden's dtype, contiguous (COMPUTE_DH)
    dw_partial_ptr,  # [P, K, H] fp32 out, contiguous (COMPUTE_DW)
    N,
    H,
    K,
    temperature,
    blocks_per_program,
    stride_hn,
    stride_hh,
    stride_wk,
    stride_wh,
    stride_ids,
    stride_v,
    stride_gpn,
    stride_gpk,
    stride_gm,
    stride_gv,
    stride_gln,
    stride_glk,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_IDS: tl.constexpr,
    HAS_GP: tl.constexpr,
    HAS_GM: tl.constexpr,
    HAS_GV: tl.constexpr,
    HAS_GL: tl.constexpr,
    COMPUTE_DH: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_h = tl.program_id(1)
    cols_k = tl.arange(0, BLOCK_K)
    cols_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    k_mask = cols_k < K
    h_mask = cols_h < H
    if HAS_IDS:
        w_rows = tl.load(ids_ptr + cols_k * stride_ids, mask=k_mask, other=0).to(tl.int64)
    else:
        w_rows = cols_k.to(tl.int64)
    # this program's weight tile [BLOCK_K, BLOCK_H] is loaded once and reused for all its rows
    w = tl.load(
        weight_ptr + w_rows[:, None] * stride_wk + cols_h[None, :] * stride_wh,
        mask=k_mask[:, None] & h_mask[None, :],
        other=0.0,
    ).to(tl.float32)
    v = tl.load(values_ptr + cols_k * stride_v, mask=k_mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_K, BLOCK_H), dtype=tl.float32)

    block_start = pid_p * blocks_per_program
    for b in range(block_start, block_start + blocks_per_program):
        rows = b * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        rows64 = rows.to(tl.int64)
        nk_mask = row_mask[:, None] & k_mask[None, :]
        q = tl.load(probs_ptr + rows64[:, None] * K + cols_k[None, :], mask=nk_mask, other=0.0)
        # g'_k = g_probs_k + g_mean v_k + g_var (v_k - mu)^2: the var term through mu vanishes because
        # sum_k q_k (v_k - mu) = 0 (docs/kernels.md derives it)
        g = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        if HAS_GP:
            g += tl.load(
                gprobs_ptr + rows64[:, None] * stride_gpn + cols_k[None, :] * stride_gpk,
                mask=nk_mask,
                other=0.0,
            ).to(tl.float32)
        if HAS_GM:
            gm = tl.load(gmean_ptr + rows64 * stride_gm, mask=row_mask, other=0.0).to(tl.float32)
            g += gm[:, None] * v[None, :]
        if HAS_GV:
            mu = tl.load(mean_ptr + rows64, mask=row_mask, other=0.0)
            gv = tl.load(gvar_ptr + rows64 * stride_gv, mask=row_mask, other=0.0).to(tl.float32)
            d = v[None, :] - mu[:, None]
            g += gv[:, None] * d * d
        dz = q * (g - tl.sum(q * g, axis=1)[:, None])
        if HAS_GL:
            gl = tl.load(
                glogprobs_ptr + rows64[:, None] * stride_gln + cols_k[None, :] * stride_glk,
                mask=nk_mask,
                other=0.0,
            ).to(tl.float32)
            dz += gl - q * tl.sum(gl, axis=1)[:, None]
        ds = dz / temperature  # padded rows and columns are exactly 0 (q = 0, g = 0 there)

        nh_mask = row_mask[:, None] & h_mask[None, :]
        if COMPUTE_DH:
            dh = tl.dot(ds, w, input_precision="ieee")
            tl.store(
                grad_hidden_ptr + rows64[:, None] * H + cols_h[None, :],
                dh.to(grad_hidden_ptr.dtype.element_ty),
                mask=nh_mask,
            )
        if COMPUTE_DW:
            x = tl.load(
                hidden_ptr + rows64[:, None] * stride_hn + cols_h[None, :] * stride_hh,
                mask=nh_mask,
                other=0.0,
            ).to(tl.float32)
            dw_acc = tl.dot(tl.trans(ds), x, dw_acc, input_precision="ieee")

    if COMPUTE_DW:
        part_off = pid_p.to(tl.int64) * K * H + cols_k[:, None].to(tl.int64) * H + cols_h[None, :]
        tl.store(dw_partial_ptr + part_off, dw_acc, mask=k_mask[:, None] & h_mask[None, :])


INTERPRETED: bool = not isinstance(_score_head_fwd_kernel, triton.runtime.JITFunction)
"""Whether the kernels were built for Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import time).

A module constant, not a call, so that ``torch.compile`` reads it without tracing into Triton."""


@triton.jit
def _runtime_loop_probe(x_ptr, n):
    acc = 0.0
    for i in range(0, n):  # a loop bound given at run time, as H and the row ranges are in the kernels
        acc += tl.load(x_ptr + i)
    tl.store(x_ptr, acc)


@functools.cache
def interpreter_problem() -> str | None:
    """Why Triton's CPU interpreter cannot run these kernels in this environment, or None.

    Triton 3.6's interpreter (the GPU benchmark environment's) turns a run-time loop bound into a Python
    int with ``int()`` of a one-element array, which NumPy 2.5 refuses ("only 0-dimensional arrays can be
    converted to Python scalars"); later Triton releases squeeze the array first. Every kernel here loops
    over run-time bounds, so with that pair nothing runs interpreted. Found by running a one-program probe
    kernel once, not by comparing version numbers. The compiled kernels (CUDA) are not affected.
    """
    if not INTERPRETED:
        return None
    try:
        _runtime_loop_probe[(1,)](torch.ones(2), 2)
    except Exception as exc:  # the interpreter wraps the TypeError in its InterpreterError
        cause = exc.__cause__ or exc
        return (
            f"Triton {triton.__version__}'s CPU interpreter cannot run a loop with a run-time bound beside "
            f"NumPy {np.__version__} ({type(cause).__name__}: {cause}); the compiled kernels on a GPU are "
            "not affected"
        )
    return None


def _block_k(k: int) -> int:
    # tl.dot needs every dimension ≥ 16
    return max(16, triton.next_power_of_2(k))


def _dot_needs_fp32(hidden_dtype: torch.dtype, weight_dtype: torch.dtype) -> bool:
    """Whether the forward upcasts its dot operands to fp32 (``DOT_IEEE``).

    fp32 and mixed dtypes always do. bf16 does under the interpreter only: it stores bf16 as raw uint16
    and its ``tl.dot`` multiplies those integers (numpy has no bfloat16). On a GPU bf16 goes to ``tl.dot``
    as it is; both ways every product is exact in fp32, so they differ only in accumulation order.
    """
    if hidden_dtype == torch.float32 or hidden_dtype != weight_dtype:
        return True
    return INTERPRETED and hidden_dtype == torch.bfloat16


def _gpu_fwd_config(n: int, h: int) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_H, num_warps)`` of the forward on a GPU.

    The kernel is bandwidth bound (K ≤ 32 dot products per loaded element), so the choice aims at enough
    programs in flight: 16-row blocks until there are several hundred of them, then 32 rows. Not tuned on
    a GPU yet (docs/benchmarks.md says so).
    """
    return (16 if n <= 16 * 512 else 32), 128, 4


def _interpreter_fwd_config(n: int, h: int) -> tuple[int, int, int]:
    # the interpreter pays per program and per loop iteration, not per element: big blocks, few loops
    return 64, max(16, min(512, triton.next_power_of_2(h))), 4


def _fwd_config(n: int, h: int) -> tuple[int, int, int]:
    return (_interpreter_fwd_config if INTERPRETED else _gpu_fwd_config)(n, h)


def score_head_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    score_ids: torch.Tensor | None,
    values: torch.Tensor,
    temperature: float,
    return_logprobs: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Args:
        hidden: ``[N, H]`` (any strides, any float dtype).
        weight: ``[K, H]``, or ``[V, H]`` with ``score_ids`` ``[K]``.
        values: ``[K]`` on hidden's device.

    Returns:
        fp32 ``probs [N, K]``, ``mean [N]``, ``var [N]``, and ``logprobs [N, K]`` (``[0, K]`` when not
        requested; a custom op cannot return ``None``).
    """
    n, h = hidden.shape
    k = values.shape[0]
    dev = hidden.device
    probs = torch.empty((n, k), device=dev, dtype=torch.float32)
    mean = torch.empty((n,), device=dev, dtype=torch.float32)
    var = torch.empty((n,), device=dev, dtype=torch.float32)
    logprobs = torch.empty((n if return_logprobs else 0, k), device=dev, dtype=torch.float32)
    if n == 0:
        return probs, mean, var, logprobs
    block_n, block_h, num_warps = _fwd_config(n, h)
    ids = score_ids if score_ids is not None else values  # never read when HAS_IDS is False
    grid = (triton.cdiv(n, block_n),)
    _score_head_fwd_kernel[grid](
        hidden, weight, ids, values, probs, mean, var, logprobs,
        n, h, k, float(temperature),
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        ids.stride(0), values.stride(0),
        BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_K=_block_k(k),
        HAS_IDS=score_ids is not None, STORE_LOGPROBS=return_logprobs,
        DOT_IEEE=_dot_needs_fp32(hidden.dtype, weight.dtype),
        num_warps=num_warps,
    )  # fmt: skip
    return probs, mean, var, logprobs


def _gpu_bwd_config(n: int, h: int) -> tuple[int, int, int, int]:
    """``(BLOCK_N, BLOCK_H, P, row blocks per program)`` of the backward on a GPU; grid ``(P, H chunks)``.

    About 512 programs in total fill a GPU; ``P ≤ 512 / chunks`` also bounds the fp32 ``[P, K, H]``
    partial buffer to ``≈ 512 · BLOCK_H · K · 4`` bytes (2.4 MB at K = 9), whatever N. Each program walks
    at least 4 row blocks, so the weight tile it loads once is reused.
    """
    block_n, block_h = 32, 128
    n_blocks, n_chunks = triton.cdiv(n, block_n), triton.cdiv(h, block_h)
    p = max(1, min(triton.cdiv(n_blocks, 4), 512 // n_chunks))
    per_program = triton.cdiv(n_blocks, p)
    return block_n, block_h, triton.cdiv(n_blocks, per_program), per_program


def _interpreter_bwd_config(n: int, h: int) -> tuple[int, int, int, int]:
    # one row-range program walks all rows: the interpreter pays per program, not per element
    block_n = 64
    return block_n, max(16, min(512, triton.next_power_of_2(h))), 1, triton.cdiv(n, block_n)


def _bwd_config(n: int, h: int) -> tuple[int, int, int, int]:
    return (_interpreter_bwd_config if INTERPRETED else _gpu_bwd_config)(n, h)


def score_head_bwd(
    grad_probs: torch.Tensor | None,
    grad_mean: torch.Tensor | None,
    grad_var: torch.Tensor | None,
    grad_logprobs: torch.Tensor | None,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    score_ids: torch.Tensor | None,
    values: torch.Tensor,
    probs: torch.Tensor,
    mean: torch.Tensor,
    temperature: float,
    compute_grad_hidden: bool,
    compute_grad_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernel.

    Args:
        grad_probs / grad_logprobs: ``[N, K]`` upstream gradients, or ``None`` (any strides).
        grad_mean / grad_var: ``[N]`` upstream gradients, or ``None`` (any strides, stride 0 included).
        hidden, weight, score_ids, values, temperature: the forward's inputs.
        probs, mean: ``[N, K]``, ``[N]`` fp32 outputs of the forward (contiguous).

    Returns:
        ``grad_hidden [N, H]`` in hidden's dtype and ``grad_weight`` of weight's shape and dtype; each is an
        empty ``[0]`` tensor when not requested. With ``score_ids`` the ``[K, H]`` gradient is reduced in
        fp32, cast once, and ``index_add_``-ed into a zero ``[V, H]`` tensor of weight's dtype: the only
        ``[V, H]`` traffic is that zero-fill (what ``index_select``'s backward costs in PyTorch too), and no
        ``[V, H]`` fp32 temporary exists.
    """
    n, h = hidden.shape
    k = values.shape[0]
    dev = hidden.device
    # The interpreter's fp32 -> bf16 cast truncates instead of rounding to nearest even (as the GPU's
    # cvt.rn does), so under it a bf16 gradient is stored in fp32 and rounded by torch.
    stage_fp32 = INTERPRETED and hidden.dtype == torch.bfloat16
    gh_dtype = torch.float32 if stage_fp32 else hidden.dtype
    grad_hidden = torch.empty((n, h) if compute_grad_hidden else (0,), device=dev, dtype=gh_dtype)
    grad_weight = torch.empty((0,), device=dev, dtype=weight.dtype)
    flags = [g is not None for g in (grad_probs, grad_mean, grad_var, grad_logprobs)]
    if n == 0 or not any(flags) or not (compute_grad_hidden or compute_grad_weight):
        # nothing flows back: gradients are exactly zero
        if compute_grad_hidden:
            grad_hidden = torch.zeros_like(hidden, memory_format=torch.contiguous_format)
        if compute_grad_weight:
            grad_weight = torch.zeros_like(weight)
        return grad_hidden, grad_weight
    block_n, block_h, p, per_program = _bwd_config(n, h)
    n_chunks = triton.cdiv(h, block_h)
    partial = torch.empty((p if compute_grad_weight else 0, k, h), device=dev, dtype=torch.float32)
    dummy = probs  # stands in for absent optional tensors; never read (its flag is False)
    gp = grad_probs if grad_probs is not None else dummy
    gl = grad_logprobs if grad_logprobs is not None else dummy
    gm = grad_mean if grad_mean is not None else mean
    gv = grad_var if grad_var is not None else mean
    ids = score_ids if score_ids is not None else values
    _score_head_bwd_kernel[(p, n_chunks)](
        hidden, weight, ids, values, probs, mean, gp, gm, gv, gl, grad_hidden, partial,
        n, h, k, float(temperature), per_program,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        ids.stride(0), values.stride(0),
        gp.stride(0), gp.stride(1), gm.stride(0), gv.stride(0), gl.stride(0), gl.stride(1),
        BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_K=_block_k(k), HAS_IDS=score_ids is not None,
        HAS_GP=flags[0], HAS_GM=flags[1], HAS_GV=flags[2], HAS_GL=flags[3],
        COMPUTE_DH=compute_grad_hidden, COMPUTE_DW=compute_grad_weight,
        num_warps=4,
    )  # fmt: skip
    if stage_fp32:
        grad_hidden = grad_hidden.to(hidden.dtype)
    if compute_grad_weight:
        dw = partial.sum(0).to(weight.dtype)
        # index_add_ (not a scatter) so that a token listed twice in score_ids gets both contributions
        grad_weight = dw if score_ids is None else torch.zeros_like(weight).index_add_(0, score_ids, dw)
    return grad_hidden, grad_weight

"""The interface of a TensorRT plugin that will launch a precompiled score-head forward (not written yet):
its parameters, launch grid and the ``triton.compile`` spec of its kernel variant. It lives beside its test
(``test_score_head_aot.py``) until the plugin exists; docs/kernels.md, "AOT for the TensorRT plugin".
"""

from __future__ import annotations

import math

from zreward_deploy.kernels import _score_head_triton as kt

FWD_AOT_BLOCK_N = 16  # the JIT path's choice for N ≤ 8192, the plugin's range
FWD_AOT_BLOCK_H = 128
FWD_AOT_NUM_WARPS = 4

FWD_AOT_PARAMS: tuple[tuple[str, str], ...] = (
    ("hidden_ptr", "*{dtype}"),
    ("weight_ptr", "*{dtype}"),
    ("ids_ptr", "*i64"),
    ("values_ptr", "*fp32"),
    ("probs_ptr", "*fp32"),
    ("mean_ptr", "*fp32"),
    ("var_ptr", "*fp32"),
    ("logprobs_ptr", "*fp32"),
    ("N", "i32"),
    ("H", "i32"),
    ("K", "i32"),
    ("temperature", "fp32"),
    ("stride_hn", "i32"),
    ("stride_wk", "i32"),
    ("stride_ids", "i32"),
    ("stride_v", "i32"),
)
"""Runtime parameters of the AOT forward kernel, in launch order, as Triton signature types.

The TensorRT plugin passes exactly these (then Triton's two scratch pointers, which may be null since the
kernel needs no scratch). ``ids_ptr`` is never read in the plugin variant (``HAS_IDS=False``: the export
folds the score rows of ``lm_head`` into a ``[K, H]`` constant), but stays in the prototype. Grid:
``(ceil(N / FWD_AOT_BLOCK_N), 1, 1)``, ``32 * FWD_AOT_NUM_WARPS`` threads per block.
"""


def fwd_aot_spec(
    dtype: str, k: int, aligned: bool = True
) -> tuple[dict[str, str], dict[str, object], dict[tuple[int, ...], list[list[object]]]]:
    """``(signature, constexprs, attrs)`` for ``triton.compiler.ASTSource`` of the plugin's forward variant.

    Args:
        dtype: Triton type of hidden and weight: ``"fp16"``, ``"bf16"`` or ``"fp32"``.
        k: number of score tokens (sets ``BLOCK_K``).
        aligned: promise 16-byte-aligned pointers and ``N``, ``H``, row strides divisible by 16, as Triton's
            JIT does when it sees such arguments; this is what lets the compiler emit vector loads. The
            plugin must then check the promise (real models: H = 1024, 2048, 3584) or use ``aligned=False``.

    The variant takes contiguous rows (``stride_hh = stride_wh = 1``, specialised as constants exactly as
    the JIT path specialises an integer argument equal to 1), no ids, no log-probs.
    """
    if dtype not in ("fp16", "bf16", "fp32"):
        raise ValueError(f"dtype must be 'fp16', 'bf16' or 'fp32', got {dtype!r}")
    signature = {name: ty.format(dtype=dtype) for name, ty in FWD_AOT_PARAMS}
    constexprs: dict[str, object] = {
        "stride_hh": 1,
        "stride_wh": 1,
        "BLOCK_N": FWD_AOT_BLOCK_N,
        "BLOCK_H": FWD_AOT_BLOCK_H,
        "BLOCK_K": kt._block_k(k),
        "HAS_IDS": False,
        "STORE_LOGPROBS": False,
        "DOT_IEEE": dtype == "fp32",
    }
    for name in constexprs:
        signature[name] = "constexpr"
    order = kt._score_head_fwd_kernel.arg_names  # ASTSource expects the kernel's own argument order
    attrs: dict[tuple[int, ...], list[list[object]]] = {}
    if aligned:
        hinted = [name for name, ty in FWD_AOT_PARAMS if ty.startswith("*")] + ["H", "stride_hn", "stride_wk"]
        attrs = {(order.index(name),): [["tt.divisibility", 16]] for name in hinted}
    return {name: signature[name] for name in order}, constexprs, attrs


def fwd_aot_grid(n: int) -> tuple[int, int, int]:
    """Launch grid of the AOT forward for ``n`` rows."""
    return (math.ceil(n / FWD_AOT_BLOCK_N), 1, 1)

"""Tests of kernels/score_head.py: the Triton kernels (run on CPU by Triton's interpreter) against an fp64
oracle, the dispatch rules, the custom ops under torch.compile, and export to plain ops.

Tolerance rule (flash-attention's): the kernel's max error against the fp64 oracle is at most twice
PyTorch's own error in the same input dtype (``score_head_ref``) plus a small atol. The fp64 oracle sees
the *same* rounded inputs, so both errors measure arithmetic only, not input rounding.

Grid. The requirement: N ∈ {1, 7, 64, 257}, H ∈ {64, 100, 1536, 3584}, K ∈ {2, 5, 9, 32}, three dtypes,
temperatures, non-contiguous inputs and upstream gradients ≠ 1. The interpreter is slow, so the grid is
sampled: every (N, K) pair at the small H (64 with a ready ``[K, H]`` weight and T = 1; 100 with ``[V, H]``
``lm_head`` + ``score_ids`` and T = 0.37) in all three dtypes, plus a diagonal over the large H (1536,
3584) that still touches every N and K. Each listed value of N, H, K and every dtype appears.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

from zreward_deploy.errors import MissingDependencyError
from zreward_deploy.kernels import score_head as sh
from zreward_deploy.kernels.score_head import ENV_VAR, ScoreHeadOutput, score_head, score_head_ref

kt = pytest.importorskip("zreward_deploy.kernels._score_head_triton", reason="triton is not installed")

if not kt.INTERPRETED:  # pragma: no cover - conftest sets TRITON_INTERPRET=1 before Triton is imported
    pytest.skip("Triton was imported without TRITON_INTERPRET=1; CPU kernel tests need the interpreter",
                allow_module_level=True)  # fmt: skip
if (_problem := kt.interpreter_problem()) is not None:  # Triton 3.6 beside NumPy 2.5 (docs/kernels.md)
    pytest.skip(_problem, allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# atol of the 2x rule, per input dtype: forward outputs are fp32 whatever the input dtype; the gradients
# come back in the input dtype and round there
FWD_ATOL = 2e-6
GRAD_ATOL = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}

_SMALL = [  # (N, H, K, temperature, with_ids): every (N, K) at both small H
    (n, h, k, t, ids)
    for (h, t, ids) in [(64, 1.0, False), (100, 0.37, True)]
    for n in (1, 7, 64, 257)
    for k in (2, 5, 9, 32)
]
_LARGE = [  # a diagonal over the large H that still visits every N and K
    (1, 1536, 9, 2.0, True),
    (257, 1536, 2, 0.7, True),
    (7, 3584, 32, 1.0, True),
    (64, 3584, 5, 0.7, True),
]
OUTPUTS = ("probs", "mean", "var", "logprobs")


def _inputs(n: int, h: int, k: int, dtype: torch.dtype, with_ids: bool, seed: int = 0):
    """hidden [N, H], weight [V, H] (with ids) or [K, H], values [K] (unevenly spaced), score_ids [K]."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    rows = k + 11 if with_ids else k
    # scaled so that the logits are O(1): softmaxes neither uniform nor one-hot
    weight = (torch.randn(rows, h, generator=g) * 2.0 / h**0.5).to(dtype)
    values = torch.sort(torch.rand(k, generator=g) * 4 + 1).values
    score_ids = torch.randperm(rows, generator=g)[:k] if with_ids else None
    return hidden, weight, values, score_ids


def _fp64_oracle(hidden, weight, values, temperature, score_ids) -> ScoreHeadOutput:
    """The math of the module docstring in float64 (score_head_ref would compute in fp32)."""
    w = weight.double() if score_ids is None else weight.double()[score_ids]
    z = hidden.double() @ w.t() / temperature
    logq = torch.log_softmax(z, dim=-1)
    q = logq.exp()
    v = values.double()
    mean = q @ v
    var = (q * (v - mean[:, None]) ** 2).sum(-1)
    return ScoreHeadOutput(q, mean, var, logq)


def _check(name: str, x: torch.Tensor, x_pt: torch.Tensor, x_ref: torch.Tensor, atol: float) -> None:
    """Kernel error against fp64 ≤ 2 × PyTorch same-dtype error + atol.

    ``atol`` is in units of the output's scale (``max(1, max |x_ref|)``): log-probs reach -30 at T = 0.37
    and gradients reach ~10, where one fp32 ulp is already 2e-6 and one bf16 ulp 0.06.
    """
    assert x.shape == x_ref.shape, f"{name}: shape {tuple(x.shape)} != {tuple(x_ref.shape)}"
    assert torch.isfinite(x).all(), f"{name}: non-finite values"
    err = (x.double() - x_ref.double()).abs().max().item()
    err_pt = (x_pt.double() - x_ref.double()).abs().max().item()
    tol = 2 * err_pt + atol * max(1.0, x_ref.abs().max().item())
    assert err <= tol, f"{name}: kernel error {err:.3e} > 2 × torch error {err_pt:.3e} + scaled atol"


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def _run_three(hidden, weight, values, temperature, score_ids, upstream: dict[str, torch.Tensor]):
    """``(outputs, (grad_hidden, grad_weight))`` of the kernel, the same-dtype reference, the fp64 oracle.

    ``upstream`` maps output names to upstream gradients; the loss is ``sum(out * g)`` over those only,
    so outputs left out receive no gradient at all.
    """

    def with_grads(out: ScoreHeadOutput, h: torch.Tensor, w: torch.Tensor):
        if not upstream:
            return out, (None, None)
        loss = sum((getattr(out, name).double() * g.double()).sum() for name, g in upstream.items())
        return out, torch.autograd.grad(loss, [h, w])

    h1, w1, h2, w2 = _leaf(hidden), _leaf(weight), _leaf(hidden), _leaf(weight)
    # fp64 leaves for the oracle: a gradient cast back to a 16-bit leaf would not be the exact answer
    h3, w3 = _leaf(hidden.double()), _leaf(weight.double())
    return (
        with_grads(score_head(h1, w1, values, temperature, score_ids, True, backend="triton"), h1, w1),
        with_grads(score_head_ref(h2, w2, values, temperature, score_ids, True), h2, w2),
        with_grads(_fp64_oracle(h3, w3, values, temperature, score_ids), h3, w3),
    )


def _upstream(n: int, k: int, names, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"probs": (n, k), "mean": (n,), "var": (n,), "logprobs": (n, k)}
    return {name: torch.randn(shapes[name], generator=g) for name in names}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("n", "h", "k", "temperature", "with_ids"), _SMALL + _LARGE)
def test_kernel_matches_fp64_within_twice_torch_error(n, h, k, temperature, with_ids, dtype):
    hidden, weight, values, score_ids = _inputs(n, h, k, dtype, with_ids)
    upstream = _upstream(n, k, OUTPUTS)
    (out, (gh, gw)), (out_pt, (gh_pt, gw_pt)), (out_ref, (gh_ref, gw_ref)) = _run_three(
        hidden, weight, values, temperature, score_ids, upstream
    )
    for name in OUTPUTS:
        x = getattr(out, name)
        assert x.dtype == torch.float32, f"{name} must be fp32, got {x.dtype}"
        _check(name, x, getattr(out_pt, name), getattr(out_ref, name), FWD_ATOL)
    assert gh.dtype == dtype and gw.dtype == dtype
    assert gw.shape == weight.shape
    _check("grad_hidden", gh, gh_pt, gh_ref, GRAD_ATOL[dtype])
    _check("grad_weight", gw, gw_pt, gw_ref, GRAD_ATOL[dtype])
    if with_ids:
        untouched = torch.ones(weight.shape[0], dtype=torch.bool)
        untouched[score_ids] = False
        assert (gw[untouched] == 0).all(), "rows of lm_head outside score_ids must get exactly zero gradient"


@pytest.mark.parametrize(
    "names", [c for r in range(1, 5) for c in itertools.combinations(OUTPUTS, r)], ids="+".join
)
def test_any_subset_of_upstream_gradients(names):
    """Every non-empty subset of {probs, mean, var, logprobs} carries gradient; the others get none."""
    n, h, k = 7, 100, 9
    hidden, weight, values, score_ids = _inputs(n, h, k, torch.float32, True, seed=3)
    (_, (gh, gw)), (_, (gh_pt, gw_pt)), (_, (gh_ref, gw_ref)) = _run_three(
        hidden, weight, values, 0.8, score_ids, _upstream(n, k, names, seed=4)
    )
    _check("grad_hidden", gh, gh_pt, gh_ref, GRAD_ATOL[torch.float32])
    _check("grad_weight", gw, gw_pt, gw_ref, GRAD_ATOL[torch.float32])
    assert gh_ref.abs().max() > 1e-3, "degenerate case: the upstream gradient should move hidden"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["hidden_strided", "hidden_transposed", "weight_transposed", "all"])
def test_non_contiguous_inputs_and_upstream_gradients(layout, dtype):
    n, h, k = 64, 100, 5
    hidden, weight, values, score_ids = _inputs(n, h, k, dtype, True, seed=5)
    if layout in ("hidden_strided", "all"):
        wide = torch.zeros(n, 3 * h, dtype=dtype)
        wide[:, ::3] = hidden
        hidden = wide[:, ::3]  # stride (3H, 3)
    if layout == "hidden_transposed":
        hidden = hidden.t().contiguous().t()  # stride (1, N)
    if layout in ("weight_transposed", "all"):
        weight = weight.t().contiguous().t()
    if layout == "all":
        values = torch.stack([values, values]).t()[:, 0]  # stride 2
    assert not hidden.is_contiguous() or not weight.is_contiguous()
    up = _upstream(n, k, OUTPUTS, seed=6)
    # non-contiguous upstream gradients too: transposed probs grad, stride-0 (expanded) mean grad
    up["probs"] = up["probs"].t().contiguous().t()
    up["mean"] = torch.tensor(0.7).expand(n)
    (out, (gh, gw)), (out_pt, (gh_pt, gw_pt)), (out_ref, (gh_ref, gw_ref)) = _run_three(
        hidden, weight, values, 1.3, score_ids, up
    )
    for name in OUTPUTS:
        _check(name, getattr(out, name), getattr(out_pt, name), getattr(out_ref, name), FWD_ATOL)
    _check("grad_hidden", gh, gh_pt, gh_ref, GRAD_ATOL[dtype])
    _check("grad_weight", gw, gw_pt, gw_ref, GRAD_ATOL[dtype])


def test_gpu_block_configuration_under_the_interpreter(monkeypatch):
    """The GPU block sizes (16/32-row blocks, 128-wide H chunks, several row-range programs whose fp32
    partial weight gradients the launcher sums) run too, not only the interpreter's big blocks."""
    monkeypatch.setattr(kt, "_fwd_config", kt._gpu_fwd_config)
    monkeypatch.setattr(kt, "_bwd_config", kt._gpu_bwd_config)
    n, h, k = 257, 300, 9
    _, block_h, p, _ = kt._gpu_bwd_config(n, h)
    assert p > 1 and h % block_h != 0, "this shape must exercise partial sums and a masked H tail"
    hidden, weight, values, score_ids = _inputs(n, h, k, torch.bfloat16, True, seed=7)
    (out, (gh, gw)), (out_pt, (gh_pt, gw_pt)), (out_ref, (gh_ref, gw_ref)) = _run_three(
        hidden, weight, values, 0.9, score_ids, _upstream(n, k, ("mean", "var", "probs"), seed=8)
    )
    for name in OUTPUTS:
        _check(name, getattr(out, name), getattr(out_pt, name), getattr(out_ref, name), FWD_ATOL)
    _check("grad_hidden", gh, gh_pt, gh_ref, GRAD_ATOL[torch.bfloat16])
    _check("grad_weight", gw, gw_pt, gw_ref, GRAD_ATOL[torch.bfloat16])


@pytest.mark.parametrize("h", [1, 17])
def test_hidden_sizes_below_one_block(h):
    """Any H works: H smaller than tl.dot's minimum of 16 is padded by the masks."""
    hidden, weight, values, score_ids = _inputs(7, h, 5, torch.float16, True, seed=16)
    (out, (gh, gw)), (out_pt, (gh_pt, gw_pt)), (out_ref, (gh_ref, gw_ref)) = _run_three(
        hidden, weight, values, 1.0, score_ids, _upstream(7, 5, OUTPUTS, seed=17)
    )
    for name in OUTPUTS:
        _check(name, getattr(out, name), getattr(out_pt, name), getattr(out_ref, name), FWD_ATOL)
    _check("grad_hidden", gh, gh_pt, gh_ref, GRAD_ATOL[torch.float16])
    _check("grad_weight", gw, gw_pt, gw_ref, GRAD_ATOL[torch.float16])


def test_only_hidden_or_only_weight_requires_grad():
    n, h, k = 7, 64, 5
    hidden, weight, values, score_ids = _inputs(n, h, k, torch.float32, True, seed=9)
    for which in ("hidden", "weight"):
        hk, wk = (
            hidden.clone().requires_grad_(which == "hidden"),
            weight.clone().requires_grad_(which == "weight"),
        )
        hr, wr = (
            hidden.clone().requires_grad_(which == "hidden"),
            weight.clone().requires_grad_(which == "weight"),
        )
        leaf_k, leaf_r = (hk, hr) if which == "hidden" else (wk, wr)
        (g_k,) = torch.autograd.grad(
            score_head(hk, wk, values, 1.0, score_ids, backend="triton").var.sum(), leaf_k
        )
        (g_r,) = torch.autograd.grad(score_head_ref(hr, wr, values, 1.0, score_ids).var.sum(), leaf_r)
        torch.testing.assert_close(g_k, g_r, atol=1e-5, rtol=1e-5)


def test_values_gradient_matches_reference():
    n, h, k = 7, 64, 5
    hidden, weight, values, score_ids = _inputs(n, h, k, torch.float32, True, seed=10)
    vk, vr = _leaf(values), _leaf(values)
    gm, gv = torch.randn(n), torch.randn(n)
    out = score_head(hidden, weight, vk, 1.0, score_ids, backend="triton")
    ref = score_head_ref(hidden, weight, vr, 1.0, score_ids)
    (g_k,) = torch.autograd.grad((out.mean * gm).sum() + (out.var * gv).sum(), vk)
    (g_r,) = torch.autograd.grad((ref.mean * gm).sum() + (ref.var * gv).sum(), vr)
    torch.testing.assert_close(g_k, g_r, atol=1e-5, rtol=1e-5)


def test_repeated_score_id_accumulates_both_contributions():
    """A token listed twice in score_ids gets the sum of both rows' gradients (index_add_, not scatter)."""
    hidden, weight, values, _ = _inputs(7, 64, 3, torch.float32, True, seed=11)
    score_ids = torch.tensor([4, 9, 4])
    wk, wr = _leaf(weight), _leaf(weight)
    (g_k,) = torch.autograd.grad(
        score_head(hidden, wk, values, 1.0, score_ids, backend="triton").mean.sum(), wk
    )
    (g_r,) = torch.autograd.grad(score_head_ref(hidden, wr, values, 1.0, score_ids).mean.sum(), wr)
    torch.testing.assert_close(g_k, g_r, atol=1e-5, rtol=1e-5)
    assert g_k[4].abs().sum() > 0


def test_zero_rows():
    hidden, weight, values, score_ids = _inputs(0, 64, 5, torch.float32, True)
    hidden.requires_grad_()
    out = score_head(hidden, weight, values, 1.0, score_ids, True, backend="triton")
    assert out.probs.shape == (0, 5) and out.mean.shape == (0,) and out.logprobs.shape == (0, 5)
    (g,) = torch.autograd.grad(out.mean.sum(), hidden, allow_unused=True)
    assert g is None or g.shape == (0, 64)


def test_logprobs_absent_unless_requested():
    hidden, weight, values, score_ids = _inputs(7, 64, 5, torch.float32, True)
    hidden.requires_grad_()
    out = score_head(hidden, weight, values, 1.0, score_ids, backend="triton")
    assert out.logprobs is None
    # the [0, K] placeholder of the custom op must not confuse the backward
    (g,) = torch.autograd.grad(out.probs.sum() + out.mean.sum(), hidden)
    assert torch.isfinite(g).all()


def test_out_of_range_score_ids_raise():
    hidden, weight, values, _ = _inputs(3, 64, 2, torch.float32, True)
    with pytest.raises(IndexError, match="score_ids"):
        score_head(hidden, weight, values, score_ids=torch.tensor([0, weight.shape[0]]), backend="triton")


# --- dispatch ------------------------------------------------------------------------------------------


@pytest.fixture
def kernel_calls(monkeypatch) -> list[str]:
    """Records calls to the Triton forward launcher (still running it)."""
    calls: list[str] = []
    real = kt.score_head_fwd

    def spy(*args, **kwargs):
        calls.append("fwd")
        return real(*args, **kwargs)

    monkeypatch.setattr(kt, "score_head_fwd", spy)
    return calls


def _small():
    hidden, weight, values, score_ids = _inputs(3, 64, 5, torch.float32, True)
    return hidden, weight, values, score_ids


@pytest.mark.parametrize(
    ("env", "backend", "uses_kernel"),
    [
        (None, None, False),  # auto on CPU tensors -> reference
        ("auto", None, False),
        ("torch", None, False),
        ("triton", None, True),
        ("TRITON ", None, True),  # case and surrounding blanks are forgiven
        ("torch", "triton", True),  # the argument wins over the environment
        ("triton", "torch", False),
        ("triton", "auto", False),
    ],
)
def test_dispatch(monkeypatch, kernel_calls, env, backend, uses_kernel):
    if env is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, env)
    hidden, weight, values, score_ids = _small()
    out = score_head(hidden, weight, values, 1.0, score_ids, backend=backend)
    assert kernel_calls == (["fwd"] if uses_kernel else [])
    torch.testing.assert_close(out.mean, score_head_ref(hidden, weight, values, 1.0, score_ids).mean)


def test_unknown_backend_is_named(monkeypatch):
    hidden, weight, values, score_ids = _small()
    with pytest.raises(ValueError, match="'cuda-please'"):
        score_head(hidden, weight, values, score_ids=score_ids, backend="cuda-please")
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=f"{ENV_VAR}.*'fast'"):
        score_head(hidden, weight, values, score_ids=score_ids)


def test_forced_triton_on_cpu_outside_the_interpreter_raises(monkeypatch):
    monkeypatch.setattr(kt, "INTERPRETED", False)
    hidden, weight, values, score_ids = _small()
    with pytest.raises(RuntimeError, match=r"needs CUDA tensors.*TRITON_INTERPRET=1"):
        score_head(hidden, weight, values, score_ids=score_ids, backend="triton")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("k33", "K <= 32"),
        ("fp64", "fp32, fp16 or bf16"),
        ("h_mismatch", "H="),
        ("k_mismatch", "K=4"),
    ],
)
def test_forced_triton_rejects_what_the_kernel_cannot_take(kernel_calls, change, match):
    k = 33 if change == "k33" else 4
    hidden, weight, values, _ = _inputs(3, 64, k, torch.float32, False)
    if change == "fp64":
        hidden = hidden.double()
    if change == "h_mismatch":
        weight = weight[:, :32]
    if change == "k_mismatch":
        weight = torch.cat([weight, weight[:1]])
    with pytest.raises(ValueError, match=match):
        score_head(hidden, weight, values, backend="triton")
    assert kernel_calls == []


def test_missing_triton_raises_missing_dependency(monkeypatch):
    monkeypatch.setattr(sh, "_triton_impl", None)
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.delitem(sys.modules, "zreward_deploy.kernels._score_head_triton")
    hidden, weight, values, score_ids = _small()
    with pytest.raises(MissingDependencyError, match=r"zreward-deploy\[triton\]"):
        score_head(hidden, weight, values, score_ids=score_ids, backend="triton")
    # auto never needs Triton on CPU tensors
    torch.testing.assert_close(
        score_head(hidden, weight, values, score_ids=score_ids).mean,
        score_head_ref(hidden, weight, values, score_ids=score_ids).mean,
    )


def test_module_imports_without_triton():
    """`import zreward_deploy.kernels.score_head` must not import Triton (a fresh interpreter proves it)."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import zreward_deploy.kernels.score_head as m\n"
        "assert 'zreward_deploy.kernels._score_head_triton' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# --- torch.compile and the custom ops --------------------------------------------------------------------


def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) kernels, autograd registration and AOT dispatch of both custom ops."""
    hidden, weight, values, score_ids = _inputs(7, 64, 5, torch.float32, True, seed=12)
    fwd_args = (_leaf(hidden), _leaf(weight), score_ids, values, 0.9, True)
    torch.library.opcheck(torch.ops.zreward.score_head_fwd.default, fwd_args)
    probs, mean, _, _ = torch.ops.zreward.score_head_fwd(hidden, weight, score_ids, values, 0.9, False)
    up = _upstream(7, 5, OUTPUTS, seed=13)
    bwd_args = (up["probs"], up["mean"], None, up["logprobs"], hidden, weight, score_ids, values, probs, mean,
                0.9, True, True)  # fmt: skip
    torch.library.opcheck(torch.ops.zreward.score_head_bwd.default, bwd_args, test_utils=("test_schema",
                          "test_faketensor", "test_aot_dispatch_dynamic"))  # fmt: skip


def test_torch_compile_fullgraph_forward_and_backward(monkeypatch):
    """torch.compile traces the custom op (fake kernel + autograd formula) without a graph break.

    Backend ``aot_eager``: it runs dynamo and AOT autograd, the parts that need the fake kernels and the
    autograd registration; inductor would add only C++ code generation for the surrounding ops, which costs
    ~25 s on a 2-core CPU and treats the custom op as the same opaque call.
    """
    hidden, weight, values, score_ids = _inputs(7, 100, 9, torch.bfloat16, True, seed=14)
    gm, gv = torch.randn(7), torch.randn(7)

    def loss(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = score_head(h, w, values, 0.8, score_ids, True, backend="triton")
        return (out.mean * gm).sum() + (out.var * gv).sum() + out.logprobs[:, 0].sum()

    # traced before any eager call, so the lazy import of the Triton module happens under dynamo too
    monkeypatch.setattr(sh, "_triton_impl", None)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    h1, w1, h2, w2 = _leaf(hidden), _leaf(weight), _leaf(hidden), _leaf(weight)
    traced = compiled(h2, w2)
    eager = loss(h1, w1)
    torch.testing.assert_close(traced, eager)
    g_eager = torch.autograd.grad(eager, [h1, w1])
    g_traced = torch.autograd.grad(traced, [h2, w2])
    for a, b in zip(g_traced, g_eager, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script_method inside inductor's imports
def test_torch_compile_inductor_runs_the_custom_op():
    """The default backend too: inductor keeps the custom op as an extern call and compiles the rest
    (C++ code generation on CPU: ~25 s on 2 cores, hence ``slow``)."""
    hidden, weight, values, score_ids = _inputs(7, 64, 5, torch.float32, True, seed=18)

    def loss(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = score_head(h, w, values, 1.1, score_ids, backend="triton")
        return (out.mean * 2 + out.var).sum()

    h1, w1, h2, w2 = _leaf(hidden), _leaf(weight), _leaf(hidden), _leaf(weight)
    traced = torch.compile(loss, fullgraph=True)(h2, w2)
    eager = loss(h1, w1)
    torch.testing.assert_close(traced, eager)
    for a, b in zip(torch.autograd.grad(traced, [h2, w2]), torch.autograd.grad(eager, [h1, w1]), strict=True):
        torch.testing.assert_close(a, b)


# --- export keeps plain ops ------------------------------------------------------------------------------


class _Head(torch.nn.Module):
    def __init__(self, backend: str):
        super().__init__()
        _, weight, values, score_ids = _inputs(4, 16, 3, torch.float32, True, seed=15)
        self.weight = torch.nn.Parameter(weight)
        self.register_buffer("score_ids", score_ids)
        self.register_buffer("values", values)
        self.backend = backend

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = score_head(hidden, self.weight, self.values, 1.0, self.score_ids, backend=self.backend)
        return out.probs, out.mean, out.var


# torch.jit.trace and the TorchScript ONNX exporter are deprecated, yet still what some export toolchains
# call; the test is about what score_head puts in their graphs
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_export_and_jit_trace_use_reference_ops():
    model, x = _Head("triton"), torch.randn(4, 16)
    ep = torch.export.export(model, (x,))
    targets = {str(node.target) for node in ep.graph.nodes if node.op == "call_function"}
    assert not any("zreward" in t for t in targets), targets
    assert "aten.log_softmax.int" in targets
    traced = torch.jit.trace(model, (x,))
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert not any("zreward" in kind for kind in kinds), kinds


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_has_plain_ops_and_matches(tmp_path):
    onnx = pytest.importorskip("onnx", reason="the ONNX export test needs the [onnx] extra")
    ort = pytest.importorskip("onnxruntime", reason="the ONNX export test needs the [onnx] extra")
    model, x = _Head("triton"), torch.randn(4, 16)
    path = tmp_path / "head.onnx"
    # the TorchScript exporter: the dynamo exporter needs onnxscript, which the [onnx] extra does not pin
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["hidden"],
                      output_names=["probs", "mean", "var"], dynamic_axes={"hidden": {0: "n"}})  # fmt: skip
    graph = onnx.load(str(path)).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}, "custom-domain ops in the export"
    x2 = torch.randn(9, 16)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"hidden": x2.numpy()}
    )
    want = model(x2)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(torch.from_numpy(a), b.detach(), atol=1e-5, rtol=1e-5)

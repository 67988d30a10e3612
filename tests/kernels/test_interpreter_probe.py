"""The interpreter probe (``_score_head_triton.interpreter_problem``): an interpreter that cannot run the
kernels here (Triton 3.6 beside NumPy 2.5) is found by running a probe kernel, and a forced kernel call on
CPU tensors then fails with that reason instead of Triton's bare ``TypeError`` from inside the loop."""

from __future__ import annotations

import pytest
import torch

from zreward_deploy.kernels import score_head as sh

kt = pytest.importorskip("zreward_deploy.kernels._score_head_triton", reason="triton is not installed")


class _FailingLaunch:
    """Stands in for the probe kernel of an interpreter that cannot convert its loop bound."""

    def __getitem__(self, grid):
        def launch(*args):  # Triton wraps the TypeError of int(one-element array) in its InterpreterError
            cause = TypeError("only 0-dimensional arrays can be converted to Python scalars")
            raise RuntimeError(f"InterpreterError({cause!r})") from cause

        return launch


@pytest.fixture
def broken_interpreter(monkeypatch):
    if not kt.INTERPRETED:  # pragma: no cover - conftest sets TRITON_INTERPRET=1
        pytest.skip("Triton was imported without TRITON_INTERPRET=1; the probe only runs interpreted")
    monkeypatch.setattr(kt, "_runtime_loop_probe", _FailingLaunch())
    kt.interpreter_problem.cache_clear()
    yield
    kt.interpreter_problem.cache_clear()


def test_the_probe_names_triton_numpy_and_the_cause(broken_interpreter):
    problem = kt.interpreter_problem()
    assert problem is not None
    assert f"Triton {kt.triton.__version__}" in problem and "NumPy" in problem and "TypeError" in problem
    assert "compiled kernels on a GPU are not affected" in problem


def test_a_forced_kernel_on_cpu_fails_with_the_probes_reason(broken_interpreter):
    hidden, weight = torch.randn(4, 32), torch.randn(8, 32)
    values = torch.arange(1.0, 6.0)
    with pytest.raises(RuntimeError, match=r"cannot run on CPU tensors here: Triton .* NumPy"):
        sh.score_head(hidden, weight, values, 1.0, torch.arange(5), backend="triton")
    # the default (auto) never runs the kernel on CPU tensors: the reference answers
    out = sh.score_head(hidden, weight, values, 1.0, torch.arange(5))
    assert torch.allclose(out.probs.sum(-1), torch.ones(4))


def test_the_probe_passes_where_the_interpreter_works():
    """Here (Triton and NumPy of this environment) the probe either passes, and the kernel tests run, or
    names its reason, and they are skipped with it; never a bare failure."""
    if not kt.INTERPRETED:  # pragma: no cover
        pytest.skip("Triton was imported without TRITON_INTERPRET=1")
    problem = kt.interpreter_problem()
    if problem is None:
        x = torch.arange(1.0, 4.0)
        kt._runtime_loop_probe[(1,)](x, 3)
        assert x[0].item() == 6.0  # 1 + 2 + 3: the loop ran over the run-time bound
    else:
        assert "NumPy" in problem

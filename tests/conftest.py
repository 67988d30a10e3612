"""Test-wide setup.

TRITON_INTERPRET must be set before any Triton kernel module is imported: it makes `@triton.jit`
kernels run on CPU tensors through Triton's interpreter, which is how CI tests the kernels. Ray 2.60
turns token auth on by default; tests run local clusters without it.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Tests never touch the network: a hub lookup would be a bug, so make it fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


def pytest_collection_modifyitems(config, items):
    # GPU tests carry a marker and skip with a stated reason; CUDA is queried here, at run-setup time
    # of the session, never at import time of a test module.
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible on this machine")
        for item in gpu_items:
            item.add_marker(skip)


# --------------------------------------------------------------------------------------------------
# Shared tiny models. Session-scoped: building one takes ~1 s, and tests must not mutate them (tests
# that train or edit weights build their own with `build_preset`).
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny():
    """``(model, processor)`` of the tiny preset (Qwen2 text, SigLIP vision), eval mode, seed 0."""
    from zreward_deploy.presets import build_preset

    return build_preset("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tiny, tmp_path_factory):
    """A saved model directory of the tiny preset (config.json, model.safetensors, tokenizer)."""
    model, processor = tiny
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------------
# Fuzz tests: a per-example time limit, so that a hang fails the example instead of stalling CI.
# --------------------------------------------------------------------------------------------------


class ExampleTimeout(Exception):
    """Raised inside a fuzz example that ran past its time limit (a hang is a failure, never a wait)."""


@pytest.fixture(scope="session")
def time_limit():
    """``with time_limit(seconds): ...`` raises :class:`ExampleTimeout` if the block runs longer.

    SIGALRM-based (main thread, POSIX), like pytest-timeout's signal method, which is not a dependency.
    A blocking ``open()`` of a FIFO is interrupted too: the signal handler raises inside the system call.
    Session-scoped, so hypothesis ``@given`` tests can take it (it holds no per-test state).
    """
    import contextlib
    import signal

    @contextlib.contextmanager
    def limit(seconds: float):
        def on_alarm(signum, frame):
            raise ExampleTimeout(f"example ran longer than {seconds} s (a hang)")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    return limit

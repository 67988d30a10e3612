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

import pytest  # noqa: E402


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

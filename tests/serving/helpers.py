"""Helpers of the serving tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np

from zreward_deploy.scoring import Scorer


class ControlledScorer(Scorer):
    """A torch :class:`Scorer` whose ``score`` calls can be held (``gate``), made to raise once
    (``fail_next``) and are recorded (``calls``: the prompts of each batch, in order)."""

    def __init__(self, model, processor, **kwargs):
        super().__init__(model, processor, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[list[str]] = []
        self.fail_next = False

    def score(self, images, prompts, **kwargs):
        self.calls.append(list(prompts))
        self.entered.set()
        assert self.gate.wait(30), "test gate never opened"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected fault in the scorer")
        return super().score(images, prompts, **kwargs)


def random_image(seed: int, size: tuple[int, int] = (40, 48)) -> np.ndarray:
    """uint8 ``[H, W, 3]``."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def png_b64(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def v1_body(images, prompts, **options):
    return {
        "protocol_version": "1",
        "requests": [{"text": p, "image_b64": png_b64(im)} for im, p in zip(images, prompts, strict=True)],
        "options": options,
    }

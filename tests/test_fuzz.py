"""Property-based fuzzing of the scoring entry points: whatever the input, the answer is a named error
(a ``ZRewardInputError`` subclass naming the item) or a finite result; never another exception, never a
hang (each example runs under a time limit), and never a lost result for the valid item beside it.

Entry points: image files -> ``score``; prompts -> ``score``; model folders -> ``from_pretrained`` (and a
score with what loaded); tensors -> ``score_tensor``. (JSONL lines -> ``data check`` is fuzzed in
tests/test_data_robustness.py; export folders in tests/export/test_export_integrity.py.)

Example counts are bounded so the file runs in well under a minute on two cores; hypothesis' database is
off so that a run is reproducible from its seed alone (``--hypothesis-seed``).
"""

import io
import json
import math
import shutil
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from zreward_deploy.errors import InvalidImageError, InvalidModelError, InvalidPromptError, ZRewardInputError
from zreward_deploy.scoring import Scorer

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def scorer(tiny):
    model, processor = tiny
    return Scorer(model, processor, max_batch_size=4)


def _assert_named_or_finite(result, index: int, error_types) -> None:
    if index in result.errors:
        error = result.errors[index]
        assert isinstance(error, error_types), repr(error)
        assert error.item is not None and error.reason
    else:
        assert torch.isfinite(result.probs[index]).all()
        assert torch.isfinite(result.reward[index])


# --------------------------------------------------------------------------------------------------
# Image files -> score
# --------------------------------------------------------------------------------------------------


def _encoded(fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    array = np.random.default_rng(size[0] * 31 + size[1]).integers(0, 256, (size[1], size[0], 3), np.uint8)
    image = Image.fromarray(array).convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


_SEEDS = [
    _encoded(fmt, mode, size)
    for fmt, mode in [
        ("PNG", "RGB"),
        ("PNG", "RGBA"),
        ("PNG", "P"),
        ("JPEG", "RGB"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
        ("WEBP", "RGB"),
        ("ICO", "RGBA"),
        ("PPM", "RGB"),
    ]
    for size in [(16, 16), (7, 3)]
]
# DDS with an unknown pixel format (NotImplementedError inside PIL) as one more seed
_SEEDS.append(
    b"DDS "
    + struct.pack("<7I", 124, 0x1007, 8, 8, 0, 0, 0)
    + b"\0" * 44
    + struct.pack("<2I4s5I", 32, 0x4, b"XXXX", 0, 0, 0, 0, 0)
    + struct.pack("<5I", 0x1000, 0, 0, 0, 0)
    + b"\0" * 64
)


@st.composite
def image_bytes(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "header"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "header" and len(data) > 8:  # damage dimensions and chunk lengths, where bombs live
            offset = draw(st.integers(0, min(40, len(data) - 4)))
            data[offset : offset + 4] = struct.pack(">I", draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        return bytes(data)
    return draw(st.binary(max_size=64))  # plain garbage now and then


@FUZZ
@given(data=image_bytes(), suffix=st.sampled_from([".png", ".jpg", ".gif", ".dds", ".bin", ""]))
def test_any_image_file_gives_a_named_error_or_a_finite_score(
    scorer, tmp_path_factory, time_limit, data, suffix
):
    folder = tmp_path_factory.mktemp("fuzz_image")
    path = folder / f"image{suffix}"
    path.write_bytes(data)
    good = np.zeros((12, 12, 3), dtype=np.uint8)
    with time_limit(20):
        result = scorer.score([str(path), good], "a red cube", errors="collect")
    _assert_named_or_finite(result, 0, InvalidImageError)
    _assert_named_or_finite(result, 1, ())  # the valid neighbour is always scored


# --------------------------------------------------------------------------------------------------
# Prompts -> score
# --------------------------------------------------------------------------------------------------

# Every code point, surrogates and control characters included; long texts to pass the token limit.
_ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=600)


@FUZZ
@given(prompt=st.one_of(_ANY_TEXT, st.just(""), st.just(" \t\n"), st.text(max_size=3).map(lambda s: s * 400)))
def test_any_prompt_gives_a_named_error_or_a_finite_score(scorer, time_limit, prompt):
    images = [np.zeros((8, 8, 3), dtype=np.uint8)] * 2
    with time_limit(20):
        result = scorer.score(images, [prompt, "a blue ball"], errors="collect")
    _assert_named_or_finite(result, 0, InvalidPromptError)
    _assert_named_or_finite(result, 1, ())


@FUZZ
@given(prompt=st.one_of(st.none(), st.integers(), st.binary(max_size=8), st.lists(st.text(max_size=3))))
def test_prompts_of_other_types_are_named_errors(scorer, time_limit, prompt):
    images = [np.zeros((8, 8, 3), dtype=np.uint8)] * 2
    with time_limit(20):
        result = scorer.score(images, [prompt, "a blue ball"], errors="collect")
    _assert_named_or_finite(result, 0, InvalidPromptError)
    _assert_named_or_finite(result, 1, ())


# --------------------------------------------------------------------------------------------------
# Model folders -> from_pretrained
# --------------------------------------------------------------------------------------------------

_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "zreward_processor.json",
]
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def damage(draw):
    name = draw(st.sampled_from(_FILES))
    kind = draw(st.sampled_from(["truncate", "garbage", "delete", "set_key", "flip"]))
    if kind == "set_key" and name.endswith(".json"):
        return name, kind, (draw(st.text(min_size=1, max_size=24)), draw(_JSON_VALUES))
    return name, kind, (draw(st.floats(0, 1)), draw(st.binary(max_size=32)), draw(st.integers(0, 255)))


def _apply(folder, name, kind, arg) -> None:
    path = folder / name
    raw = path.read_bytes()
    if kind == "delete":
        path.unlink()
    elif kind == "truncate":
        path.write_bytes(raw[: int(arg[0] * len(raw))])
    elif kind == "garbage":
        path.write_bytes(arg[1])
    elif kind == "flip" and raw:
        at = int(arg[0] * (len(raw) - 1))
        path.write_bytes(raw[:at] + bytes([arg[2]]) + raw[at + 1 :])
    elif kind == "set_key" and name.endswith(".json"):
        key, value = arg
        try:
            obj = json.loads(raw)
        except ValueError:  # an earlier damage already broke the file
            return
        if isinstance(obj, dict):
            # a known key half of the time, so the mutation reaches the validation of real fields
            keys = sorted(obj)
            target = keys[hash(key) % len(keys)] if keys and len(key) % 2 else key
            obj[target] = value
            path.write_text(json.dumps(obj))


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(damages=st.lists(damage(), min_size=1, max_size=2))
def test_any_damaged_model_folder_is_refused_by_name_or_scores_finitely(
    tiny_dir, tmp_path_factory, time_limit, damages
):
    folder = tmp_path_factory.mktemp("fuzz_model") / "model"
    shutil.copytree(tiny_dir, folder)
    for name, kind, arg in damages:
        if (folder / name).exists():
            _apply(folder, name, kind, arg)
    with time_limit(30):
        try:
            scorer = Scorer.from_pretrained(folder)
        except ZRewardInputError as exc:
            assert exc.item is not None and exc.reason
            return
        images = [np.zeros((8, 8, 3), dtype=np.uint8)]
        try:
            result = scorer.score(images, "a cube", errors="collect")
        except ZRewardInputError as exc:  # e.g. a config that loads but names templates it cannot fill
            assert exc.reason
            return
    _assert_named_or_finite(result, 0, (InvalidModelError, InvalidPromptError, InvalidImageError))


# --------------------------------------------------------------------------------------------------
# Tensors -> score_tensor
# --------------------------------------------------------------------------------------------------

_DTYPES = [
    torch.uint8,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
]
_SPECIAL = st.sampled_from(
    [0.0, 1.0, 0.5, -1e-4, 1.0005, -1.0, 255.0, 1e6, 1e30, math.nan, math.inf, -math.inf]
)


@st.composite
def image_tensors(draw) -> torch.Tensor:
    shape = draw(
        st.one_of(
            st.tuples(st.integers(0, 3), st.sampled_from([3]), st.integers(0, 24), st.integers(0, 24)),
            st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple),  # any rank
        )
    )
    dtype = draw(st.sampled_from(_DTYPES))
    base = torch.rand(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    if base.numel() and draw(st.booleans()):
        flat = base.view(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(_SPECIAL)
    if dtype in (torch.uint8, torch.int32, torch.int64):
        base = torch.nan_to_num(base * 255, nan=0.0, posinf=255.0, neginf=0.0).clamp(0, 255)
    return base.to(dtype)


@FUZZ
@given(images=image_tensors())
def test_any_tensor_gives_a_named_error_or_a_finite_differentiable_score(scorer, time_limit, images):
    with time_limit(20):
        try:
            result = scorer.score_tensor(images, "a cube")
        except InvalidImageError as exc:
            assert exc.item is not None and exc.reason
            return
    assert torch.isfinite(result.reward).all()
    assert torch.isfinite(result.probs).all()

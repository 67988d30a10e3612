"""ONNX export of native HF VLMs (export/native_towers.py, export/native_graph.py, export/onnx.py).

References are the HF model itself: each static tower against the HF tower's own forward (packed images,
``grid_thw``; SmolVLM's ``get_image_features``), the exported module and the ONNX graph against
``NativeRewardModel.forward`` (the HF top-level forward with its masked writes), and the ONNX folder's
scores against the torch ``Scorer`` on the native checkpoint folder. Tiny presets with weights redrawn from
N(0, 0.1), so that the score distributions are far from uniform and a wrong image token, position or mask
shows. Runs on both transformers lines (optimum exporter on 4.57 where it is installed, torch elsewhere).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from zreward_deploy.errors import InvalidModelError

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm", "idefics3")
PROMPTS = [
    "a red cube",
    "two blue spheres to the left of a yellow cone",
    "a cat",
    "three green birds on a wire",
]


def _native(family: str, seed: int = 0, image_size: int = 32):
    from zreward_deploy.native import build_native_preset

    model, processor = build_native_preset(family, seed=seed, image_size=image_size)
    with torch.no_grad():
        for p in model.model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    return model.eval(), processor


def hf_tower_features(reward, pixel_values):
    """The HF tower's own forward on ``[B, 3, H, W]`` as ``([B, N, D], deepstack)``, on either line."""
    inner = reward.model.model
    b = pixel_values.shape[0]
    if reward.family in ("smolvlm", "idefics3"):
        out = inner.get_image_features(pixel_values.unsqueeze(1))
        feats = getattr(out, "pooler_output", out)  # transformers 5: a list, one entry per item
        feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
        return feats.reshape(b, -1, feats.shape[-1]), []
    inputs = reward.hf_image_inputs(pixel_values)
    out = inner.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    if hasattr(out, "pooler_output"):  # transformers 5: a model output
        feats, deepstack = out.pooler_output, list(getattr(out, "deepstack_features", None) or [])
    elif isinstance(out, tuple):  # 4.57 Qwen3-VL: (merged, deepstack)
        feats, deepstack = out
    else:
        feats, deepstack = out, []
    n = feats.shape[0] // b
    return feats.view(b, n, -1), [d.view(b, n, -1) for d in deepstack]


# --------------------------------------------------------------------------------------------------
# Static towers against the HF towers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "image_size"),
    [
        ("qwen2_vl", 32),
        ("qwen2_5_vl", 32),
        ("qwen2_5_vl", 24),
        ("qwen3_vl", 32),
        ("qwen3_vl", 48),
        ("smolvlm", 32),
        ("idefics3", 32),
    ],
)
def test_static_tower_equals_the_hf_tower(family, image_size):
    """Same features (and Qwen3-VL deepstack features) as the HF tower, for a batch of 3 images. Qwen2.5-VL
    at 24 px has partial windows (3 x 3 merged tokens, windows of 2 x 2); Qwen3-VL at 48 px interpolates
    its 4 x 4 learned positions to a 12 x 12 grid."""
    from zreward_deploy.export.native_towers import static_vision_tower

    model, _ = _native(family, image_size=image_size)
    tower = static_vision_tower(model).eval()
    pixels = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ours_deep = tower(pixels)
        want, want_deep = hf_tower_features(model, pixels)
    assert ours.shape == want.shape == (3, model.num_image_tokens, 64)
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-5)
    assert len(ours_deep) == len(want_deep) == (2 if family == "qwen3_vl" else 0)
    for a, b in zip(ours_deep, want_deep, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (want[0] - want[1]).abs().max() > 1e-2  # the images differ, so a mixed-up batch would show


def test_qwen2_5_vl_windows_matter():
    """Negative control: full attention in every block (no windows) gives other features."""
    from zreward_deploy.export.native_towers import static_vision_tower

    model, _ = _native("qwen2_5_vl")
    tower = static_vision_tower(model).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        good, _ = tower(pixels)
        tower.full_attention_blocks = set(range(len(model.model.model.visual.blocks)))
        full, _ = tower(pixels)
    assert (good - full).abs().max() > 1e-3


def test_smolvlm_position_ids_are_the_ones_hf_uses():
    """SmolVLM's vision position ids depend on the transformers version (on 4.55+ fp32 ids collide, issue
    #41190): the static tower's table reproduces the fp32 HF embedding layer's output exactly, collisions
    included (where they occur, the collision-free ids give another output)."""
    from zreward_deploy.export.native_towers import static_vision_tower

    model, _ = _native("smolvlm")
    tower = static_vision_tower(model)
    embeddings = model.model.model.vision_model.embeddings
    ids = tower.position_ids
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hf = embeddings(pixel_values=pixels, patch_attention_mask=torch.ones(2, 8, 8, dtype=torch.bool))
        patches = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        ours = patches + embeddings.position_embedding(ids)[None]
        ideal = patches + embeddings.position_embedding(torch.arange(64))[None]
    torch.testing.assert_close(ours, hf, rtol=0, atol=0)
    if not torch.equal(ids, torch.arange(64)):
        assert len(set(ids.tolist())) < 64 and (ideal - hf).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------
# The exported module against NativeRewardModel.forward
# --------------------------------------------------------------------------------------------------


def _weights(dims):
    return torch.arange(1, len(dims) + 1, dtype=torch.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_module_equals_the_native_forward(family):
    from zreward_deploy.export.native_graph import NativeOnnxModel

    model, processor = _native(family, seed=1)
    dims = ["realism", "alignment", "plausibility"]
    suffixes = processor.suffix_ids(dims)
    graph = NativeOnnxModel(model, suffixes, _weights(dims)).eval()
    ids, mask = processor.encode_prompts(PROMPTS[:3])  # ragged, right-padded
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = graph(ids, mask, pixels)
        want = model(pixels, ids, mask, suffixes)
    torch.testing.assert_close(got["probs"], want.probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(got["std"], want.std, rtol=0, atol=1e-5)
    w = _weights(dims) / _weights(dims).sum()
    torch.testing.assert_close(got["reward"], want.mean @ w, rtol=0, atol=1e-5)
    assert (want.probs.max(-1).values > 0.3).any()  # far from uniform: the comparison can fail


# --------------------------------------------------------------------------------------------------
# Exported folders: ONNX Runtime at untraced shapes, the round trip, fp16
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=FAMILIES)
def native_export(request, tmp_path_factory):
    """``(family, native folder, export folder, model, processor)``: a saved native checkpoint and its
    export through the CLI (``zreward export onnx --model DIR``), fp32."""
    from zreward_deploy.cli import main
    from zreward_deploy.native import save_native

    family = request.param
    model, processor = _native(family, seed=3)
    root = tmp_path_factory.mktemp(f"native_export_{family}")
    save_native(model, processor, root / "model")
    code = main(["export", "onnx", "--model", str(root / "model"), "--out", str(root / "onnx")])
    assert code == 0
    return family, root / "model", root / "onnx", model, processor


def test_native_export_folder_describes_itself(native_export):
    from zreward_deploy.export.contract import verify_export

    family, _, out, model, _ = native_export
    meta = verify_export(out)
    assert meta["model_type"] == family and meta["image_size"] == 32
    assert meta["num_image_tokens"] == model.num_image_tokens and meta["external_data"] is None
    assert meta["validation"]["passed"] is True
    for name in ("config.json", "zreward_native.json", "preprocessor_config.json", "zreward_processor.json"):
        assert name in meta["files"]
    assert json.loads((out / "config.json").read_text())["model_type"] == family  # the HF config


def test_onnx_runtime_matches_the_native_forward_at_untraced_shapes(native_export):
    """Batch 4 (trace: 2) with ragged right padding and a text length the trace (16) did not see."""
    from zreward_deploy.export.ort import OrtScorer

    _, _, out, model, processor = native_export
    scorer = OrtScorer.from_pretrained(out)
    dims = scorer.dimensions
    ids, mask = processor.encode_prompts(PROMPTS)
    assert ids.shape[1] != 16 and len(set(mask.sum(1).tolist())) > 2
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    got = scorer.run(ids, mask, pixels)
    with torch.no_grad():
        want = model(pixels, ids, mask, processor.suffix_ids(dims))
    torch.testing.assert_close(got["probs"], want.probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(got["mean"], want.mean, rtol=0, atol=4e-5)


def test_round_trip_scores_equal_the_torch_scorer_on_the_native_folder(native_export):
    from zreward_deploy.scoring import Scorer, load_scorer

    _, folder, out, _, _ = native_export
    gen = torch.Generator().manual_seed(6)
    images = [torch.rand(3, 40, 52, generator=gen), torch.rand(3, 32, 32, generator=gen)]
    prompts = PROMPTS[:2]
    onnx = load_scorer(out, backend="onnx").score(images, prompts)
    torch_ = Scorer.from_pretrained(folder).score(images, prompts)
    assert onnx.dimensions == torch_.dimensions == ["alignment", "realism", "aesthetics", "plausibility"]
    torch.testing.assert_close(onnx.probs, torch_.probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(onnx.reward, torch_.reward, rtol=0, atol=4e-5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "smolvlm"])
def test_fp16_native_export_validates(family, tmp_path):
    """fp16 graphs (Qwen2.5-VL: windows; SmolVLM: its fp16 position ids) pass validation against the fp32
    model with the fp16 tolerance, and score within it in ONNX Runtime."""
    from zreward_deploy.export.contract import ATOL
    from zreward_deploy.export.onnx import OnnxExportConfig, export_onnx
    from zreward_deploy.export.ort import OrtScorer

    model, processor = _native(family, seed=4)
    meta = export_onnx(model, tmp_path / "fp16", OnnxExportConfig(dtype="fp16"), processor=processor)
    assert meta["validation"]["passed"] and meta["inputs"]["pixel_values"]["dtype"] == "float16"
    scorer = OrtScorer.from_pretrained(tmp_path / "fp16")
    ids, mask = processor.encode_prompts(PROMPTS[:3])
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    got = scorer.run(ids, mask, pixels)
    with torch.no_grad():
        want = model(pixels, ids, mask, processor.suffix_ids(scorer.dimensions))
    assert got["probs"].dtype == torch.float32
    torch.testing.assert_close(got["probs"], want.probs, rtol=0, atol=ATOL["fp16"])


# --------------------------------------------------------------------------------------------------
# External data (one model.onnx.data beside model.onnx)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def external_export(tmp_path_factory):
    from zreward_deploy.export.onnx import OnnxExportConfig, export_onnx

    model, processor = _native("qwen2_vl", seed=5)
    out = tmp_path_factory.mktemp("external") / "onnx"
    cfg = OnnxExportConfig(external_data="always", dimensions=("realism", "aesthetics"))
    meta = export_onnx(model, out, cfg, processor=processor)
    return out, meta, model, processor


def test_external_data_export_verifies_loads_and_scores(external_export):
    from zreward_deploy.export.contract import EXTERNAL_DATA_FILE, file_sha256, verify_export
    from zreward_deploy.export.ort import OrtScorer

    out, meta, model, processor = external_export
    data = out / EXTERNAL_DATA_FILE
    assert meta["external_data"] == {
        "file": EXTERNAL_DATA_FILE,
        "sha256": file_sha256(data),
        "bytes": data.stat().st_size,
    }
    assert data.stat().st_size > (out / "model.onnx").stat().st_size  # the weights went out of the graph
    assert EXTERNAL_DATA_FILE not in meta["files"] and verify_export(out)["validation"]["passed"]
    scorer = OrtScorer.from_pretrained(out)
    ids, mask = processor.encode_prompts(PROMPTS[:3])
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        want = model(pixels, ids, mask, processor.suffix_ids(["realism", "aesthetics"]))
    torch.testing.assert_close(scorer.run(ids, mask, pixels)["probs"], want.probs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("damage", ["missing", "truncated", "swapped"])
def test_a_damaged_external_data_file_is_refused_by_name(external_export, tmp_path, damage):
    from zreward_deploy.export.contract import EXTERNAL_DATA_FILE
    from zreward_deploy.export.ort import OrtScorer

    out = tmp_path / "copy"
    shutil.copytree(external_export[0], out)
    data = out / EXTERNAL_DATA_FILE
    if damage == "missing":
        data.unlink()
    elif damage == "truncated":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:  # same size, other bytes
        raw = bytearray(data.read_bytes())
        raw[100] ^= 0xFF
        data.write_bytes(bytes(raw))
    why = {"missing": "missing", "truncated": "truncated", "swapped": "SHA-256"}[damage]
    with pytest.raises(InvalidModelError, match=why) as info:
        OrtScorer.from_pretrained(out)
    assert EXTERNAL_DATA_FILE in str(info.value)


def test_triton_repository_carries_the_external_data_and_the_native_processor(external_export, tmp_path):
    from zreward_deploy.export.contract import EXTERNAL_DATA_FILE
    from zreward_deploy.export.native_graph import load_export_processor
    from zreward_deploy.export.ort import create_session
    from zreward_deploy.export.triton_repo import write_triton_repository

    out, _, _, processor = external_export
    paths = write_triton_repository(out, tmp_path / "triton")
    version = paths["model"].parent
    assert (version / EXTERNAL_DATA_FILE).read_bytes() == (out / EXTERNAL_DATA_FILE).read_bytes()
    session = create_session(paths["model"])  # the copied graph finds its weights beside it
    ids, mask = processor.encode_prompts(PROMPTS[:1])
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
             "pixel_values": np.zeros((1, 3, 32, 32), dtype=np.float32)}  # fmt: skip
    assert session.run(["probs"], feeds)[0].shape == (1, 2, 5)
    client = load_export_processor(paths["client"])
    assert client.config.get_rubric().names == ["realism", "aesthetics"]
    assert client.prompt_ids("a red cube") == processor.prompt_ids("a red cube")


def test_per_tensor_external_data_is_gathered_into_one_file_and_never_refuses_it(external_export, tmp_path):
    """What the exporter writes for a model over 2 GB (one file per weight beside the graph) becomes one
    ``model.onnx.data`` under ``auto``; ``never`` refuses it."""
    import onnx

    from zreward_deploy.export.contract import EXTERNAL_DATA_FILE
    from zreward_deploy.export.onnx import store_external_data
    from zreward_deploy.export.validation import OnnxValidationError

    proto = onnx.load(str(external_export[0] / "model.onnx"))
    for mode in ("auto", "never"):
        folder = tmp_path / mode
        folder.mkdir()
        fresh = onnx.ModelProto()
        fresh.CopyFrom(proto)  # saving with external data moves the weights out of the proto it is given
        onnx.save_model(fresh, str(folder / "model.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=False, size_threshold=1024)  # fmt: skip
        assert len(list(folder.iterdir())) > 3
        if mode == "never":
            with pytest.raises(OnnxValidationError, match="external_data"):
                store_external_data(folder, mode)
            continue
        record = store_external_data(folder, mode)
        assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", EXTERNAL_DATA_FILE]
        assert record["bytes"] == (folder / EXTERNAL_DATA_FILE).stat().st_size > 0
        reloaded = onnx.load(str(folder / "model.onnx"))
        assert len(reloaded.graph.initializer) == len(proto.graph.initializer)


def test_external_data_mode_is_checked():
    from zreward_deploy.errors import ZRewardInputError
    from zreward_deploy.export.config import OnnxExportConfig

    with pytest.raises(ZRewardInputError, match="external_data"):
        OnnxExportConfig(external_data="sometimes")

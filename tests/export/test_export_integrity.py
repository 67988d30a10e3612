"""Export folders are written atomically and checked on every load (export/contract.py ``verify_export``).

A folder is either a complete export or refused: a kill part-way through ``zreward export onnx
--overwrite`` leaves the old export (or nothing), a graph from another export, a failed validation
(without the override), a file name leaving the folder and malformed metadata are all refused with
``InvalidModelError``, and ``--out`` never touches the source model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from zreward_deploy.cli import main
from zreward_deploy.errors import InvalidModelError, ZRewardInputError
from zreward_deploy.export import onnx as onnx_export
from zreward_deploy.export.contract import (
    METADATA_FILE,
    UnvalidatedExportWarning,
    file_sha256_and_identity,
    verify_export,
)
from zreward_deploy.export.onnx import OnnxExportConfig, OnnxValidationError, ensure_onnx_export, export_onnx
from zreward_deploy.export.ort import OrtScorer
from zreward_deploy.export.tensorrt import (
    TENSORRT_METADATA_FILE,
    TensorRTBuildConfig,
    TensorRTScorer,
    engine_cache_key,
    export_tensorrt,
    load_or_build_engine,
    optimization_profiles,
)
from zreward_deploy.export.triton_repo import write_triton_repository
from zreward_deploy.scoring import load_scorer

OLD_ORDER = ("realism", "alignment")
NEW_ORDER = ("alignment", "realism")
PROMPTS = ["a cat", "two red cubes on a wooden table"]


class FrozenLength(onnx_export.ZRewardOnnxModel):
    """Trims padding through a Python int: right at the trace shape only, so validation fails."""

    def forward(self, input_ids, attention_mask, pixel_values):
        n = int(attention_mask.sum(1).max())
        return super().forward(input_ids[:, :n], attention_mask[:, :n], pixel_values)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (36, 40, 3), dtype=np.uint8) for _ in PROMPTS]


@pytest.fixture(scope="module")
def model_dir(tiny_dir):
    """The session's saved tiny model directory (tests/conftest.py); only read here (the test that
    points --out at it works on a copy)."""
    return tiny_dir


@pytest.fixture(scope="module")
def exports(model_dir, tmp_path_factory):
    """Two validated exports of one model with the dimensions in opposite orders, and a failed one.

    Built once for the module; tests copy them before changing anything."""
    root = tmp_path_factory.mktemp("integrity_exports")
    out = {}
    for name, dims in (("old", OLD_ORDER), ("new", NEW_ORDER)):
        export_onnx(model_dir, root / name, OnnxExportConfig(dimensions=dims))
        out[name] = root / name
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_export, "ZRewardOnnxModel", FrozenLength)
        with pytest.raises(OnnxValidationError):
            export_onnx(model_dir, root / "failed", OnnxExportConfig(dimensions=OLD_ORDER))
    out["failed"] = root / "failed"
    return out


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """``import tensorrt`` succeeds (a stand-in module) and a GPU is named, so the TensorRT backend's
    own checks run on this machine; any real TensorRT or CUDA call would still fail."""
    from zreward_deploy.export import tensorrt as trt_module

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.0-fake"))
    monkeypatch.setattr(trt_module, "_require_cuda", lambda: None)
    monkeypatch.setattr(trt_module, "device_identity", lambda index=0: ("Fake GPU", (9, 0)))
    return trt_module


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _scores(folder: Path, images, **kwargs) -> tuple[list[str], torch.Tensor]:
    result = OrtScorer.from_pretrained(folder, **kwargs).score(images, PROMPTS)
    return result.dimensions, result.probs


def _write_meta(folder: Path, meta) -> None:
    (folder / METADATA_FILE).write_text(json.dumps(meta))


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------

_KILLED_EXPORT = textwrap.dedent(
    """
    import os, signal, sys
    from zreward_deploy.cli import main
    from zreward_deploy.export import onnx as onnx_export

    def kill(*args, **kwargs):  # the graph and config are written; validation would run next
        os.kill(os.getpid(), signal.SIGKILL)

    onnx_export.validate_onnx = kill
    model, out, dims = sys.argv[1:]
    sys.exit(main(["export", "onnx", "--model", model, "--out", out, "--overwrite", "--dimensions", dims]))
    """
)


def test_a_killed_export_leaves_the_old_export(exports, model_dir, tmp_path, images):
    """SIGKILL of `zreward export onnx --overwrite` after the new graph is written: the folder is still
    the old complete export (old dimension order, old scores), never the new graph under old metadata."""
    out = _copy(exports["old"], tmp_path / "onnx")
    want_dims, want_probs = _scores(out, images)
    assert want_dims == list(OLD_ORDER)
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_EXPORT, str(model_dir), str(out), ",".join(NEW_ORDER)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]  # the hook fired: it died part-way
    dims, probs = _scores(out, images)
    assert dims == want_dims
    torch.testing.assert_close(probs, want_probs, rtol=0, atol=0)
    # nothing of the new export was mixed in: the same files, byte for byte
    for path in exports["old"].iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_overwrite_replaces_the_whole_folder(exports, model_dir, tmp_path):
    """`--overwrite` switches to a complete new folder: no file of the earlier export stays behind (a
    stale tokenizer file could otherwise be picked up), and no temporary folder is left over."""
    out = _copy(exports["old"], tmp_path / "onnx")
    (out / "vocab.json").write_text("{}")  # a file the new export does not write
    export_onnx(model_dir, out, OnnxExportConfig(dimensions=NEW_ORDER, overwrite=True))
    assert not (out / "vocab.json").exists()
    assert OrtScorer.from_pretrained(out).dimensions == list(NEW_ORDER)
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]


def test_a_crash_between_the_two_renames_leaves_no_folder(exports, model_dir, tmp_path, monkeypatch):
    """The one instant the destination is absent (old moved aside, new not yet in): a crash there leaves
    no folder, which loads as an error, never a mix."""
    out = _copy(exports["old"], tmp_path / "onnx")
    real_replace = os.replace

    class Crash(Exception):
        pass

    def replace(src, dst):
        if Path(src).name.startswith(f".{out.name}.tmp-"):  # the new folder's rename into place
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        export_onnx(model_dir, out, OnnxExportConfig(dimensions=NEW_ORDER, overwrite=True))
    monkeypatch.undo()
    assert not out.exists()
    with pytest.raises(InvalidModelError, match="not a directory"):
        OrtScorer.from_pretrained(out)


def test_a_failing_triton_write_leaves_nothing(exports, tmp_path, monkeypatch):
    from zreward_deploy.processing import ZRewardProcessor

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ZRewardProcessor, "from_pretrained", broken)  # after the model file is copied
    with pytest.raises(OSError, match="disk full"):
        write_triton_repository(exports["old"], tmp_path / "triton")
    assert not (tmp_path / "triton").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left behind either


# --------------------------------------------------------------------------------------------------
# The loader's checks
# --------------------------------------------------------------------------------------------------


def test_a_graph_from_another_export_is_refused(exports, tmp_path, images, capsys, fake_tensorrt):
    """model.onnx replaced by the graph of an export with the other dimension order."""
    out = _copy(exports["old"], tmp_path / "onnx")
    shutil.copyfile(exports["new"] / "model.onnx", out / "model.onnx")
    with pytest.raises(InvalidModelError, match=r"model\.onnx.*SHA-256.*zreward_onnx\.json"):
        OrtScorer.from_pretrained(out)
    with pytest.raises(InvalidModelError, match="SHA-256"):  # every reader, through the same check
        write_triton_repository(out, tmp_path / "triton")
    with pytest.raises(InvalidModelError, match="SHA-256"):
        export_tensorrt(out, tmp_path / "trt", build=False)
    with pytest.raises(InvalidModelError, match="SHA-256"):  # before any GPU query or engine build
        TensorRTScorer.from_pretrained(out, device="cuda")
    code = main(["score", "--model", str(out), "--backend", "onnx", "--image", "x.png", "--prompt", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "SHA-256" in err and err.count("\n") == 1


def test_a_folder_replaced_while_loading_is_refused(exports, tmp_path, monkeypatch):
    """A concurrent `--overwrite` export lands between the hash check and ONNX Runtime opening the graph:
    the session would hold the other export's graph under this metadata, so the load is refused."""
    from zreward_deploy.export import ort
    from zreward_deploy.fileio import replace_dir

    out = _copy(exports["old"], tmp_path / "onnx")
    real_create_session = ort.create_session

    def replaced_then_opened(path, *args, **kwargs):
        replace_dir(_copy(exports["new"], tmp_path / "incoming"), out)
        return real_create_session(path, *args, **kwargs)

    monkeypatch.setattr(ort, "create_session", replaced_then_opened)
    with pytest.raises(InvalidModelError, match="changed while it was being loaded"):
        OrtScorer.from_pretrained(out)
    monkeypatch.undo()
    assert OrtScorer.from_pretrained(out).dimensions == list(NEW_ORDER)  # a fresh load is consistent


def test_a_config_from_another_export_is_refused(exports, tmp_path):
    """The graph is right but config.json (the rubric the scorer names columns by) is the other's."""
    out = _copy(exports["old"], tmp_path / "onnx")
    shutil.copyfile(exports["new"] / "config.json", out / "config.json")
    with pytest.raises(InvalidModelError, match=r"config\.json"):
        OrtScorer.from_pretrained(out)
    # without the file manifest (an export of an earlier version) the rubric cross-check catches it
    meta = json.loads((out / METADATA_FILE).read_text())
    meta.pop("files", None)
    _write_meta(out, meta)
    with pytest.raises(InvalidModelError, match=r"config\.json.*dimensions"):
        OrtScorer.from_pretrained(out)


def test_metadata_that_disagrees_with_the_graph_shapes_is_refused(exports, tmp_path):
    """Metadata and config both claim one dimension but the graph has two: refused, not misread."""
    out = _copy(exports["old"], tmp_path / "onnx")
    meta = json.loads((out / METADATA_FILE).read_text())
    meta["dimensions"], meta["rubric"], meta["reward_weights"] = ["realism"], meta["rubric"][:1], [1.0]
    for name in ("probs", "mean", "std"):
        meta["outputs"][name]["shape"][1] = 1
    config = json.loads((out / "config.json").read_text())
    config["rubric"] = config["rubric"][:1]
    (out / "config.json").write_text(json.dumps(config))
    meta.pop("files", None)
    _write_meta(out, meta)
    with pytest.raises(InvalidModelError, match="output probs has 2 at axis 1"):
        OrtScorer.from_pretrained(out)


def test_a_failed_validation_is_refused_unless_overridden(exports, tmp_path, images, capsys, fake_tensorrt):
    failed = exports["failed"]
    assert json.loads((failed / METADATA_FILE).read_text())["validation"]["passed"] is False
    with pytest.raises(InvalidModelError, match=r"failed validation.*allow_failed_validation"):
        OrtScorer.from_pretrained(failed)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(images[0]).save(image)
    code = main(
        ["score", "--model", str(failed), "--backend", "onnx", "--image", str(image), "--prompt", "x"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "failed validation" in err and err.count("\n") == 1

    with pytest.raises(InvalidModelError, match="failed validation"):
        TensorRTScorer.from_pretrained(failed, device="cuda")

    # the override loads it (Python, load_scorer, and the export commands' flag)
    dims, probs = _scores(failed, images, allow_failed_validation=True)
    assert dims == list(OLD_ORDER) and probs.shape == (2, 2, 5)
    assert load_scorer(failed, backend="onnx", allow_failed_validation=True).dimensions == list(OLD_ORDER)
    args = ["export", "triton-repo", "--source", str(failed), "--kind", "cpu"]
    assert main([*args, "--out", str(tmp_path / "t1")]) == 2
    assert "failed validation" in capsys.readouterr().err and not (tmp_path / "t1").exists()
    assert main([*args, "--out", str(tmp_path / "t2"), "--allow-failed-validation"]) == 0


def test_an_unvalidated_export_loads_with_a_warning(model_dir, tmp_path):
    out = tmp_path / "onnx"
    export_onnx(model_dir, out, OnnxExportConfig(dimensions=OLD_ORDER, validate=False))
    with pytest.warns(UnvalidatedExportWarning, match="never compared"):
        scorer = OrtScorer.from_pretrained(out)
    assert scorer.dimensions == list(OLD_ORDER)


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink", "manifest"])
def test_file_names_that_leave_the_folder_are_refused(exports, tmp_path, kind):
    """Each outside file is a byte-identical copy of the graph (or config), so only the path is wrong."""
    out = _copy(exports["old"], tmp_path / "onnx")
    outside = tmp_path / "x.onnx"
    shutil.copyfile(out / "model.onnx", outside)
    meta = json.loads((out / METADATA_FILE).read_text())
    if kind == "parent":
        meta["onnx_file"] = "../x.onnx"
    elif kind == "absolute":
        meta["onnx_file"] = str(outside)
    elif kind == "symlink":
        (out / "model.onnx").unlink()
        (out / "model.onnx").symlink_to(outside)
    else:
        shutil.copyfile(out / "config.json", tmp_path / "config.json")
        digest = hashlib.sha256((out / "config.json").read_bytes()).hexdigest()
        meta.setdefault("files", {})["../config.json"] = digest
    _write_meta(out, meta)
    with pytest.raises(InvalidModelError, match=r"relative path|outside the export folder"):
        OrtScorer.from_pretrained(out)


def test_a_tensorrt_record_naming_a_plan_outside_is_refused(exports, tmp_path):
    trt = tmp_path / "trt"
    export_tensorrt(exports["old"], trt, build=False)
    (tmp_path / "outside.plan").write_bytes(b"not this folder's plan")
    record = json.loads((trt / TENSORRT_METADATA_FILE).read_text())
    record["engine"] = {"file": "../outside.plan", "key": "k"}
    (trt / TENSORRT_METADATA_FILE).write_text(json.dumps(record))
    with pytest.raises(InvalidModelError, match=r"engine\.file.*relative path"):
        write_triton_repository(trt, tmp_path / "triton")
    assert not (tmp_path / "triton").exists()


def test_the_engine_cache_reads_only_its_own_plans(exports, tmp_path, fake_tensorrt, monkeypatch):
    """A plan is looked up by the verified graph hash (the graph is not read again); a plan built from a
    graph replaced after its check is not cached; a cached plan that is a symlink out of the cache is
    refused."""
    meta = verify_export(exports["old"])
    cfg = TensorRTBuildConfig(max_batch_size=2, opt_batch_size=1, text_length_buckets=(256,))
    profiles = optimization_profiles(cfg, meta["image_size"])
    settings_ = {"workspace_gib": cfg.workspace_gib, "opt_level": cfg.builder_optimization_level}
    key = engine_cache_key(meta["onnx_sha256"], "Fake GPU", (9, 0), "10.0-fake", profiles, settings_)
    cache = tmp_path / "engines"
    cache.mkdir()
    (cache / f"{key}.plan").write_bytes(b"plan of this graph")
    absent = tmp_path / "no_graph_here.onnx"  # proves the cached plan is found without hashing again
    plan, found, built = load_or_build_engine(absent, profiles, cfg, cache, onnx_sha256=meta["onnx_sha256"])
    assert (plan, found, built) == (b"plan of this graph", key, False)

    # a cache miss: a plan built from a graph that was replaced since its check is not cached
    graph = _copy(exports["old"], tmp_path / "onnx") / "model.onnx"
    digest, identity = file_sha256_and_identity(graph)

    def build_while_replaced(onnx_path, profiles, config):
        shutil.copyfile(exports["new"] / "model.onnx", tmp_path / "swap.onnx")
        os.replace(tmp_path / "swap.onnx", onnx_path)
        return b"plan of another graph"

    monkeypatch.setattr(fake_tensorrt, "build_engine", build_while_replaced)
    empty = tmp_path / "empty_cache"
    with pytest.raises(InvalidModelError, match="changed while it was being loaded"):
        load_or_build_engine(graph, profiles, cfg, empty, onnx_sha256=digest, onnx_identity=identity)
    assert not empty.exists() or not list(empty.iterdir())

    (tmp_path / "elsewhere.plan").write_bytes(b"someone else's plan")
    (cache / f"{key}.plan").unlink()
    (cache / f"{key}.plan").symlink_to(tmp_path / "elsewhere.plan")
    with pytest.raises(InvalidModelError, match="outside the engine cache"):
        load_or_build_engine(absent, profiles, cfg, cache, onnx_sha256=meta["onnx_sha256"])


@pytest.mark.parametrize(
    "where", ["same", "inside", "inside-new", "contains"], ids=lambda w: f"out-{w}-model"
)
def test_out_never_touches_the_source_model(model_dir, tmp_path, capsys, where):
    source = _copy(model_dir, tmp_path / "models" / "m")
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    out = {
        "same": source,
        "inside": source / "onnx",
        "inside-new": source / "a" / "onnx",
        "contains": source.parent,
    }[where]
    args = ["export", "onnx", "--model", str(source), "--out", str(out), "--overwrite"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "input" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    with pytest.raises(ZRewardInputError, match="input"):  # the benchmarks' reuse-or-export, too
        ensure_onnx_export(source, out)
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


# --------------------------------------------------------------------------------------------------
# Fuzz: malformed metadata of any shape is an InvalidModelError, never another exception
# --------------------------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["model.onnx", "fp16", "zreward-onnx", "../model.onnx", "/", "."]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
_PATHS = [
    ("format",),
    ("format_version",),
    ("onnx_file",),
    ("onnx_sha256",),
    ("files",),
    ("files", "config.json"),
    ("dtype",),
    ("dimensions",),
    ("dimensions", 0),
    ("reward_weights",),
    ("reward_weights", 1),
    ("rubric",),
    ("rubric", 0),
    ("rubric", 0, "name"),
    ("score_scale",),
    ("score_scale", "values"),
    ("score_scale", "values", 0),
    ("image_size",),
    ("max_prompt_tokens",),
    ("inputs",),
    ("inputs", "pixel_values"),
    ("inputs", "pixel_values", "dtype"),
    ("outputs",),
    ("outputs", "probs", "shape"),
    ("outputs", "probs", "shape", 2),
    ("outputs", "reward"),
    ("validation",),
    ("validation", "passed"),
    ("validation", "cases"),
    ("export_config",),
    ("created",),
    ("no_such_key",),
]
# Values of the right kind in the wrong place: what a hand edit or a mixed-up folder produces.
_PLAUSIBLE = st.sampled_from(
    [
        list(NEW_ORDER),
        list(OLD_ORDER),
        ["realism"],
        [0.5, 0.5],
        [1.0, 2.0, 3.0, 4.0, 5.0],
        {"values": [1.0, 2.0, 3.0]},
        {"passed": False},
        {"passed": True},
        None,
        True,
        0,
        32,
        256,
        "fp16",
        "model.onnx",
        "config.json",
        "0" * 64,
        ["batch_size", 2, 5],
        ["batch_size", 5, 2],
    ]
)
_MUTATION = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(_PATHS), _JSON),
    st.tuples(st.just("set"), st.sampled_from(_PATHS), _PLAUSIBLE),
    st.tuples(st.just("delete"), st.sampled_from(_PATHS), st.none()),
    st.tuples(st.just("reverse"), st.sampled_from(_PATHS), st.none()),  # e.g. the dimension order
    st.tuples(st.just("document"), st.none(), _JSON),  # the whole file: a list, a number, null, ...
    st.tuples(st.just("bytes"), st.none(), st.binary(max_size=64)),  # not JSON, maybe not UTF-8
)


def _has(node, key) -> bool:
    if isinstance(node, dict):
        return isinstance(key, str) and key in node
    return isinstance(node, list) and isinstance(key, int) and key < len(node)


def _mutate(meta, path: tuple, kind: str, value) -> None:
    """Apply one ``set``, ``delete`` or ``reverse`` at ``path``; skipped where the path no longer exists
    (an earlier mutation changed the shape above it)."""
    *head, last = path
    node = meta
    for key in head:
        if not _has(node, key):
            return
        node = node[key]
    if kind == "set" and (_has(node, last) or (isinstance(node, dict) and isinstance(last, str))):
        node[last] = value
    elif kind == "delete" and _has(node, last):
        del node[last]
    elif kind == "reverse" and _has(node, last) and isinstance(node[last], list):
        node[last] = node[last][::-1]


@pytest.fixture(scope="module")
def reference(exports, images):
    """What the untouched old export scores; any folder that loads must score exactly this."""
    return _scores(exports["old"], images)


@settings(max_examples=30, deadline=None)
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=2))
def test_fuzzed_metadata_loads_correctly_or_is_refused(exports, reference, images, time_limit, mutations):
    text = (exports["old"] / METADATA_FILE).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        out = _copy(exports["old"], Path(tmp) / "export")
        meta = json.loads(text)
        data = None
        for kind, path, value in mutations:
            if kind == "document":
                meta = value
            elif kind == "bytes":
                data = value
            elif isinstance(meta, dict):
                _mutate(meta, path, kind, value)
        (out / METADATA_FILE).write_bytes(data if data is not None else json.dumps(meta).encode())
        with time_limit(10), warnings.catch_warnings():
            warnings.simplefilter("ignore", UnvalidatedExportWarning)
            try:
                dims, probs = _scores(out, images)
            except InvalidModelError as exc:  # refused, naming the metadata file
                event(f"refused: {exc.reason[:40]}")
                assert METADATA_FILE in str(exc)
                return
            except ZRewardInputError:
                return
            event("loaded")
            # it loaded: then it is exactly the export it claims to be
            assert dims == reference[0]
            torch.testing.assert_close(probs, reference[1], rtol=0, atol=0)
            assert verify_export(out)["dimensions"] == list(OLD_ORDER)

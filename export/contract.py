"""The export contract: what an export folder holds and the one check every reader of it goes through.

Written by :func:`zreward_deploy.export.onnx.export_onnx`, read by the runtimes (:mod:`.ort`,
:mod:`.tensorrt`) and the Triton writer (:mod:`.triton_repo`); none of them defines any of it.

Graph contract (docs/design.md, "Export contract"): inputs ``input_ids [B, S]`` int64, ``attention_mask
[B, S]`` int64, ``pixel_values [B, 3, H, W]`` (float32, or float16 in the fp16 variant); outputs ``probs
[B, D, K]``, ``mean [B, D]``, ``std [B, D]``, ``reward [B]``, all float32. The graph always scores every
exported dimension; a scorer selects (and reorders) the columns a caller asks for.

Folder contract: ``zreward_onnx.json`` (:data:`METADATA_FILE`) describes the folder (rubric, score scale,
dtype, versions, validation, the SHA-256 of every file it names); :func:`verify_export` checks the folder
against it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from zreward_deploy.errors import InvalidModelError
from zreward_deploy.fileio import is_within, open_regular_file, read_json_object

METADATA_FILE = "zreward_onnx.json"
"""The self-description of an export folder (rubric, scale, dtype, versions, validation results)."""
ONNX_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
"""The graph's weights when they are stored outside ``model.onnx`` (ONNX external data, one file beside it;
graphs over 2 GB cannot be one protobuf)."""
EXTERNAL_DATA_MODES = ("auto", "always", "never")
PROTOBUF_LIMIT = 2**31 - 1
"""The largest protobuf message, in bytes: a graph with its weights inline must stay below it."""
FORMAT = "zreward-onnx"
FORMAT_VERSION = 1
INPUT_NAMES = ("input_ids", "attention_mask", "pixel_values")
OUTPUT_NAMES = ("probs", "mean", "std", "reward")
DTYPES = ("fp32", "fp16")
OPSET = 18
"""The default ONNX opset; exports accept :data:`OPSET_RANGE`."""
OPSET_RANGE = (14, 20)
ATOL = {"fp32": 1e-4, "fp16": 1e-2}
"""Default validation tolerance on probs, by graph dtype; mean/std/reward get it times the score range."""
EXPORTERS = ("optimum", "torch")
"""The two ONNX exporters: optimum-onnx (installs only beside transformers 4.57) and torch.onnx (the
TorchScript exporter, on every transformers line); both trace the same module with the same inputs and
:data:`DYNAMIC_AXES`, and go through the same validation."""
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "input_ids": {0: "batch_size", 1: "sequence_length"},
    "attention_mask": {0: "batch_size", 1: "sequence_length"},
    "pixel_values": {0: "batch_size"},
    **{name: {0: "batch_size"} for name in OUTPUT_NAMES},
}
"""Batch and text length are dynamic; the image size is fixed by the vision tower; D and K by the rubric
and the score scale."""


# --------------------------------------------------------------------------------------------------
# The export folder, and the one check every reader of it goes through
# --------------------------------------------------------------------------------------------------


class UnvalidatedExportWarning(UserWarning):
    """An export folder made with validation off (``--no-validate``): it loads, but was never compared
    with the torch model."""


_SHA256 = re.compile(r"[0-9a-f]{64}")
_PIXEL_DTYPES = {"fp32": "float32", "fp16": "float16"}


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


FileIdentity = tuple[int, int, int, int]
"""``(device, inode, size, mtime_ns)`` of a file."""


def _identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def check_unchanged(path: str | os.PathLike, hashed: FileIdentity) -> None:
    """Raise :class:`InvalidModelError` when ``path`` is no longer the file whose bytes were hashed.

    Export folders are replaced whole (new files, new inodes), never edited in place, so the same
    identity after a runtime opened ``path`` means it read the bytes that were checked; another one means
    the folder was replaced (a concurrent ``--overwrite`` export) between the check and the load.
    """
    try:
        now: FileIdentity | None = _identity(os.stat(path))
    except OSError:
        now = None
    if now != hashed:
        raise InvalidModelError(
            str(path), "changed while it was being loaded (the export was replaced meanwhile); load it again"
        )


def file_sha256_and_identity(path: str | os.PathLike, chunk: int = 1 << 20) -> tuple[str, FileIdentity]:
    """:func:`file_sha256`, and the identity of the file that was read (for :func:`check_unchanged`)."""
    digest = hashlib.sha256()
    with open_regular_file(path, InvalidModelError) as f:
        identity = _identity(os.fstat(f.fileno()))  # of the very file read below
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest(), identity


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a regular file, read in chunks (ONNX files can be large); a missing file, a folder
    or a FIFO raises :class:`InvalidModelError` (never blocks)."""
    return file_sha256_and_identity(path, chunk)[0]


def export_file(directory: str | os.PathLike, name: Any, named_by: str | os.PathLike, key: str) -> Path:
    """The path of a file that ``named_by`` (a metadata file) names under ``key``, if it is safe to read.

    Refused with :class:`InvalidModelError`: a name that is not a non-empty string, an absolute path, a
    ``..`` component, a backslash or NUL, and a name that leaves ``directory`` once symlinks are resolved.
    Whether the file exists is the caller's check.
    """
    where = str(named_by)
    if not isinstance(name, str) or not name:
        raise InvalidModelError(where, f"{key} must be a non-empty relative file name, got {name!r}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or "\\" in name or "\0" in name or ".." in pure.parts:
        raise InvalidModelError(
            where, f"{key} {name!r} is not a plain relative path inside the export folder; refused"
        )
    path = Path(directory) / pure
    try:
        inside = is_within(path, directory)
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        inside = False
    if not inside:
        raise InvalidModelError(
            where, f"{key} {name!r} resolves outside the export folder (a symlink?); refused"
        )
    return path


def check_graph_outputs(meta: dict[str, Any], shapes: Mapping[str, Any], source: str) -> None:
    """Check output shapes (ONNX Runtime's, TensorRT's, or the metadata's own) against the metadata's
    dimensions: ``probs [B, D, K]``, ``mean``/``std`` ``[B, D]``, ``reward [B]``.

    Only static sizes are compared (an int >= 0; a name, ``None`` or ``-1`` is dynamic), so a graph with
    another number of dimensions or scores than the metadata says is refused instead of having its
    columns read under the wrong names.
    """
    d, k = len(meta["dimensions"]), len(meta["score_scale"]["values"])
    expected = {"probs": (d, k), "mean": (d,), "std": (d,), "reward": ()}
    for name, tail in expected.items():
        shape = shapes.get(name)
        if not isinstance(shape, (list, tuple)):
            raise InvalidModelError(source, f"has no shape for output {name!r}")
        if len(shape) != 1 + len(tail):
            raise InvalidModelError(source, f"output {name} has rank {len(shape)}, expected {1 + len(tail)}")
        for axis, (got, want) in enumerate(zip(shape[1:], tail, strict=True), start=1):
            if isinstance(got, int) and not isinstance(got, bool) and got >= 0 and got != want:
                raise InvalidModelError(
                    source,
                    f"output {name} has {got} at axis {axis} but {METADATA_FILE} says {want} "
                    f"({d} dimensions {meta['dimensions']}, {k} scores); its columns would be misread",
                )


def _check_metadata_fields(meta: dict[str, Any], path: Path) -> None:
    """Types and internal consistency of every field a reader uses; raises :class:`InvalidModelError`."""
    where = str(path)
    fmt, version = meta.get("format"), meta.get("format_version")
    if (
        fmt != FORMAT
        or not isinstance(version, int)
        or isinstance(version, bool)
        or version != FORMAT_VERSION
    ):
        raise InvalidModelError(where, f"format {fmt!r} v{version!r} is not {FORMAT!r} v{FORMAT_VERSION}")
    dtype = meta.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidModelError(where, f"dtype {dtype!r} is not one of {DTYPES}")
    sha = meta.get("onnx_sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise InvalidModelError(where, f"onnx_sha256 must be 64 lowercase hex digits, got {sha!r}")
    dims = meta.get("dimensions")
    if (
        not isinstance(dims, list)
        or not dims
        or not all(isinstance(d, str) and d for d in dims)
        or len(set(dims)) != len(dims)
    ):
        raise InvalidModelError(where, f"dimensions must be a non-empty list of distinct names, got {dims!r}")
    rubric = meta.get("rubric")
    names = [r.get("name") for r in rubric if isinstance(r, dict)] if isinstance(rubric, list) else None
    if names != dims:
        raise InvalidModelError(where, f"rubric names {names!r} are not its dimensions {dims!r} in order")
    weights = meta.get("reward_weights")
    if not isinstance(weights, list) or len(weights) != len(dims) or not all(_number(w) for w in weights):
        raise InvalidModelError(where, f"reward_weights must be {len(dims)} finite numbers, got {weights!r}")
    scale = meta.get("score_scale")
    values = scale.get("values") if isinstance(scale, dict) else None
    if not isinstance(values, list) or len(values) < 2 or not all(_number(v) for v in values):
        raise InvalidModelError(where, f"score_scale.values must be >= 2 finite numbers, got {values!r}")
    for key in ("image_size", "max_prompt_tokens"):
        if not _positive_int(meta.get(key)):
            raise InvalidModelError(where, f"{key} must be a positive integer, got {meta.get(key)!r}")
    inputs = meta.get("inputs")
    pixel = inputs.get("pixel_values") if isinstance(inputs, dict) else None
    pixel_dtype = pixel.get("dtype") if isinstance(pixel, dict) else None
    if pixel_dtype != _PIXEL_DTYPES[dtype]:
        raise InvalidModelError(
            where,
            f"inputs.pixel_values.dtype {pixel_dtype!r} does not match dtype {dtype} ({_PIXEL_DTYPES[dtype]})",
        )
    outputs = meta.get("outputs")
    if not isinstance(outputs, dict):
        raise InvalidModelError(where, f"outputs must be an object, got {type(outputs).__name__}")
    check_graph_outputs(
        meta, {n: o.get("shape") for n, o in outputs.items() if isinstance(o, dict)}, f"{where} (outputs)"
    )
    exporter = meta.get("exporter")  # absent in exports made before there were two exporters
    if exporter is not None and exporter not in EXPORTERS:
        raise InvalidModelError(where, f"exporter {exporter!r} is not one of {EXPORTERS}")
    if "validation" not in meta:
        raise InvalidModelError(where, "has no validation record (null when the export was not validated)")
    validation = meta["validation"]
    if validation is not None and not (
        isinstance(validation, dict) and isinstance(validation.get("passed"), bool)
    ):
        raise InvalidModelError(where, "validation must be null or an object with a boolean 'passed'")
    external = meta.get("external_data")  # absent in exports made before external data
    if external is not None and not (
        isinstance(external, dict)
        and isinstance(external.get("file"), str)
        and isinstance(external.get("sha256"), str)
        and _SHA256.fullmatch(external["sha256"])
        and isinstance(external.get("bytes"), int)
        and not isinstance(external.get("bytes"), bool)
        and external["bytes"] >= 0
    ):
        raise InvalidModelError(
            where, "external_data must be null or an object with 'file', 'sha256' (64 hex digits) and 'bytes'"
        )
    files = meta.get("files", {})
    if not isinstance(files, dict) or not all(
        isinstance(v, str) and _SHA256.fullmatch(v) for v in files.values()
    ):
        raise InvalidModelError(where, "files must map file names to SHA-256 hex digests")


def _check_config(directory: Path, meta: dict[str, Any]) -> None:
    """The folder's ``config.json`` (what the processor and the scorer's rubric come from) must describe
    the same dimensions, in the same order, and the same score scale, image size and prompt limit."""
    from zreward_deploy.config import load_config
    from zreward_deploy.native import is_native_dir

    path = directory / "config.json"
    if not path.is_file():
        raise InvalidModelError(str(path), "is missing; an export folder holds its model config")
    if is_native_dir(directory):  # a native model's scoring settings live in zreward_native.json
        from zreward_deploy.native import read_native_config

        path = directory / "zreward_native.json"
        config = read_native_config(directory)
    else:
        config = load_config(directory)  # any damage: InvalidModelError naming config.json
    names = config.get_rubric().names
    values = [float(v) for v in config.get_score_scale().values]
    image_size, max_prompt = config.image_size, config.max_prompt_tokens
    checks = [
        ("dimensions", names, meta["dimensions"]),
        ("score values", values, [float(v) for v in meta["score_scale"]["values"]]),
        ("image size", image_size, meta["image_size"]),
        ("prompt limit", max_prompt, meta["max_prompt_tokens"]),
    ]
    for what, in_config, in_meta in checks:
        if in_config != in_meta:
            raise InvalidModelError(
                str(path),
                f"{what} {in_config} disagree with {METADATA_FILE} ({in_meta}); the folder mixes two exports",
            )


def verify_export(export_dir: str | os.PathLike, allow_failed_validation: bool = False) -> dict[str, Any]:
    """Read ``zreward_onnx.json`` and check the whole export folder against it; return the metadata.

    Every reader of an export folder goes through this (``OrtScorer``, ``TensorRTScorer``, the TensorRT
    and Triton writers, ``ensure_onnx_export``), so a folder is trusted for the same reasons everywhere:

    * the metadata is a JSON object whose fields have the types and the internal consistency a reader
      relies on (dimensions vs rubric vs reward weights vs output shapes, dtype vs input dtype);
    * every file name it holds (``onnx_file``, the ``files`` manifest) is a plain relative path that stays
      inside the folder after resolving ``..`` and symlinks;
    * the graph's SHA-256 equals ``onnx_sha256`` and each manifest file's equals its entry: a graph from
      another export (another dimension order) or a half-replaced folder is refused, naming both files;
    * ``config.json`` has the metadata's dimensions in the same order, score values, image size and
      prompt limit;
    * ``validation.passed`` is not false, unless ``allow_failed_validation``; a folder exported without
      validation (``validation: null``) loads with an :class:`UnvalidatedExportWarning`.

    Cost: the graph and the small files are read once each, in 1 MiB chunks (about 1.5 s per GB of graph
    on one core when the file is in the page cache; docs/export.md, "Integrity").

    Raises:
        InvalidModelError: naming the offending file and the reason.
    """
    return verify_export_graph(export_dir, allow_failed_validation)[0]


def verify_export_graph(
    export_dir: str | os.PathLike, allow_failed_validation: bool = False
) -> tuple[dict[str, Any], FileIdentity]:
    """:func:`verify_export`, and the identity of the graph file whose bytes were hashed: a runtime that
    opens the graph by path afterwards passes it to :func:`check_unchanged`, so the graph it loaded is
    the one that was checked even if the folder is replaced meanwhile. (With external data, use
    :func:`verify_export_files`, which also gives the data file's identity.)"""
    meta, identities = verify_export_files(export_dir, allow_failed_validation)
    return meta, identities[meta["onnx_file"]]


def verify_export_files(
    export_dir: str | os.PathLike, allow_failed_validation: bool = False
) -> tuple[dict[str, Any], dict[str, FileIdentity]]:
    """:func:`verify_export`, and the identities of the files a runtime reads by path (the graph, and its
    external data file when it has one), keyed by their names in the metadata: pass each to
    :func:`check_unchanged` after the runtime has read them."""
    directory = Path(export_dir)
    path = directory / METADATA_FILE
    if not directory.is_dir():
        raise InvalidModelError(str(directory), "is not a directory (or does not exist)")
    if not path.exists() and not path.is_symlink():
        raise InvalidModelError(
            str(directory),
            f"has no {METADATA_FILE}; it is not an ONNX export (make one with `zreward export onnx`)",
        )
    export_file(directory, METADATA_FILE, path, "the metadata file")  # itself no symlink out of the folder
    meta = read_json_object(path, InvalidModelError)
    _check_metadata_fields(meta, path)

    onnx_path = export_file(directory, meta.get("onnx_file"), path, "onnx_file")
    if not onnx_path.exists():
        raise InvalidModelError(str(onnx_path), f"is named by {METADATA_FILE} but the file is missing")
    actual, hashed = file_sha256_and_identity(onnx_path)
    if actual != meta["onnx_sha256"]:
        raise InvalidModelError(
            str(onnx_path),
            f"SHA-256 {actual[:16]}… is not the {meta['onnx_sha256'][:16]}… recorded in {path}: the graph is "
            "not the one this metadata describes (a stale, swapped or half-written export); export again",
        )
    identities = {meta["onnx_file"]: hashed}
    external = meta.get("external_data")
    if external is not None:
        identities[external["file"]] = _verify_external_data(directory, external, path)
    for name, digest in meta.get("files", {}).items():
        file = export_file(directory, name, path, "files")
        if not file.exists():
            raise InvalidModelError(str(file), f"is listed in {METADATA_FILE} but the file is missing")
        if file_sha256(file) != digest:
            raise InvalidModelError(
                str(file), f"SHA-256 is not the one recorded in {path}: the folder mixes two exports"
            )
    _check_config(directory, meta)

    validation = meta["validation"]
    if validation is not None and validation["passed"] is False and not allow_failed_validation:
        cases = validation.get("cases")
        failed = (
            [c.get("name") for c in cases if isinstance(c, dict) and c.get("passed") is False]
            if isinstance(cases, list)
            else []
        )
        raise InvalidModelError(
            str(path),
            "this export failed validation against the torch model"
            + (f" (cases {', '.join(map(repr, failed))})" if failed else "")
            + "; its scores are not trusted. Export again, or load it anyway with "
            "allow_failed_validation=True (--allow-failed-validation)",
        )

    if validation is None:
        warnings.warn(
            f"{directory}: this export was made without validation (--no-validate); its graph was never "
            "compared with the torch model",
            UnvalidatedExportWarning,
            stacklevel=3,
        )
    return meta, identities


def graph_digest(meta: dict[str, Any]) -> str:
    """One SHA-256 naming the graph a runtime builds from: ``onnx_sha256``, or with external data the
    SHA-256 of both files' digests (an engine cache key must change when either changes)."""
    external = meta.get("external_data")
    if external is None:
        return meta["onnx_sha256"]
    return hashlib.sha256(f"{meta['onnx_sha256']}:{external['sha256']}".encode()).hexdigest()


def _verify_external_data(directory: Path, external: dict[str, Any], named_by: Path) -> FileIdentity:
    """The graph's external data file must exist, have the recorded size (a truncated copy is named as
    such) and the recorded SHA-256; returns the identity of the file that was hashed."""
    data = export_file(directory, external["file"], named_by, "external_data.file")
    if not data.exists():
        raise InvalidModelError(
            str(data), f"is the graph's external data file named by {METADATA_FILE} but it is missing"
        )
    size = data.stat().st_size if data.is_file() else -1
    if size != external["bytes"]:
        raise InvalidModelError(
            str(data),
            f"holds {size} bytes but {METADATA_FILE} records {external['bytes']}: the graph's external data "
            "is truncated or from another export; export again",
        )
    actual, identity = file_sha256_and_identity(data)
    if actual != external["sha256"]:
        raise InvalidModelError(
            str(data),
            f"SHA-256 {actual[:16]}… is not the {external['sha256'][:16]}… recorded in {named_by}: the "
            "graph's external data is not this export's; export again",
        )
    return identity


def read_export_metadata(
    export_dir: str | os.PathLike, allow_failed_validation: bool = False
) -> dict[str, Any]:
    """The metadata of an export folder, after :func:`verify_export` checked the folder against it."""
    return verify_export(export_dir, allow_failed_validation=allow_failed_validation)

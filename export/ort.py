"""ONNX Runtime backend: a :class:`~zreward_deploy.scoring.BaseScorer` over an exported ONNX folder.

An export folder (written by :func:`zreward_deploy.export.onnx.export_onnx`) holds ``model.onnx``, the
model's ``config.json`` (its rubric lists the exported dimensions, in graph order), the tokenizer and
``zreward_processor.json`` (so :class:`~zreward_deploy.processing.ZRewardProcessor` preprocesses exactly as
for the torch backend) and ``zreward_onnx.json`` (rubric, score scale, dtype, versions, validation).

Graph contract (DESIGN.md §8): inputs ``input_ids [B, S]`` int64, ``attention_mask [B, S]`` int64,
``pixel_values [B, 3, H, W]`` (float32, or float16 in the fp16 variant); outputs ``probs [B, D, K]``,
``mean [B, D]``, ``std [B, D]``, ``reward [B]``, all float32. The graph always scores every exported
dimension; :class:`OrtScorer` selects (and reorders) the columns a caller asks for.

Providers: ``CPUExecutionProvider`` (``device="cpu"``) and ``CUDAExecutionProvider`` (``device="cuda[:N]"``,
needs ``onnxruntime-gpu``) with IO binding, so inputs and outputs stay in torch CUDA tensors and ORT does no
host round trip. ``onnxruntime`` is imported only when a session is made.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from zreward_deploy.errors import (
    InvalidModelError,
    MissingDependencyError,
    UnknownDimensionError,
    ZRewardInputError,
)
from zreward_deploy.fileio import is_within, open_regular_file, read_json_object
from zreward_deploy.processing import ZRewardProcessor
from zreward_deploy.scoring import BaseScorer

METADATA_FILE = "zreward_onnx.json"
"""The self-description of an export folder (rubric, scale, dtype, versions, validation results)."""
ONNX_FILE = "model.onnx"
FORMAT = "zreward-onnx"
FORMAT_VERSION = 1
INPUT_NAMES = ("input_ids", "attention_mask", "pixel_values")
OUTPUT_NAMES = ("probs", "mean", "std", "reward")
DTYPES = ("fp32", "fp16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}

_OPT_LEVELS = ("disable", "basic", "extended", "all")


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
    if "validation" not in meta:
        raise InvalidModelError(where, "has no validation record (null when the export was not validated)")
    validation = meta["validation"]
    if validation is not None and not (
        isinstance(validation, dict) and isinstance(validation.get("passed"), bool)
    ):
        raise InvalidModelError(where, "validation must be null or an object with a boolean 'passed'")
    files = meta.get("files", {})
    if not isinstance(files, dict) or not all(
        isinstance(v, str) and _SHA256.fullmatch(v) for v in files.values()
    ):
        raise InvalidModelError(where, "files must map file names to SHA-256 hex digests")


def _check_config(directory: Path, meta: dict[str, Any]) -> None:
    """The folder's ``config.json`` (what the processor and the scorer's rubric come from) must describe
    the same dimensions, in the same order, and the same score scale, image size and prompt limit."""
    from zreward_deploy.config import load_config

    path = directory / "config.json"
    if not path.is_file():
        raise InvalidModelError(str(path), "is missing; an export folder holds its model config")
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
    the one that was checked even if the folder is replaced meanwhile."""
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
    return meta, hashed


def read_export_metadata(
    export_dir: str | os.PathLike, allow_failed_validation: bool = False
) -> dict[str, Any]:
    """The metadata of an export folder, after :func:`verify_export` checked the folder against it."""
    return verify_export(export_dir, allow_failed_validation=allow_failed_validation)


# --------------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------------


def import_onnxruntime() -> Any:
    """``import onnxruntime``, or :class:`MissingDependencyError` naming the ``onnx`` extra."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", "onnx", "the ONNX Runtime backend") from exc
    return onnxruntime


@dataclass
class OrtSessionConfig:
    """ONNX Runtime session settings (one per scorer)."""

    graph_optimization_level: str = field(
        default="all",
        metadata={"help": "ORT graph optimizations: disable, basic, extended or all (fusions need 'all')"},
    )
    intra_op_num_threads: int = field(
        default=0, metadata={"help": "threads inside one operator; 0 = ORT's default (the physical cores)"}
    )
    inter_op_num_threads: int = field(
        default=0, metadata={"help": "threads across operators (parallel mode only); 0 = ORT's default"}
    )
    parallel_execution: bool = field(
        default=False, metadata={"help": "run independent graph branches in parallel (rarely helps here)"}
    )
    io_binding: bool = field(
        default=True, metadata={"help": "CUDA provider: bind torch CUDA tensors as inputs/outputs"}
    )
    optimized_model_path: str | None = field(
        default=None, metadata={"help": "write the optimized graph here (to inspect which fusions ran)"}
    )

    def __post_init__(self) -> None:
        if self.graph_optimization_level not in _OPT_LEVELS:
            raise ZRewardInputError(
                "graph_optimization_level",
                f"must be one of {_OPT_LEVELS}, got {self.graph_optimization_level!r}",
            )
        if self.intra_op_num_threads < 0 or self.inter_op_num_threads < 0:
            raise ZRewardInputError("threads", "thread counts must be >= 0 (0 = ORT's default)")


def parse_device(device: str | torch.device | None) -> tuple[str, int]:
    """``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` -> ``("cpu" | "cuda", device index)``."""
    dev = torch.device(device if device is not None else "cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ZRewardInputError(device, "the ONNX Runtime backend runs on 'cpu' or 'cuda[:N]'")
    return dev.type, dev.index or 0


def create_session(
    onnx_path: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    session_config: OrtSessionConfig | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``onnx_path`` on the CPU or CUDA provider.

    Raises :class:`MissingDependencyError` when ``onnxruntime`` (or, for CUDA, ``onnxruntime-gpu``'s CUDA
    provider) is not installed.
    """
    ort = import_onnxruntime()
    cfg = session_config or OrtSessionConfig()
    kind, index = parse_device(device)
    if kind == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MissingDependencyError(
                "onnxruntime-gpu", "gpu", "ONNX Runtime on CUDA (the CUDA execution provider)"
            )
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[cfg.graph_optimization_level]
    options.intra_op_num_threads = cfg.intra_op_num_threads
    options.inter_op_num_threads = cfg.inter_op_num_threads
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if cfg.parallel_execution else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    if cfg.optimized_model_path:
        options.optimized_model_filepath = str(cfg.optimized_model_path)
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)


# --------------------------------------------------------------------------------------------------
# The scorer
# --------------------------------------------------------------------------------------------------

_NUMPY_OF_TORCH = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64"}
_ORT_TYPES = {"fp32": "tensor(float)", "fp16": "tensor(float16)"}


class OrtScorer(BaseScorer):
    """Scores (image, prompt) pairs with an exported ONNX graph in ONNX Runtime (the ``onnx`` backend).

    Args:
        session: an ``onnxruntime.InferenceSession`` of the export's ``model.onnx``.
        processor: the export's processor (same preprocessing as the torch backend).
        metadata: the export's ``zreward_onnx.json``.
        device: ``"cpu"`` or ``"cuda[:N]"`` (must match the session's provider).
        max_batch_size: micro-batch size; calls with more items are split.
        io_binding: on CUDA, bind torch CUDA tensors instead of copying through numpy.
    """

    backend = "onnx"

    def __init__(
        self,
        session: Any,
        processor: ZRewardProcessor,
        metadata: dict[str, Any],
        device: str | torch.device | None = "cpu",
        max_batch_size: int = 32,
        io_binding: bool = True,
    ):
        if max_batch_size < 1:
            raise ZRewardInputError("max_batch_size", f"must be >= 1, got {max_batch_size}")
        self.session = session
        self.processor = processor
        self.metadata = metadata
        self.max_batch_size = max_batch_size
        self.device_type, self.device_index = parse_device(device)
        self.io_binding = io_binding and self.device_type == "cuda"
        self.dtype = metadata["dtype"]
        self.dimensions: list[str] = list(metadata["dimensions"])
        self.num_scores = len(metadata["score_scale"]["values"])
        graph = str(metadata.get("onnx_file", ONNX_FILE))
        inputs = {i.name: i for i in session.get_inputs()}
        if sorted(inputs) != sorted(INPUT_NAMES):
            raise InvalidModelError(graph, f"graph inputs {sorted(inputs)} are not {list(INPUT_NAMES)}")
        pixel_type = _ORT_TYPES[self.dtype]
        if inputs["pixel_values"].type != pixel_type:
            raise InvalidModelError(
                graph, f"pixel_values is {inputs['pixel_values'].type} but {METADATA_FILE} says {self.dtype}"
            )
        # The graph's own static shapes against the metadata: a D or K mismatch is refused, not misread.
        check_graph_outputs(metadata, {o.name: o.shape for o in session.get_outputs()}, graph)

    @classmethod
    def from_pretrained(
        cls,
        export_dir: str | os.PathLike,
        device: str | torch.device | None = "cpu",
        max_batch_size: int = 32,
        dtype: str | torch.dtype | None = None,
        session_config: OrtSessionConfig | None = None,
        provider: str | None = None,
        allow_failed_validation: bool = False,
    ) -> OrtScorer:
        """Load an export folder (``zreward export onnx``).

        Args:
            export_dir: the export folder.
            device: ``"cpu"`` (CPU provider) or ``"cuda[:N]"`` (CUDA provider, ``onnxruntime-gpu``).
            max_batch_size: micro-batch size.
            dtype: optional check: the dtype the caller expects (``"fp16"``/``torch.float16``, ...); the
                graph's dtype is fixed at export, so a different one raises instead of silently running it.
            session_config: ORT session settings (threads, graph optimization level).
            provider: ``"cpu"`` or ``"cuda"``, an alias of ``device`` kept for ORT users.
            allow_failed_validation: load an export whose validation failed (``validation.passed:
                false``), e.g. to inspect it; refused otherwise.

        Raises:
            InvalidModelError: the folder fails :func:`verify_export` (a tampered, mixed or half-written
                export, a failed validation, a file name leaving the folder), or its graph's inputs and
                static output shapes disagree with the metadata.
        """
        meta, hashed = verify_export_graph(export_dir, allow_failed_validation=allow_failed_validation)
        if provider is not None:
            device = provider
        if dtype is not None:
            wanted = {torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, dtype)
            if wanted != meta["dtype"]:
                raise ZRewardInputError(
                    "dtype",
                    f"this export is {meta['dtype']}; export again with --dtype {wanted} to run in {wanted}",
                )
        processor = ZRewardProcessor.from_pretrained(export_dir)
        cfg = session_config or OrtSessionConfig()
        graph = Path(export_dir) / meta["onnx_file"]
        session = create_session(graph, device, cfg)
        check_unchanged(graph, hashed)  # ONNX Runtime read the very file whose hash was checked
        return cls(session, processor, meta, device, max_batch_size, io_binding=cfg.io_binding)

    # -- raw graph ------------------------------------------------------------------------------------
    def run(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Run the graph on one padded batch.

        Args:
            input_ids, attention_mask: ``[B, S]`` int64 (right-padded prompt part).
            pixel_values: ``[B, 3, H, W]`` float (cast to the export's dtype here).

        Returns:
            ``{"probs": [B, D, K], "mean": [B, D], "std": [B, D], "reward": [B]}`` float32 tensors over all
            exported dimensions (CPU tensors, or CUDA tensors with IO binding).
        """
        feeds = {
            "input_ids": input_ids.to(torch.int64),
            "attention_mask": attention_mask.to(torch.int64),
            "pixel_values": pixel_values.to(TORCH_DTYPES[self.dtype]),
        }
        if self.io_binding:
            return self._run_bound(feeds)
        arrays = {name: t.detach().cpu().contiguous().numpy() for name, t in feeds.items()}
        outputs = self.session.run(list(OUTPUT_NAMES), arrays)
        return {name: torch.from_numpy(out) for name, out in zip(OUTPUT_NAMES, outputs, strict=True)}

    def _run_bound(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """CUDA provider with IO binding: ORT reads and writes torch CUDA memory directly."""
        import numpy as np

        dev = torch.device("cuda", self.device_index)
        binding = self.session.io_binding()
        inputs = {name: t.to(dev).contiguous() for name, t in feeds.items()}  # kept alive until the run ends
        for name, t in inputs.items():
            binding.bind_input(
                name,
                "cuda",
                self.device_index,
                np.dtype(_NUMPY_OF_TORCH[t.dtype]),
                tuple(t.shape),
                t.data_ptr(),
            )
        b, d, k = inputs["input_ids"].shape[0], len(self.dimensions), self.num_scores
        shapes = {"probs": (b, d, k), "mean": (b, d), "std": (b, d), "reward": (b,)}
        outputs = {
            name: torch.empty(shape, dtype=torch.float32, device=dev) for name, shape in shapes.items()
        }
        for name, t in outputs.items():
            binding.bind_output(name, "cuda", self.device_index, np.float32, tuple(t.shape), t.data_ptr())
        # torch wrote the inputs on its current stream; ORT runs on its own stream
        torch.cuda.current_stream(dev).synchronize()
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outputs

    def columns(self, dimensions: list[str]) -> list[int]:
        """Graph columns of ``dimensions``; a dimension that was not exported raises."""
        missing = [d for d in dimensions if d not in self.dimensions]
        if missing:
            raise UnknownDimensionError(
                missing[0], f"was not exported to this ONNX graph; it has {self.dimensions}"
            )
        return [self.dimensions.index(d) for d in dimensions]

    def _forward(self, pixel_values, input_ids, attention_mask, dimensions):
        cols = self.columns(list(dimensions))
        out = self.run(input_ids, attention_mask, pixel_values)
        index = torch.tensor(cols, device=out["probs"].device)
        return (
            out["probs"].index_select(1, index),
            out["mean"].index_select(1, index),
            out["std"].index_select(1, index),
        )

    def describe(self) -> dict[str, Any]:
        """Provider, threads and dtype, for benchmark records."""
        options = self.session.get_session_options()
        return {
            "backend": self.backend,
            "dtype": self.dtype,
            "providers": self.session.get_providers(),
            "intra_op_num_threads": options.intra_op_num_threads,
            "graph_optimization_level": str(options.graph_optimization_level),
        }

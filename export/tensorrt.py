"""TensorRT backend: an engine built from the exported ONNX, behind the one ``Scorer`` interface.

Written against the documented TensorRT 10 Python API (``trt.Builder``, a strongly typed network from
``trt.OnnxParser``, one optimization profile per text-length bucket, ``build_serialized_network``;
at run time ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` on torch CUDA buffers).
``tensorrt`` is imported only inside the functions that need it; without it they raise
:class:`~zreward_deploy.errors.MissingDependencyError` naming the ``gpu`` extra.

**No TensorRT run has been made in this project's environment** (its libraries are not on the package
index reachable from the development machines, and no GPU is attached there). What runs everywhere and is
unit-tested: the profile shapes (:func:`optimization_profiles`), the bucket choice and padding
(:func:`bucket_for_length`, :func:`pad_to_length`), the engine cache key (:func:`engine_cache_key`) and the
error without TensorRT. The engine tests (``tests/export/test_tensorrt.py``, marker ``tensorrt``) run
wherever ``import tensorrt`` works and a GPU is visible.

Design:

* **Strongly typed** (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): tensor types come from the ONNX
  graph, so the fp16 export gives an fp16 engine whose score head, softmax and moments stay fp32 exactly
  as exported; no builder precision flags. (TensorRT 11 makes strong typing the only mode and ignores the
  flag.)
* **Text-length buckets**: one profile per bucket edge ``L`` with the text length fixed at ``L`` and the
  batch dynamic in ``[1, max_batch_size]``. At run time a batch is right-padded to its bucket's edge:
  the model's output does not depend on right padding (padding keys are masked and position ids restart
  after each row's own prompt, see ``multi_suffix_mask``), and a fixed length lets TensorRT pick kernels
  for exactly that shape. Triton's dynamic batcher groups requests by shape, so the same buckets make its
  batches (``export/triton_repo.py``).
* **Engine cache** keyed by everything that makes a plan invalid elsewhere: the ONNX bytes, GPU name and
  compute capability, TensorRT version, the profiles and the builder settings
  (:func:`engine_cache_key`). A plan is written atomically as ``<cache_dir>/<key>.plan``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from zreward_deploy.errors import (
    InvalidModelError,
    MissingDependencyError,
    UnknownDimensionError,
    ZRewardInputError,
)
from zreward_deploy.fileio import (
    atomic_directory,
    atomic_write_bytes,
    check_output_dir,
    is_within,
    open_regular_file,
    read_json_object,
)
from zreward_deploy.processing import ZRewardProcessor
from zreward_deploy.scoring import BaseScorer

from .config import TensorRTBuildConfig
from .contract import (
    METADATA_FILE,
    FileIdentity,
    check_graph_outputs,
    check_unchanged,
    export_file,
    file_sha256,
    file_sha256_and_identity,
    graph_digest,
    verify_export,
    verify_export_files,
)

TENSORRT_METADATA_FILE = "zreward_tensorrt.json"
ENGINE_DIR = "engines"

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]
"""One optimization profile: input name -> (min, opt, max) shapes."""


# --------------------------------------------------------------------------------------------------
# Settings and pure functions (tested without TensorRT)
# --------------------------------------------------------------------------------------------------


def optimization_profiles(config: TensorRTBuildConfig, image_size: int) -> list[Profile]:
    """One profile per text-length bucket.

    Profile ``i`` fixes the text length at bucket edge ``L_i`` (inputs are padded to it) and lets the
    batch range over ``[1, max_batch_size]``, tuned at ``opt_batch_size``::

        input_ids, attention_mask:  (1, L_i)        (opt, L_i)        (max, L_i)
        pixel_values:               (1, 3, H, W)    (opt, 3, H, W)    (max, 3, H, W)
    """
    lo, opt, hi = 1, config.opt_batch_size, config.max_batch_size
    image = (3, image_size, image_size)
    profiles = []
    for length in config.text_length_buckets:
        text = ((lo, length), (opt, length), (hi, length))
        profiles.append(
            {
                "input_ids": text,
                "attention_mask": text,
                "pixel_values": ((lo, *image), (opt, *image), (hi, *image)),
            }
        )
    return profiles


def bucket_for_length(length: int, buckets: Sequence[int]) -> int:
    """Index of the smallest bucket edge ``>= length``; a longer text raises."""
    for i, edge in enumerate(buckets):
        if length <= edge:
            return i
    raise ZRewardInputError(
        "prompt length", f"{length} tokens is longer than the largest text-length bucket {buckets[-1]}"
    )


def pad_to_length(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, length: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``[B, S]`` ids (with ``pad_id``) and mask (with 0) to ``[B, length]``."""
    extra = length - input_ids.shape[1]
    if extra < 0:
        raise ZRewardInputError("length", f"cannot pad {input_ids.shape[1]} tokens down to {length}")
    if extra == 0:
        return input_ids, attention_mask
    pad = input_ids.new_full((input_ids.shape[0], extra), pad_id)
    return torch.cat([input_ids, pad], 1), torch.cat([attention_mask, torch.zeros_like(pad)], 1)


def check_buckets(config: TensorRTBuildConfig, max_prompt_tokens: int) -> None:
    """The largest bucket must hold the longest prompt the model accepts, or some valid prompts could
    not be scored."""
    if config.text_length_buckets[-1] < max_prompt_tokens:
        raise ZRewardInputError(
            "text_length_buckets",
            f"the largest bucket {config.text_length_buckets[-1]} is shorter than the model's prompt limit "
            f"({max_prompt_tokens} tokens); add a bucket of at least {max_prompt_tokens}",
        )


def engine_cache_key(
    onnx_sha256: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    tensorrt_version: str,
    profiles: Sequence[Profile],
    builder_settings: dict[str, Any] | None = None,
) -> str:
    """Hex key (24 characters) of a TensorRT plan: a plan is only valid for the same ONNX bytes, GPU model,
    compute capability, TensorRT version, profiles and builder settings."""
    payload = {
        "onnx_sha256": onnx_sha256,
        "gpu": gpu_name,
        "compute_capability": list(compute_capability),
        "tensorrt": tensorrt_version,
        "profiles": [{k: [list(s) for s in v] for k, v in sorted(p.items())} for p in profiles],
        "builder": builder_settings or {},
        "strongly_typed": True,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------------------
# TensorRT itself (lazy)
# --------------------------------------------------------------------------------------------------


class TensorRTBuildError(RuntimeError):
    """TensorRT could not parse the ONNX graph or build an engine from it."""


def import_tensorrt() -> Any:
    """``import tensorrt``, or :class:`MissingDependencyError` naming the ``gpu`` extra.

    PyPI's ``tensorrt`` is a stub that downloads the real libraries at install time; where that failed the
    import fails too, which is the same missing dependency to the user.
    """
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or the stub's own error when its libraries are absent
        raise MissingDependencyError("tensorrt", "gpu", "the TensorRT backend") from exc
    return tensorrt


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise ZRewardInputError("device", "the TensorRT backend needs a CUDA GPU; torch sees none")


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int64: torch.int64,
        trt.int32: torch.int32,
        trt.bool: torch.bool,
    }
    if dtype not in table:
        raise TensorRTBuildError(f"engine tensor type {dtype} has no torch equivalent here")
    return table[dtype]


def build_engine(
    onnx_path: str | os.PathLike, profiles: Sequence[Profile], config: TensorRTBuildConfig
) -> bytes:
    """Parse the ONNX graph into a strongly typed network and build a serialized engine (plan).

    Raises:
        MissingDependencyError: without TensorRT.
        TensorRTBuildError: parser errors (each listed) or a failed build.
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external-data files next to the graph, which parse(bytes) cannot
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError(f"TensorRT cannot parse {onnx_path}: " + "; ".join(errors))
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * (1 << 30)))
    builder_config.builder_optimization_level = config.builder_optimization_level
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        builder_config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, builder_config)
    if plan is None:
        raise TensorRTBuildError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    return bytes(plan)


def device_identity(device_index: int = 0) -> tuple[str, tuple[int, int]]:
    """GPU name and compute capability (queried only when an engine is built or loaded)."""
    props = torch.cuda.get_device_properties(device_index)
    return props.name, (props.major, props.minor)


def load_or_build_engine(
    onnx_path: Path,
    profiles: Sequence[Profile],
    config: TensorRTBuildConfig,
    cache_dir: Path,
    device_index: int = 0,
    onnx_sha256: str | None = None,
    onnx_identity: FileIdentity | None = None,
    data_identities: dict[Path, FileIdentity] | None = None,
) -> tuple[bytes, str, bool]:
    """The plan for this GPU and TensorRT version: from ``cache_dir`` when its key is there, else built
    and stored. Returns ``(plan, key, built_now)``.

    ``onnx_sha256``: the graph's hash when the caller has already checked it (:func:`verify_export`), so
    a load hashes the graph once; hashed here otherwise. The key holds that hash, so a cached plan is only
    ever one built from the graph the export's metadata describes. ``onnx_identity``: the identity of the
    file that hash was taken of (:func:`~zreward_deploy.export.contract.verify_export_graph`); a plan built
    from a file that was replaced since is refused before it is cached. ``data_identities``: the same for
    the graph's external data file (the parser reads it from beside the graph); pass
    :func:`~zreward_deploy.export.contract.graph_digest` as ``onnx_sha256`` then, so the key covers it.
    """
    trt = import_tensorrt()
    _require_cuda()
    gpu, capability = device_identity(device_index)
    settings = {"workspace_gib": config.workspace_gib, "opt_level": config.builder_optimization_level}
    digest = onnx_sha256 or file_sha256(onnx_path)
    key = engine_cache_key(digest, gpu, capability, trt.__version__, profiles, settings)
    path = cache_dir / f"{key}.plan"
    if path.exists() or path.is_symlink():
        # A plan is deserialized into the GPU process: only a regular file inside the cache is read.
        if not is_within(path, cache_dir):
            raise InvalidModelError(str(path), f"resolves outside the engine cache {cache_dir}; refused")
        with open_regular_file(path, InvalidModelError) as f:
            return f.read(), key, False
    plan = build_engine(onnx_path, profiles, config)
    if onnx_identity is not None:
        check_unchanged(onnx_path, onnx_identity)  # the parser read the very file whose hash is the key
    for data_path, data_identity in (data_identities or {}).items():
        check_unchanged(data_path, data_identity)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, plan)  # a concurrent reader never sees half a plan; builders never collide
    return plan, key, True


class TensorRTEngine:
    """A deserialized engine with one execution context per optimization profile, on torch CUDA buffers.

    Args:
        plan: the serialized engine.
        buckets: the text-length bucket edges, in profile order.
        device_index: the CUDA device.
    """

    def __init__(self, plan: bytes, buckets: Sequence[int], device_index: int = 0):
        trt = import_tensorrt()
        self.trt = trt
        self.device = torch.device("cuda", device_index)
        self.buckets = tuple(buckets)
        with torch.cuda.device(self.device):  # TensorRT works on the current CUDA device
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self.runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise TensorRTBuildError(
                    "TensorRT could not deserialize the plan (another TensorRT version or GPU?)"
                )
            if self.engine.num_optimization_profiles != len(self.buckets):
                raise TensorRTBuildError(
                    f"the engine has {self.engine.num_optimization_profiles} profiles but {len(self.buckets)} buckets"
                )
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
            self.stream = torch.cuda.Stream(device=self.device)
            self.contexts = []
            for i in range(len(self.buckets)):
                context = self.engine.create_execution_context()
                context.set_optimization_profile_async(i, self.stream.cuda_stream)
                self.contexts.append(context)
            self.stream.synchronize()

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run one batch whose text length is a bucket edge -> output tensors on the GPU.

        Args:
            inputs: ``input_ids``/``attention_mask`` ``[B, L]`` with ``L`` in ``buckets``,
                ``pixel_values [B, 3, H, W]``.
        """
        length = inputs["input_ids"].shape[1]
        if length not in self.buckets:
            raise ZRewardInputError("text length", f"{length} is not a bucket edge {self.buckets}; pad first")
        context = self.contexts[self.buckets.index(length)]
        with torch.cuda.stream(self.stream):
            feeds = {n: inputs[n].to(self.device, self.dtypes[n]).contiguous() for n in self.inputs}
            for name, tensor in feeds.items():
                if not context.set_input_shape(name, tuple(tensor.shape)):
                    raise ZRewardInputError(
                        name, f"shape {tuple(tensor.shape)} is outside the engine's profile"
                    )
                context.set_tensor_address(name, tensor.data_ptr())
            outputs = {
                n: torch.empty(tuple(context.get_tensor_shape(n)), dtype=self.dtypes[n], device=self.device)
                for n in self.outputs
            }
            for name, tensor in outputs.items():
                context.set_tensor_address(name, tensor.data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise TensorRTBuildError("TensorRT execution failed (see its log)")
        self.stream.synchronize()  # feeds must outlive the run; callers read outputs on other streams
        return outputs


# --------------------------------------------------------------------------------------------------
# The artefact folder and the scorer
# --------------------------------------------------------------------------------------------------


def export_tensorrt(
    onnx_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TensorRTBuildConfig | None = None,
    build: bool = True,
    overwrite: bool = False,
    allow_failed_validation: bool = False,
) -> dict[str, Any]:
    """Make a TensorRT folder from an ONNX export folder: a copy of the export (graph, config, tokenizer,
    metadata) + ``zreward_tensorrt.json`` (profiles, buckets) + ``engines/<key>.plan`` when ``build``.

    The plan only runs on the GPU model and TensorRT version it was built with; loading the folder
    elsewhere rebuilds into ``engines/`` (the ONNX is kept beside it for that reason). The source is
    checked with :func:`verify_export` first, and the folder is built under a temporary name and renamed
    into place when complete (a failed build leaves nothing).

    Args:
        onnx_dir: the ONNX export folder (never inside ``out_dir`` or containing it).
        out_dir: the TensorRT folder (new or empty unless ``overwrite``, which replaces it).
        config: build settings.
        build: build the engine now (else it is built on first load).
        overwrite: replace a non-empty ``out_dir``.
        allow_failed_validation: accept a source whose ONNX validation failed.

    Raises:
        MissingDependencyError: ``build`` without TensorRT (the folder is not written then).
        InvalidModelError: the source export fails :func:`verify_export`.
    """
    cfg = config or TensorRTBuildConfig()
    src = Path(onnx_dir)
    meta = verify_export(src, allow_failed_validation=allow_failed_validation)
    check_buckets(cfg, meta["max_prompt_tokens"])
    if build:
        import_tensorrt()  # fail before copying anything
        _require_cuda()
    out = check_output_dir(out_dir, overwrite, protect=[src], marker=[TENSORRT_METADATA_FILE, METADATA_FILE])
    profiles = optimization_profiles(cfg, meta["image_size"])
    record: dict[str, Any] = {
        "build_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "profiles": [{k: [list(s) for s in v] for k, v in p.items()} for p in profiles],
        "engine": None,
    }
    with atomic_directory(out) as tmp:
        # Engines and a TensorRT record of a TensorRT source are this folder's own, made below.
        shutil.copytree(
            src,
            tmp,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(ENGINE_DIR, TENSORRT_METADATA_FILE, ".export-*"),
        )
        graph = tmp / meta["onnx_file"]
        copied, identity = file_sha256_and_identity(graph)
        data_identities: dict[Path, FileIdentity] = {}
        external = meta.get("external_data")
        if external is not None:
            data_sha, data_identities[tmp / external["file"]] = file_sha256_and_identity(
                tmp / external["file"]
            )
            copied = copied if data_sha == external["sha256"] else ""
        if copied != meta["onnx_sha256"]:  # the source was replaced between its check and the copy
            raise InvalidModelError(str(src), "changed while it was being copied; run the command again")
        if build:
            _, key, _ = load_or_build_engine(
                graph,
                profiles,
                cfg,
                tmp / ENGINE_DIR,
                onnx_sha256=graph_digest(meta),
                onnx_identity=identity,
                data_identities=data_identities,
            )
            gpu, capability = device_identity()
            record["engine"] = {
                "file": f"{ENGINE_DIR}/{key}.plan",
                "key": key,
                "gpu": gpu,
                "compute_capability": list(capability),
                "tensorrt": import_tensorrt().__version__,
            }
        (tmp / TENSORRT_METADATA_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def read_tensorrt_record(directory: Path) -> dict[str, Any] | None:
    """``zreward_tensorrt.json`` of a TensorRT folder (``None`` for a plain ONNX export folder), checked:
    an object whose ``build_config`` is an object and whose ``engine`` is null or names a plan file that
    stays inside the folder (:func:`~zreward_deploy.export.contract.export_file`)."""
    path = directory / TENSORRT_METADATA_FILE
    if not path.exists() and not path.is_symlink():
        return None
    export_file(directory, TENSORRT_METADATA_FILE, path, "the TensorRT record")
    record = read_json_object(path, InvalidModelError)
    if not isinstance(record.get("build_config"), dict):
        raise InvalidModelError(str(path), "is not a TensorRT record (no build_config object)")
    engine = record.get("engine")
    if engine is not None:
        if not isinstance(engine, dict):
            raise InvalidModelError(str(path), "engine must be null or an object")
        export_file(directory, engine.get("file"), path, "engine.file")
    return record


def read_build_config(directory: Path) -> TensorRTBuildConfig:
    """The build settings of a TensorRT folder, or the defaults for a plain ONNX export folder."""
    record = read_tensorrt_record(directory)
    if record is None:
        return TensorRTBuildConfig()
    try:
        return TensorRTBuildConfig(**record["build_config"])
    except (TypeError, ValueError) as exc:  # ZRewardInputError is a ValueError
        raise InvalidModelError(
            str(directory / TENSORRT_METADATA_FILE), f"is not a valid TensorRT record ({exc})"
        ) from None


class TensorRTScorer(BaseScorer):
    """Scores (image, prompt) pairs with a TensorRT engine (the ``tensorrt`` backend).

    Micro-batches are right-padded to their text-length bucket and run with that bucket's profile.
    """

    backend = "tensorrt"

    def __init__(
        self,
        engine: TensorRTEngine,
        processor: ZRewardProcessor,
        metadata: dict[str, Any],
        max_batch_size: int,
    ):
        self.engine = engine
        self.processor = processor
        self.metadata = metadata
        self.max_batch_size = max_batch_size
        self.dimensions: list[str] = list(metadata["dimensions"])

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        device: str | torch.device | None = "cuda",
        max_batch_size: int | None = None,
        build_config: TensorRTBuildConfig | None = None,
        cache_dir: str | os.PathLike | None = None,
        dtype: Any = None,
        allow_failed_validation: bool = False,
    ) -> TensorRTScorer:
        """Load a TensorRT folder (``zreward export tensorrt``) or an ONNX export folder.

        The engine comes from ``cache_dir`` (default ``<model_dir>/engines``) when a plan with this GPU's
        and TensorRT's key is there, and is built otherwise. ``device`` must be a CUDA device (``"cpu"``,
        the CLI default, is read as ``cuda:0``: TensorRT has no CPU mode). ``dtype`` is fixed by the export.
        The folder goes through :func:`~zreward_deploy.export.contract.verify_export` (the same checks as the
        ONNX Runtime backend); ``allow_failed_validation`` loads an export whose validation failed.

        Raises:
            MissingDependencyError: without TensorRT (checked first, before any CUDA query).
            InvalidModelError: the folder fails the export checks, or the engine's output shapes
                disagree with the metadata.
        """
        import_tensorrt()
        directory = Path(model_dir)
        meta, identities = verify_export_files(directory, allow_failed_validation=allow_failed_validation)
        hashed = identities[meta["onnx_file"]]
        data = {directory / n: i for n, i in identities.items() if n != meta["onnx_file"]}
        dev = torch.device(device) if device not in (None, "cpu") else torch.device("cuda", 0)
        if dev.type != "cuda":
            raise ZRewardInputError(device, "the TensorRT backend runs on CUDA devices only")
        _require_cuda()
        cfg = build_config or read_build_config(directory)
        check_buckets(cfg, meta["max_prompt_tokens"])
        batch = min(max_batch_size or cfg.max_batch_size, cfg.max_batch_size)
        profiles = optimization_profiles(cfg, meta["image_size"])
        plan, _, _ = load_or_build_engine(
            directory / meta["onnx_file"],
            profiles,
            cfg,
            Path(cache_dir) if cache_dir is not None else directory / ENGINE_DIR,
            dev.index or 0,
            onnx_sha256=graph_digest(meta),  # verified above: the graph is hashed once per load
            onnx_identity=hashed,
            data_identities=data,
        )
        engine = TensorRTEngine(plan, cfg.text_length_buckets, dev.index or 0)
        shapes = {n: tuple(engine.engine.get_tensor_shape(n)) for n in engine.outputs}  # -1: dynamic
        check_graph_outputs(meta, shapes, "TensorRT engine")
        from .native_graph import load_export_processor  # a native model's export, or the package's

        return cls(engine, load_export_processor(directory), meta, batch)

    def _forward(self, pixel_values, input_ids, attention_mask, dimensions):
        missing = [d for d in dimensions if d not in self.dimensions]
        if missing:
            raise UnknownDimensionError(
                missing[0], f"was not exported to this engine; it has {self.dimensions}"
            )
        bucket = self.engine.buckets[bucket_for_length(input_ids.shape[1], self.engine.buckets)]
        ids, mask = pad_to_length(input_ids, attention_mask, bucket, self.processor.tokenizer.pad_token_id)
        out = self.engine.run({"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values})
        cols = torch.tensor([self.dimensions.index(d) for d in dimensions], device=out["probs"].device)
        return (
            out["probs"].float().index_select(1, cols),
            out["mean"].float().index_select(1, cols),
            out["std"].float().index_select(1, cols),
        )


__all__ = [
    "METADATA_FILE",
    "TENSORRT_METADATA_FILE",
    "TensorRTBuildConfig",
    "TensorRTBuildError",
    "TensorRTEngine",
    "TensorRTScorer",
    "bucket_for_length",
    "build_engine",
    "check_buckets",
    "engine_cache_key",
    "export_tensorrt",
    "import_tensorrt",
    "optimization_profiles",
    "pad_to_length",
]

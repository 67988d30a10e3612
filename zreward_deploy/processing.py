"""Input processing: images in any common form -> ``pixel_values``; prompts -> token ids.

One preprocessing path serves every backend (docs/design.md §9): every image is first turned into a float
tensor ``[3, H, W]`` in [0, 1] (:func:`image_to_tensor`), then :func:`preprocess_tensor` resizes
(bilinear, antialiased) and normalises it. That last step is pure torch, differentiable and keeps the
tensor on its device, so the differentiable reward (ReFL/DRaFT) and the file-based scorer see exactly the
same pixels.

Validation happens per item and raises :class:`~zreward_deploy.errors.InvalidImageError` /
:class:`~zreward_deploy.errors.InvalidPromptError` naming the item, so a batch caller can keep the valid
items (see ``Scorer.score(..., errors="collect")``).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F

from .config import ZRewardConfig, fill_template, load_config
from .errors import InvalidImageError, InvalidModelError, InvalidPromptError
from .fileio import atomic_write_text, read_json_object
from .imagefile import (  # noqa: F401 - probe_image_file: re-exported for callers of this module
    DEFAULT_MAX_IMAGE_PIXELS,
    check_image_size,
    load_image_file,
    probe_image_file,
)

ImageInput = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray, torch.Tensor]  # noqa: F821

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_PIL_MODES = {
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "I",
} | _SIXTEEN_BIT_MODES


# --------------------------------------------------------------------------------------------------
# Images -> float tensors [3, H, W] in [0, 1]
# --------------------------------------------------------------------------------------------------


RowReader = Callable[[int, int], np.ndarray]
"""``rows(top, bottom)`` -> the ``[bottom - top, W, C]`` numpy rows of an image (any dtype)."""


def _pil_rows(image: PIL.Image.Image, item: Any) -> tuple[RowReader, float]:  # noqa: F821
    """A PIL image -> (a reader of its rows as ``[h, W, C]`` numpy arrays, the value of full intensity).

    Rows are cropped and converted strip by strip (every mode conversion here is per pixel, so this
    equals converting the whole image), so no second full-size copy of the image is made. 16-bit
    greyscale keeps its full range (C = 1, 65535); modes with alpha become RGBA (C = 4); palette, CMYK and
    YCbCr convert through RGB. Float ("F") and other exotic modes have no defined range and are refused.
    """
    mode, width = image.mode, image.width
    if mode not in _PIL_MODES:
        raise InvalidImageError(
            item, f"unsupported image mode {mode!r}; use RGB, RGBA, L, P, 16-bit L or CMYK"
        )
    if mode in _SIXTEEN_BIT_MODES or mode == "I":

        def sixteen_bit(top: int, bottom: int) -> np.ndarray:
            array = np.asarray(image.crop((0, top, width, bottom)))
            # "I" holds 32-bit ints; PNG 16-bit greyscale decodes to it in some PIL versions.
            if array.min() < 0 or array.max() > 65535:
                raise InvalidImageError(item, f"mode {mode!r} values outside the 16-bit range")
            return array[..., None]

        return sixteen_bit, 65535.0
    alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
    target = "RGBA" if alpha else "RGB"

    def eight_bit(top: int, bottom: int) -> np.ndarray:
        crop = image.crop((0, top, width, bottom))
        return np.asarray(crop if crop.mode == target else crop.convert(target))

    return eight_bit, 255.0


def _numpy_image(array: np.ndarray, item: Any) -> tuple[np.ndarray, float]:
    """A numpy image ``[H, W]`` / ``[H, W, 1|3|4]`` -> (``[H, W, C]`` array, the value of full intensity)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise InvalidImageError(
            item, f"numpy images must be HxW or HxWxC with C in (1, 3, 4), got shape {tuple(array.shape)}"
        )
    if array.dtype == np.uint8:
        return array, 255.0
    if array.dtype == np.uint16:
        return array, 65535.0
    if np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_:
        return array, 1.0
    raise InvalidImageError(item, f"unsupported numpy dtype {array.dtype}; use uint8, uint16 or float")


_TORCH_READABLE = {np.dtype(t) for t in (np.uint8, np.int32, np.float16, np.float32, np.float64, np.bool_)}

# Rows are converted to float in strips of about this many pixels (48 MB of fp32 RGB), so a large image
# never exists in float32 at full resolution when it is scored (see rows_to_tensor).
STRIP_PIXELS = 1 << 22


def rows_to_tensor(
    rows: RowReader,
    height: int,
    width: int,
    full: float,
    item: Any = None,
    size: int | None = None,
    resample: str = "bilinear",
) -> torch.Tensor:
    """An image given by its row reader (``[h, W, C]`` arrays, C in 1, 3, 4; ``full`` = the value of full
    intensity) -> float ``[3, H, W]`` in [0, 1], or ``[3, size, size]`` when ``size`` is given.

    Works in strips of rows: each strip is converted to float, checked, composited (alpha over white,
    grey to RGB) and, with ``size``, resized in width at once; the height is resized last. The antialiased
    bilinear resize is separable (width, then height), so the result is bit-identical to resizing the whole
    float image with :func:`preprocess_tensor`, while the float32 copy in flight is one strip
    (:data:`STRIP_PIXELS`) instead of 12 bytes per pixel of the whole image.
    """
    step = max(1, STRIP_PIXELS // max(width, 1))
    parts = []
    for top in range(0, height, step):
        strip = rows(top, min(top + step, height))
        if strip.dtype not in _TORCH_READABLE:  # uint16, float128, ...: numpy casts, one strip at a time
            strip = strip.astype(np.float32)
        # one pass: the cast to fp32 and the HWC -> CHW transpose in the same copy (never written in
        # place: the source may be the caller's array or PIL's read-only buffer, hence the silenced warning)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(strip)).permute(2, 0, 1)
        x = x.to(torch.float32, memory_format=torch.contiguous_format)
        if full != 1.0:
            x.div_(full)
        # integers divided by their full scale are in [0, 1] by construction: only floats need checks
        x = _finish_float_tensor(x, item) if strip.dtype.kind == "f" else _channels_to_rgb(x)
        if size is not None and width != size:
            x = _resize(x.unsqueeze(0), (x.shape[1], size), resample)[0]
        parts.append(x)
    x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    if size is not None and height != size:
        x = _resize(x.unsqueeze(0), (size, size), resample)[0]
    if size is not None and (height, width) != (size, size):
        x = _clip(x, resample)
    return x


def pil_to_tensor(
    image: PIL.Image.Image,  # noqa: F821
    item: Any = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    size: int | None = None,
    resample: str = "bilinear",
) -> torch.Tensor:
    """A PIL image of any common mode -> float ``[3, H, W]`` in [0, 1] (``[3, size, size]`` with ``size``).

    Alpha is composited over white (a transparent background reads as white, not as black); 16-bit
    greyscale keeps its full range; palette and CMYK/YCbCr convert through RGB. Float ("F") and other
    exotic modes have no defined range and are refused.
    """
    check_image_size(item, image.size, max_pixels)
    rows, full = _pil_rows(image, item)
    return rows_to_tensor(rows, image.height, image.width, full, item, size, resample)


def numpy_to_tensor(
    array: np.ndarray,
    item: Any = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    size: int | None = None,
    resample: str = "bilinear",
) -> torch.Tensor:
    """A numpy image ``[H, W]``, ``[H, W, 1|3|4]`` (uint8, uint16 or float in [0, 1]) -> ``[3, H, W]``
    (``[3, size, size]`` with ``size``)."""
    array, full = _numpy_image(array, item)
    height, width, _ = array.shape
    check_image_size(item, (width, height), max_pixels)
    return rows_to_tensor(lambda top, bottom: array[top:bottom], height, width, full, item, size, resample)


def torch_to_tensor(
    tensor: torch.Tensor,
    item: Any = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    size: int | None = None,
    resample: str = "bilinear",
) -> torch.Tensor:
    """A torch image ``[C, H, W]`` (C in 1, 3, 4; uint8 or float in [0, 1]) -> float ``[3, H, W]``
    (``[3, size, size]`` with ``size``).

    Keeps the device and, for float input, the autograd graph.
    """
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
        raise InvalidImageError(
            item, f"torch images must be CxHxW with C in (1, 3, 4), got shape {tuple(tensor.shape)}"
        )
    check_image_size(item, (tensor.shape[2], tensor.shape[1]), max_pixels)
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif not tensor.is_floating_point():
        raise InvalidImageError(item, f"unsupported tensor dtype {tensor.dtype}; use uint8 or float")
    x = _finish_float_tensor(tensor, item)
    if size is not None and x.shape[-2:] != (size, size):
        x = _clip(_resize(x.unsqueeze(0), (size, size), resample)[0], resample)
    return x


def _finish_float_tensor(x: torch.Tensor, item: Any) -> torch.Tensor:
    """Channel handling and range checks shared by every input form; x is ``[C, H, W]``."""
    if not torch.isfinite(x).all():
        raise InvalidImageError(item, "contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InvalidImageError(
            item,
            f"float image values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}] (uint8 arrays may be 0..255)",
        )
    return _channels_to_rgb(x.float().clamp(0.0, 1.0))


def _channels_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` in [0, 1] with C in 1, 3, 4 -> ``[3, H, W]``: grey repeated, alpha over white."""
    if x.shape[0] == 1:
        return x.expand(3, -1, -1)
    if x.shape[0] == 4:
        rgb, alpha = x[:3], x[3:4]
        return rgb * alpha + (1.0 - alpha)
    return x


def image_to_tensor(
    image: ImageInput,
    item: Any = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    size: int | None = None,
    resample: str = "bilinear",
) -> torch.Tensor:
    """Any supported image (path, PIL, numpy, torch) -> float ``[3, H, W]`` in [0, 1].

    With ``size``, the image is resized to ``[3, size, size]`` as it is converted (the scoring path:
    the full-resolution float image never exists; see :func:`array_to_tensor`). ``max_pixels`` applies to
    every input form. Every failure is an :class:`InvalidImageError` naming ``item`` (or the file).
    """
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        name = item if item is not None else str(image)
        pil = load_image_file(image, max_pixels)
        try:
            return pil_to_tensor(pil, name, max_pixels, size, resample)
        finally:
            pil.close()  # the decoded pixels are not needed once converted: free them now
    if isinstance(image, Image.Image):
        return pil_to_tensor(image, item, max_pixels, size, resample)
    if isinstance(image, np.ndarray):
        return numpy_to_tensor(image, item, max_pixels, size, resample)
    if isinstance(image, torch.Tensor):
        return torch_to_tensor(image, item, max_pixels, size, resample)
    raise InvalidImageError(
        item, f"unsupported image type {type(image).__name__}; use a path, PIL, numpy or torch"
    )


FLOAT_IMAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
RANGE_SLACK = 1e-3
"""Float images may overshoot [0, 1] by this much (a generator's decoder output, rounding); anything
further out is refused, as it means another value range (0..255, [-1, 1]). The non-differentiable path
clamps the overshoot; the differentiable path keeps it, so the gradient is not cut."""


def check_image_batch(images: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Validate a batch for the differentiable path: a ``[B, 3, H, W]`` float tensor (fp16, bf16, fp32 or
    fp64), B >= 1, 1 <= H * W <= ``max_pixels``, every value finite and in [0, 1] (up to
    :data:`RANGE_SLACK`). Raises :class:`InvalidImageError` naming ``images`` or the first bad item.

    Costs one device synchronisation (the min and max of the batch, read together).
    """
    if not isinstance(images, torch.Tensor):
        raise InvalidImageError("images", f"must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidImageError("images", f"expected [B, 3, H, W], got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    if b == 0:
        raise InvalidImageError("images", "is an empty batch (B = 0)")
    check_image_size("images", (w, h), max_pixels)
    if images.dtype == torch.uint8:
        raise InvalidImageError(
            "images", "is uint8; the differentiable path takes floats in [0, 1]: pass images.float() / 255"
        )
    if images.dtype not in FLOAT_IMAGE_DTYPES:
        raise InvalidImageError(
            "images", f"dtype {images.dtype} is not supported; use float16, bfloat16, float32 or float64"
        )
    with torch.no_grad():
        flat = images.detach().reshape(b, -1)
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)  # NaN propagates through both; +-inf shows in one
        bounds = torch.stack([lo, hi]).float().cpu()
    bad = ~torch.isfinite(bounds).all(dim=0) | (bounds[0] < -RANGE_SLACK) | (bounds[1] > 1 + RANGE_SLACK)
    if bad.any():
        i = int(bad.nonzero()[0])
        if not torch.isfinite(images[i].detach()).all():
            raise InvalidImageError(i, "contains NaN or infinite values")
        raise InvalidImageError(
            i,
            f"float image values must lie in [0, 1], got [{float(bounds[0, i]):.4g}, {float(bounds[1, i]):.4g}]"
            " (uint8 images: divide by 255; [-1, 1] images: map with (x + 1) / 2)",
        )


RESAMPLE_MODES = ("bilinear", "bicubic")
"""The resize filters (antialiased, half-pixel centres): bilinear for the package's own models; bicubic,
what the Qwen-VL families' processors use with PIL, for native checkpoints (``NativeConfig.resample``)."""


def _resize(x: torch.Tensor, size: tuple[int, int], resample: str = "bilinear") -> torch.Tensor:
    """The package's one resize, ``[B, C, H, W]``: antialiased, half-pixel centres, separable (width and
    height resized in turn give the same result as both at once). Bicubic overshoots [0, 1]:
    :func:`_clip` after the last pass."""
    return F.interpolate(x, size=size, mode=resample, align_corners=False, antialias=True)


def _clip(x: torch.Tensor, resample: str) -> torch.Tensor:
    """Bicubic's overshoot clipped back to [0, 1], as PIL's 8-bit output clips it (bilinear cannot leave
    the range)."""
    return x.clamp(0.0, 1.0) if resample == "bicubic" else x


# --------------------------------------------------------------------------------------------------
# Float tensors -> pixel_values (the differentiable path)
# --------------------------------------------------------------------------------------------------


def preprocess_tensor(
    images: torch.Tensor,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resample: str = "bilinear",
) -> torch.Tensor:
    """Resize and normalise images already in [0, 1]: ``[B, 3, H, W]`` -> ``[B, 3, S, S]``.

    Pure torch: differentiable with respect to ``images`` and runs on their device (docs/design.md §9).
    Bilinear with antialiasing, so downscaling a large generator output does not alias.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidImageError("images", f"expected [B, 3, H, W], got shape {tuple(images.shape)}")
    x = images
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if x.shape[-2:] != (image_size, image_size):
        x = _clip(_resize(x, (image_size, image_size), resample), resample)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


# --------------------------------------------------------------------------------------------------
# The processor: text templates + images, saved beside the model
# --------------------------------------------------------------------------------------------------

PROCESSOR_FILE = "zreward_processor.json"


def portable_tokenizer_config(path: Path) -> None:
    """Rewrite the ``tokenizer_config.json`` that transformers 5 wrote in the form 4.57 reads too (5 reads
    both forms alike), so that a model folder written under either line loads under the other.

    transformers 5 names the class of a plain ``tokenizers``-backed tokenizer (the offline one of
    ``tokenization.py``) ``TokenizersBackend``, which 4.57 does not have; its alias
    ``PreTrainedTokenizerFast`` is the 4.57 class. It also writes the extra special tokens as a list
    under ``extra_special_tokens``, where 4.57 expects a dict of named tokens and reads the list from
    ``additional_special_tokens``. A file that 4.57 wrote is left as it is.
    """
    if not path.is_file():
        return
    fields = json.loads(path.read_text(encoding="utf-8"))
    before = dict(fields)
    if fields.get("tokenizer_class") == "TokenizersBackend":
        fields["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(fields.get("extra_special_tokens"), list):
        extra = fields.pop("extra_special_tokens")
        fields.setdefault("additional_special_tokens", extra)
    if fields != before:
        atomic_write_text(path, json.dumps(fields, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


class ZRewardProcessor:
    """Turns (images, prompts, dimensions) into model inputs, following the model's config.

    Text layout for the student (docs/design.md §3): ``input_ids`` hold the prompt part (student prompt template
    around the user prompt), right-padded; :meth:`suffix_ids` gives one token sequence per dimension that
    the model appends after the padded prompt, each ending at its answer position.
    """

    def __init__(
        self, tokenizer: Any, config: ZRewardConfig, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    ):
        if (
            isinstance(max_image_pixels, bool)
            or not isinstance(max_image_pixels, int)
            or max_image_pixels < 1
        ):
            raise InvalidModelError(
                "max_image_pixels", f"must be a positive integer, got {max_image_pixels!r}"
            )
        self.tokenizer = tokenizer
        self.config = config
        self.max_image_pixels = max_image_pixels
        # the resize filter: the config's (a native model's NativeConfig says), else bilinear
        self.resample = getattr(config, "resample", "bilinear")
        self.score_token_ids = config.get_score_scale().token_ids(tokenizer)
        if config.score_token_ids is not None and list(config.score_token_ids) != self.score_token_ids:
            raise InvalidModelError(
                "score_token_ids",
                f"the config says {config.score_token_ids} but the tokenizer gives {self.score_token_ids}: "
                "the tokenizer does not belong to this model",
            )
        if tokenizer.pad_token_id is None:
            raise InvalidModelError("tokenizer", "has no pad token; set one (e.g. the eos token) before use")
        self._suffix_cache: dict[str, torch.Tensor] = {}

    # -- persistence --------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(directory)
        portable_tokenizer_config(Path(directory, "tokenizer_config.json"))
        Path(directory, PROCESSOR_FILE).write_text(
            json.dumps({"max_image_pixels": self.max_image_pixels}, indent=2) + "\n"
        )
        # a native model's scoring settings live beside the HF checkpoint, not in its config.json
        save_settings = getattr(self.config, "save_settings", None)
        if save_settings is not None:
            save_settings(directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, config: ZRewardConfig | None = None
    ) -> ZRewardProcessor:
        """Load the tokenizer and ``zreward_processor.json`` of a model (or export) folder.

        Every failure (a corrupt tokenizer file of any kind, a processor file that is not a JSON object or
        has unknown or invalid settings, a config that cannot be read) raises :class:`InvalidModelError`
        naming the folder or the file.
        """
        from transformers import AutoTokenizer, PretrainedConfig

        directory = str(directory)
        if config is None:
            config = load_config(directory)
        try:
            # tokenizer_config.json names the class. An empty config keeps AutoTokenizer (transformers 5
            # always) from reading config.json, whose model type (zreward_vlm) it does not know, and
            # warning; it falls back to such an empty config then anyway.
            tokenizer = AutoTokenizer.from_pretrained(
                directory, config=PretrainedConfig(), local_files_only=True
            )
        except Exception as exc:  # the Rust tokenizer raises a bare Exception on a corrupt tokenizer.json
            raise InvalidModelError(
                directory, f"no usable tokenizer in the model directory ({type(exc).__name__}: {exc})"
            ) from None
        extra: dict[str, Any] = {}
        path = Path(directory, PROCESSOR_FILE)
        if path.exists():
            extra = read_json_object(path, InvalidModelError)
            unknown = sorted(set(extra) - {"max_image_pixels"})
            if unknown:
                raise InvalidModelError(str(path), f"unknown settings {unknown}; known: ['max_image_pixels']")
        try:
            processor = cls(tokenizer, config, **extra)
            processor.suffix_ids(config.get_rubric().names)  # a tokenizer that loads but cannot encode
        except InvalidModelError as exc:
            raise InvalidModelError(str(path) if exc.item in extra else directory, exc.reason) from None
        except Exception as exc:  # e.g. a tokenizer_config.json whose model_max_length is not a number
            raise InvalidModelError(
                directory, f"the tokenizer does not work ({type(exc).__name__}: {exc})"
            ) from None
        return processor

    # -- text ---------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def validate_prompt(self, prompt: Any, item: Any = None) -> str:
        """The prompt if it is a non-empty string of valid Unicode; else :class:`InvalidPromptError`."""
        if not isinstance(prompt, str):
            raise InvalidPromptError(item, f"prompt must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise InvalidPromptError(item, "prompt is empty")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            # A lone surrogate: what invalid UTF-8 bytes become when decoded with surrogateescape
            # (command-line arguments, some file readers); no tokenizer can encode it.
            raise InvalidPromptError(
                item,
                f"prompt is not valid Unicode (a lone surrogate at character {exc.start}; invalid UTF-8?)",
            ) from None
        return prompt

    def prompt_ids(self, prompt: str, item: Any = None, template: str = "student_prompt") -> list[int]:
        """Token ids of the prompt part (template filled with the prompt); validates the prompt."""
        self.validate_prompt(prompt, item)
        ids = self._encode(fill_template(self.config.templates[template], prompt=prompt))
        if len(ids) > self.config.max_prompt_tokens:
            raise InvalidPromptError(
                item,
                f"prompt is {len(ids)} tokens with its template, over the limit of {self.config.max_prompt_tokens}",
            )
        return ids

    def pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad id lists -> ``input_ids [B, S]``, ``attention_mask [B, S]`` (int64)."""
        longest = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), longest), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
        return ids, mask

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Student prompt part for a batch -> right-padded ``input_ids``, ``attention_mask`` ``[B, S]``."""
        return self.pad([self.prompt_ids(p, item=i) for i, p in enumerate(prompts)])

    def dimension_fields(self, name: str) -> dict[str, str]:
        dim = self.config.get_rubric()[name]
        return {"name": dim.name, "instruction": dim.instruction, **self.config.scale_fields()}

    def suffix_ids(self, dimensions: Sequence[str]) -> list[torch.Tensor]:
        """One 1-D id tensor per dimension: the student suffix asking for that dimension's score."""
        out = []
        for name in dimensions:
            if name not in self._suffix_cache:
                text = fill_template(self.config.templates["student_suffix"], **self.dimension_fields(name))
                self._suffix_cache[name] = torch.tensor(self._encode(text), dtype=torch.long)
            out.append(self._suffix_cache[name])
        return out

    # -- teacher text -------------------------------------------------------------------------------
    def teacher_prompt_ids(self, prompt: str, dimension: str, item: Any = None) -> list[int]:
        """The teacher's prompt for one dimension, ending where the reasoning starts (after ``<think>``)."""
        self.validate_prompt(prompt, item)
        text = fill_template(
            self.config.templates["teacher_prompt"], prompt=prompt, **self.dimension_fields(dimension)
        )
        ids = self._encode(text)
        if len(ids) > self.config.max_prompt_tokens + 128:
            raise InvalidPromptError(item, f"teacher prompt is {len(ids)} tokens, too long")
        return ids

    def think_end_ids(self) -> list[int]:
        return self._encode(self.config.templates["teacher_think_end"])

    def teacher_answer_ids(self) -> list[int]:
        return self._encode(self.config.templates["teacher_answer"])

    # -- images -------------------------------------------------------------------------------------
    def image_tensor(self, image: ImageInput, item: Any = None) -> torch.Tensor:
        """One image -> float ``[3, H, W]`` in [0, 1] at its own resolution (validated)."""
        return image_to_tensor(image, item=item, max_pixels=self.max_image_pixels)

    def model_image(self, image: ImageInput, item: Any = None) -> torch.Tensor:
        """One image -> float ``[3, S, S]`` in [0, 1], resized to the model's resolution as it is decoded.

        The scoring path: memory per image in flight is bounded by the decode (about 7 bytes per pixel
        for 8-bit RGB) plus one float strip, never 12+ bytes per pixel of a full-resolution float copy.
        :meth:`pixel_values` of these equals :meth:`pixel_values` of :meth:`image_tensor` bit for bit.
        """
        return image_to_tensor(
            image,
            item=item,
            max_pixels=self.max_image_pixels,
            size=self.config.image_size,
            resample=self.resample,
        )

    def pixel_values(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Float ``[3, H, W]`` images of any sizes -> ``pixel_values [B, 3, S, S]``."""
        c = self.config
        return torch.cat(
            [
                preprocess_tensor(t.unsqueeze(0), c.image_size, c.image_mean, c.image_std, self.resample)
                for t in tensors
            ]
        )

    def preprocess_images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images in any supported form -> ``pixel_values [B, 3, S, S]`` (raises on the first bad one)."""
        return self.pixel_values([self.model_image(img, item=i) for i, img in enumerate(images)])

    def preprocess_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """The differentiable path: ``[B, 3, H, W]`` in [0, 1] on any device -> ``pixel_values``.

        Validated by :func:`check_image_batch` (shape, dtype, size limit, finite values in [0, 1]).
        """
        check_image_batch(images, self.max_image_pixels)
        c = self.config
        return preprocess_tensor(images, c.image_size, c.image_mean, c.image_std, self.resample)

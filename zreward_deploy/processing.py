"""Input processing: images in any common form -> ``pixel_values``; prompts -> token ids.

One preprocessing path serves every backend (DESIGN.md §8): every image is first turned into a float
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F

from .config import ZRewardConfig, fill_template
from .errors import InvalidImageError, InvalidModelError, InvalidPromptError
from .fileio import open_regular_file

ImageInput = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray, torch.Tensor]  # noqa: F821

# Decompression-bomb limit: refuse images with more pixels than this before decoding them. 8192x8192 is
# far beyond any generator's output and keeps one decoded RGB image under ~200 MB.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192

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


def _open_image(name: str, f: Any, max_pixels: int) -> PIL.Image.Image:  # noqa: F821
    """``Image.open`` on an open file, refusing bombs from the header (before any pixel is decoded)."""
    from PIL import Image

    with warnings.catch_warnings():
        # Scoped: turn PIL's decompression-bomb *warning* into an error without touching PIL's globals.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(f)
    _check_size(name, image.size, max_pixels)
    return image


def _decode_error(name: str, exc: BaseException) -> InvalidImageError:
    """The one error for any failure of a decoder: PIL's plugins raise OSError, SyntaxError, ValueError,
    NotImplementedError (corrupt DDS), struct.error, IndexError, MemoryError, ... depending on the format
    and the damage; whatever they raise, the caller gets an :class:`InvalidImageError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, InvalidImageError):
        return exc
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return InvalidImageError(name, f"refused as a decompression bomb ({exc})")
    if isinstance(exc, UnidentifiedImageError):
        return InvalidImageError(name, "not a readable image (unknown or corrupt format)")
    if isinstance(exc, MemoryError):
        return InvalidImageError(name, "cannot be decoded: out of memory while decoding")
    return InvalidImageError(name, f"cannot be decoded ({type(exc).__name__}: {exc})")


def probe_image_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header alone (cheap: no pixel is decoded).

    Refuses, as an :class:`InvalidImageError` naming the file: anything but a regular file (a FIFO would
    block forever), unknown or corrupt formats, zero sizes and images over ``max_pixels``. Truncated pixel
    data is *not* detected here; :func:`load_image_file` decodes everything.
    """
    name = str(path)
    with open_regular_file(name, InvalidImageError) as f:
        try:
            with _open_image(name, f, max_pixels) as image:
                return image.size
        except Exception as exc:
            raise _decode_error(name, exc) from None


def load_image_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> PIL.Image.Image:  # noqa: F821
    """Open and fully decode an image file, applying its EXIF orientation as image viewers do.

    Every failure is an :class:`InvalidImageError` naming the file (see :func:`probe_image_file` for what
    is refused before decoding; any exception of a decoder is caught, whatever its type).
    """
    from PIL import ImageOps

    name = str(path)
    with open_regular_file(name, InvalidImageError) as f:
        try:
            image = _open_image(name, f, max_pixels)
            image.load()  # decode now so truncated files fail here, not later inside a batch
        except Exception as exc:
            raise _decode_error(name, exc) from None
    try:
        # A photo taken sideways stores upright pixels plus an orientation tag; a broken tag is ignored,
        # as viewers ignore it, rather than refusing pixels that decoded fine.
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:
        pass
    return image


def _check_size(item: Any, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImageError(item, f"has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidImageError(
            item, f"has {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}"
        )


def pil_to_tensor(image: PIL.Image.Image, item: Any = None) -> torch.Tensor:  # noqa: F821
    """A PIL image of any common mode -> float ``[3, H, W]`` in [0, 1].

    Alpha is composited over white (a transparent background reads as white, not as black); 16-bit
    greyscale keeps its full range; palette and CMYK/YCbCr convert through RGB. Float ("F") and other
    exotic modes have no defined range and are refused.
    """
    mode = image.mode
    if mode not in _PIL_MODES:
        raise InvalidImageError(
            item, f"unsupported image mode {mode!r}; use RGB, RGBA, L, P, 16-bit L or CMYK"
        )
    _check_size(item, image.size, DEFAULT_MAX_IMAGE_PIXELS)
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        array = np.asarray(image).astype(np.float32)
        # "I" holds 32-bit ints; PNG 16-bit greyscale decodes to it in some PIL versions.
        if array.min() < 0 or array.max() > 65535:
            raise InvalidImageError(item, f"mode {mode!r} values outside the 16-bit range")
        gray = torch.from_numpy(array / 65535.0)
        return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        array = np.asarray(rgba).astype(np.float32) / 255.0
        rgb, alpha = array[..., :3], array[..., 3:4]
        array = rgb * alpha + (1.0 - alpha)  # over white
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
    array = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def numpy_to_tensor(array: np.ndarray, item: Any = None) -> torch.Tensor:
    """A numpy image ``[H, W]``, ``[H, W, 1|3|4]`` (uint8, uint16 or float in [0, 1]) -> ``[3, H, W]``."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise InvalidImageError(
            item, f"numpy images must be HxW or HxWxC with C in (1, 3, 4), got shape {tuple(array.shape)}"
        )
    _check_size(item, (array.shape[1], array.shape[0]), DEFAULT_MAX_IMAGE_PIXELS)
    if array.dtype == np.uint8:
        x = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        x = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_:
        x = array.astype(np.float32)
    else:
        raise InvalidImageError(item, f"unsupported numpy dtype {array.dtype}; use uint8, uint16 or float")
    tensor = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
    return _finish_float_tensor(tensor, item)


def torch_to_tensor(tensor: torch.Tensor, item: Any = None) -> torch.Tensor:
    """A torch image ``[C, H, W]`` (C in 1, 3, 4; uint8 or float in [0, 1]) -> float ``[3, H, W]``.

    Keeps the device and, for float input, the autograd graph.
    """
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
        raise InvalidImageError(
            item, f"torch images must be CxHxW with C in (1, 3, 4), got shape {tuple(tensor.shape)}"
        )
    _check_size(item, (tensor.shape[2], tensor.shape[1]), DEFAULT_MAX_IMAGE_PIXELS)
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif not tensor.is_floating_point():
        raise InvalidImageError(item, f"unsupported tensor dtype {tensor.dtype}; use uint8 or float")
    return _finish_float_tensor(tensor, item)


def _finish_float_tensor(x: torch.Tensor, item: Any) -> torch.Tensor:
    """Channel handling and range checks shared by the numpy and torch paths; x is ``[C, H, W]``."""
    if not torch.isfinite(x).all():
        raise InvalidImageError(item, "contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InvalidImageError(
            item,
            f"float image values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}] (uint8 arrays may be 0..255)",
        )
    x = x.float().clamp(0.0, 1.0)
    if x.shape[0] == 1:
        return x.expand(3, -1, -1)
    if x.shape[0] == 4:
        rgb, alpha = x[:3], x[3:4]
        return rgb * alpha + (1.0 - alpha)
    return x


def image_to_tensor(
    image: ImageInput, item: Any = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> torch.Tensor:
    """Any supported image (path, PIL, numpy, torch) -> float ``[3, H, W]`` in [0, 1]."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        return pil_to_tensor(load_image_file(image, max_pixels), item if item is not None else str(image))
    if isinstance(image, Image.Image):
        _check_size(item, image.size, max_pixels)
        return pil_to_tensor(image, item)
    if isinstance(image, np.ndarray):
        return numpy_to_tensor(image, item)
    if isinstance(image, torch.Tensor):
        return torch_to_tensor(image, item)
    raise InvalidImageError(
        item, f"unsupported image type {type(image).__name__}; use a path, PIL, numpy or torch"
    )


# --------------------------------------------------------------------------------------------------
# Float tensors -> pixel_values (the differentiable path)
# --------------------------------------------------------------------------------------------------


def preprocess_tensor(
    images: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Resize and normalise images already in [0, 1]: ``[B, 3, H, W]`` -> ``[B, 3, S, S]``.

    Pure torch: differentiable with respect to ``images`` and runs on their device (DESIGN.md §8).
    Bilinear with antialiasing, so downscaling a large generator output does not alias.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidImageError("images", f"expected [B, 3, H, W], got shape {tuple(images.shape)}")
    x = images
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


# --------------------------------------------------------------------------------------------------
# The processor: text templates + images, saved beside the model
# --------------------------------------------------------------------------------------------------

PROCESSOR_FILE = "zreward_processor.json"


class ZRewardProcessor:
    """Turns (images, prompts, dimensions) into model inputs, following the model's config.

    Text layout for the student (DESIGN.md §3): ``input_ids`` hold the prompt part (student prompt template
    around the user prompt), right-padded; :meth:`suffix_ids` gives one token sequence per dimension that
    the model appends after the padded prompt, each ending at its answer position.
    """

    def __init__(
        self, tokenizer: Any, config: ZRewardConfig, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    ):
        self.tokenizer = tokenizer
        self.config = config
        self.max_image_pixels = max_image_pixels
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
        Path(directory, PROCESSOR_FILE).write_text(
            json.dumps({"max_image_pixels": self.max_image_pixels}, indent=2) + "\n"
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, config: ZRewardConfig | None = None
    ) -> ZRewardProcessor:
        from transformers import AutoTokenizer

        directory = str(directory)
        if config is None:
            config = ZRewardConfig.from_pretrained(directory)
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InvalidModelError(
                directory, f"no usable tokenizer in the model directory ({exc})"
            ) from None
        extra = {}
        path = Path(directory, PROCESSOR_FILE)
        if path.exists():
            extra = json.loads(path.read_text())
        return cls(tokenizer, config, **extra)

    # -- text ---------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def validate_prompt(self, prompt: Any, item: Any = None) -> str:
        if not isinstance(prompt, str):
            raise InvalidPromptError(item, f"prompt must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise InvalidPromptError(item, "prompt is empty")
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
        """One image -> float ``[3, H, W]`` in [0, 1] (validated)."""
        return image_to_tensor(image, item=item, max_pixels=self.max_image_pixels)

    def pixel_values(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Float ``[3, H, W]`` images of any sizes -> ``pixel_values [B, 3, S, S]``."""
        c = self.config
        return torch.cat(
            [preprocess_tensor(t.unsqueeze(0), c.image_size, c.image_mean, c.image_std) for t in tensors]
        )

    def preprocess_images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images in any supported form -> ``pixel_values [B, 3, S, S]`` (raises on the first bad one)."""
        return self.pixel_values([self.image_tensor(img, item=i) for i, img in enumerate(images)])

    def preprocess_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """The differentiable path: ``[B, 3, H, W]`` in [0, 1] on any device -> ``pixel_values``."""
        if not torch.isfinite(images).all():
            raise InvalidImageError("images", "contain NaN or infinite values")
        c = self.config
        return preprocess_tensor(images, c.image_size, c.image_mean, c.image_std)

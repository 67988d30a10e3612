"""Image files: open only regular files, refuse bombs from the header, decode with every decoder failure
turned into one :class:`~zreward_deploy.errors.InvalidImageError` naming the file, apply EXIF orientation.

Torch-free on purpose (PIL only): ``zreward data check`` and other tools that only read files do not pay
for importing torch. :mod:`zreward_deploy.processing` turns the decoded images into tensors.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import TYPE_CHECKING, Any

from .errors import InvalidImageError
from .fileio import open_regular_file

if TYPE_CHECKING:
    import PIL.Image

# Decompression-bomb limit: refuse images with more pixels than this before decoding them. 8192x8192 is
# far beyond any generator's output; PIL holds a decoded RGB image in 4 bytes per pixel (268 MB here), and
# scoring converts it to the model's resolution strip by strip (docs/model.md, "Memory per call").
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192


def _open_image(name: str, f: Any, max_pixels: int) -> PIL.Image.Image:
    """``Image.open`` on an open file, refusing bombs from the header (before any pixel is decoded)."""
    from PIL import Image

    with warnings.catch_warnings():
        # Scoped: turn PIL's decompression-bomb *warning* into an error without touching PIL's globals.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(f)
    check_image_size(name, image.size, max_pixels)
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


def load_image_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> PIL.Image.Image:
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
    # A photo taken sideways stores upright pixels plus an orientation tag; a broken tag is ignored, as
    # viewers ignore it, rather than refusing pixels that decoded fine.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    return image


def check_image_size(item: Any, size: tuple[int, int], max_pixels: int) -> None:
    """Refuse zero sizes and more than ``max_pixels`` pixels (:class:`InvalidImageError` naming ``item``)."""
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImageError(item, f"has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidImageError(
            item, f"has {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}"
        )

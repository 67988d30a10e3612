"""A procedurally generated dataset in the docs/design.md §5.2 format, for demos and tests.

Each prompt describes a small scene of coloured shapes on a table ("two red circles", "a blue square on
the left", "a yellow triangle to the left of a green diamond"). For each prompt, M images are drawn with
graded defects; each defect lowers the ground truth of the dimensions it drives
(:data:`DEFECT_EFFECTS`, :data:`ALIGNMENT_PENALTY`), and simulated annotators score every image around
that truth. The table below is repeated in docs/data.md.

Two scene styles (``SynthConfig.style``, docs/data.md §3): ``natural`` (the default) draws textured, lit
scenes with the statistics of photographs (1/f textures, dead-leaves clutter with sharp edges at every
scale, soft shadows, shaded objects, a sensor noise floor), so that a model learns blur, noise and
pixelation as losses of detail or as added noise rather than as departures from flat colour; ``flat`` the
flat-coloured scenes of the first releases, byte for byte. For a seed both styles give the same records
(prompts, objects, mismatches, defects, truths, annotations); only the pixels differ.

=====================  ====================================================  ==========================
defect (severity s)    what it does to the image                             truth lowered by
=====================  ====================================================  ==========================
blur                   Gaussian blur, radius 2 px · s (at 64 px)              realism 2.0 s, aesth. 0.5 s
noise                  Gaussian pixel noise, σ = 46 · s (of 255)               realism 2.0 s, aesth. 0.5 s
pixelate               block pixelation, blocks 1 + 5 s px                   realism 1.5 s
tilt                   whole frame rotated by 15° · s, grey corners          aesthetics 2.0 s
washout                blended towards a beige haze, α = 0.55 s              aesthetics 2.0 s, real. 0.5 s
float                  one object lifted 0.35 s of the frame, shadow stays   plausibility 2.5 s
broken                 one object split, its right half displaced            plausibility 2.0 s
cut                    a band of background drawn *through* one object       plausibility 2.0 s
=====================  ====================================================  ==========================

Alignment is categorical: ``none`` 0, ``wrong_colour`` / ``wrong_count`` / ``swapped`` 1.5 (hard: one
attribute off), ``wrong_shape`` 2.0, ``missing_object`` 2.5, ``wrong_object`` 3.5 (every object has
another shape and colour), ``empty`` 4.0 (no object at all: an easy case that needs no prompt reading).
Truth per dimension = clip(5 − Σ penalties, 1, 5).

Annotations: annotator a scores ``clip(round_half(truth + b_a + ε), 1, 5)`` with a fixed bias
``b_a ~ N(0, 0.2²)`` per annotator (written to ``synth.json``) and ``ε ~ N(0, σ_d²)``, σ_d from
:data:`ANNOTATOR_NOISE`. ``scores`` = the trimmed mean of the annotations
(:func:`~zreward_deploy.data.records.aggregate_annotations`) rounded to the nearest half point (halves
round up). The same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..config import Rubric
from ..errors import ZRewardInputError
from ..fileio import atomic_directory, check_output_dir
from .records import SPLITS, aggregate_annotations
from .synth_config import STYLES, SynthConfig

DIMENSIONS: tuple[str, ...] = tuple(Rubric().names)  # the default rubric's four dimensions
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 50, 170),
}
COUNT_WORDS = ("zero", "one", "two", "three", "four")

# defect -> {dimension: truth lost at severity 1}
DEFECT_EFFECTS: dict[str, dict[str, float]] = {
    "blur": {"realism": 2.0, "aesthetics": 0.5},
    "noise": {"realism": 2.0, "aesthetics": 0.5},
    "pixelate": {"realism": 1.5},
    "tilt": {"aesthetics": 2.0},
    "washout": {"aesthetics": 2.0, "realism": 0.5},
    "float": {"plausibility": 2.5},
    "broken": {"plausibility": 2.0},
    "cut": {"plausibility": 2.0},
}
# alignment mismatch -> alignment truth lost
ALIGNMENT_PENALTY: dict[str, float] = {
    "none": 0.0,
    "wrong_colour": 1.5,
    "wrong_count": 1.5,
    "swapped": 1.5,
    "wrong_shape": 2.0,
    "missing_object": 2.5,
    "wrong_object": 3.5,
    "empty": 4.0,
}
MISMATCH_PROBABILITY: dict[str, float] = {
    "none": 0.32,
    "wrong_colour": 0.12,
    "wrong_count": 0.08,
    "swapped": 0.06,
    "wrong_shape": 0.12,
    "missing_object": 0.08,
    "wrong_object": 0.14,
    "empty": 0.08,
}
DEFECT_PROBABILITY = 0.3  # each quality defect is present with this probability ...
SEVERITIES = (0.25, 0.5, 0.75, 1.0)  # ... at one of these severities
ANNOTATOR_NOISE: dict[str, float] = {
    "alignment": 0.3,
    "realism": 0.4,
    "aesthetics": 0.55,
    "plausibility": 0.4,
}
ANNOTATOR_BIAS_STD = 0.2
# The defect forced on an image when all M images of a prompt would tie on a dimension.
_PRIMARY_DEFECT = {"realism": "blur", "aesthetics": "tilt", "plausibility": "float"}

_SKY, _TABLE, _SHADOW = (200, 215, 235), (160, 118, 80), (105, 75, 50)
_TABLE_TOP, _STAND = 0.62, 0.8  # table edge and where objects stand, as fractions of the height


@dataclass(frozen=True)
class Shape:
    """One object: shape, colour name, centre x and size as fractions of the frame width."""

    shape: str
    colour: str
    x: float
    size: float


@dataclass(frozen=True)
class PromptSpec:
    kind: str  # "count", "side" or "relation"
    text: str
    objects: tuple[Shape, ...]


# --------------------------------------------------------------------------------------------------
# Prompts and mismatches
# --------------------------------------------------------------------------------------------------


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def _row(shape: str, colour: str, n: int) -> tuple[Shape, ...]:
    size = 0.24 if n <= 2 else 0.18
    xs = np.linspace(0.5 - 0.15 * (n - 1), 0.5 + 0.15 * (n - 1), n) if n > 1 else [0.5]
    return tuple(Shape(shape, colour, float(x), size) for x in xs)


def draw_prompt(rng: np.random.Generator) -> PromptSpec:
    """A random prompt and the objects it asks for."""
    colours = list(COLOURS)
    kind = str(rng.choice(["count", "side", "relation"]))
    shape, colour = str(rng.choice(SHAPES)), str(rng.choice(colours))
    if kind == "count":
        n = int(rng.integers(1, 4))
        return PromptSpec(kind, f"{COUNT_WORDS[n]} {colour} {_plural(shape, n)}", _row(shape, colour, n))
    if kind == "side":
        side = str(rng.choice(["left", "right"]))
        x = 0.27 if side == "left" else 0.73
        return PromptSpec(kind, f"a {colour} {shape} on the {side}", (Shape(shape, colour, x, 0.26),))
    while True:  # two different objects
        shape2, colour2 = str(rng.choice(SHAPES)), str(rng.choice(colours))
        if (shape2, colour2) != (shape, colour):
            break
    text = f"a {colour} {shape} to the left of a {colour2} {shape2}"
    return PromptSpec(kind, text, (Shape(shape, colour, 0.3, 0.24), Shape(shape2, colour2, 0.7, 0.24)))


def _other(rng: np.random.Generator, options, current: str) -> str:
    return str(rng.choice([o for o in options if o != current]))


def apply_mismatch(
    spec: PromptSpec, mismatch: str, rng: np.random.Generator
) -> tuple[str, tuple[Shape, ...]]:
    """The objects actually drawn for an image with the given alignment mismatch. Mismatches that do not
    apply to the prompt's kind fall back (``swapped`` -> ``wrong_colour`` for counts, ``missing_object``
    -> ``wrong_object`` for one-object prompts); the mismatch actually applied is returned."""
    objs = list(spec.objects)
    if mismatch == "swapped" and spec.kind == "count":
        mismatch = "wrong_colour"
    if mismatch == "missing_object" and len(objs) < 2:
        mismatch = "wrong_object"
    k = int(rng.integers(len(objs)))
    if mismatch == "wrong_colour":
        objs[k] = Shape(objs[k].shape, _other(rng, COLOURS, objs[k].colour), objs[k].x, objs[k].size)
    elif mismatch == "wrong_shape":
        objs[k] = Shape(_other(rng, SHAPES, objs[k].shape), objs[k].colour, objs[k].x, objs[k].size)
    elif mismatch == "wrong_object":
        objs = [
            Shape(_other(rng, SHAPES, o.shape), _other(rng, COLOURS, o.colour), o.x, o.size) for o in objs
        ]
    elif mismatch == "swapped":
        objs = [Shape(o.shape, o.colour, 1.0 - o.x, o.size) for o in objs]
    elif mismatch == "missing_object":
        objs = [objs[1 - k] if len(objs) == 2 else objs[k]]
    elif mismatch == "empty":
        objs = []
    elif mismatch == "wrong_count":
        if spec.kind == "count":
            n = len(objs)
            n = n + 1 if n == 1 or (n < 4 and rng.random() < 0.5) else n - 1
            objs = list(_row(objs[0].shape, objs[0].colour, n))
        else:  # "a ..." drawn twice, side by side
            o = objs[k]
            dx = 0.14 if o.x < 0.5 else -0.14
            objs[k] = Shape(o.shape, o.colour, o.x - dx / 2, o.size * 0.8)
            objs.insert(k + 1, Shape(o.shape, o.colour, o.x + dx / 2, o.size * 0.8))
    return mismatch, tuple(objs)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    bottom: float,
    r: float,
    fill,
    outline=None,
    width: int | None = None,
) -> None:
    """Draw one shape standing on ``bottom``, centred on ``cx``, of half-width ``r`` (pixels). The flat
    style's outline (default) is the fill at 55 %, about r / 10 wide."""
    outline = tuple(int(c * 0.55) for c in fill) if outline is None else outline
    width = max(1, round(r / 10)) if width is None else width
    if shape == "circle":
        draw.ellipse((cx - r, bottom - 2 * r, cx + r, bottom), fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle((cx - r, bottom - 2 * r, cx + r, bottom), fill=fill, outline=outline, width=width)
    elif shape == "triangle":
        draw.polygon(
            [(cx - r, bottom), (cx + r, bottom), (cx, bottom - 2 * r)],
            fill=fill,
            outline=outline,
            width=width,
        )
    else:  # diamond
        pts = [(cx, bottom), (cx + r, bottom - r), (cx, bottom - 2 * r), (cx - r, bottom - r)]
        draw.polygon(pts, fill=fill, outline=outline, width=width)


def _background(side: int) -> Image.Image:
    image = Image.new("RGB", (side, side), _SKY)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, int(_TABLE_TOP * side), side, side), fill=_TABLE)
    return image


def render_image(
    objects: tuple[Shape, ...],
    defects: dict[str, float],
    size: int,
    rng: np.random.Generator,
    style: str = "natural",
) -> Image.Image:
    """Draw ``objects`` on a table, apply the graded ``defects`` (name -> severity in [0, 1]) and return a
    ``size x size`` RGB image. The scene is drawn at twice the size and downsampled (anti-aliasing).

    ``style`` ``"natural"`` draws textured, lit surfaces with soft shadows, applies the defects other than
    noise, then a sensor-like noise floor, then the noise defect (:func:`_render_natural`); ``"flat"`` the
    flat-coloured scenes, then every defect. Both take the same draws from ``rng`` (which object the
    plausibility defects hit, the tilt direction, the noise defect's pixels): the natural scene's textures
    and floor come from a child generator (``rng.spawn``), which leaves ``rng``'s own sequence untouched,
    so a dataset's records are the same in both styles and only the pixels differ."""
    if style == "flat":
        return apply_defects(_render_flat(objects, defects, size, rng), defects, rng)
    if style == "natural":
        return _render_natural(objects, defects, size, rng)
    raise ZRewardInputError("style", f"must be one of {', '.join(STYLES)}, got {style!r}")


def _place_objects(
    image: Image.Image,
    background: Image.Image,
    objects: tuple[Shape, ...],
    defects: dict[str, float],
    target: int,
    paint,
) -> None:
    """Paste each object's RGBA layer ``paint(obj, cx, bottom, r)`` into ``image`` (drawn at its side),
    applying the plausibility defects to the ``target`` object: lifted (float), split (broken), or with a
    band of ``background`` drawn through it (cut)."""
    side = image.width
    stand = _STAND * side
    for i, obj in enumerate(objects):
        r, cx = obj.size * side / 2, obj.x * side
        lift = defects.get("float", 0.0) * 0.35 * side if i == target else 0.0
        layer = paint(obj, cx, stand - lift, r)
        if i == target and defects.get("broken", 0.0) > 0:
            s = defects["broken"]
            right = layer.crop((int(cx), 0, side, side))
            layer.paste((0, 0, 0, 0), (int(cx), 0, side, side))
            layer.alpha_composite(right, (int(cx + 0.25 * s * r), 0), (0, int(0.6 * s * r)))
        image.paste(layer, (0, 0), layer)
        if i == target and defects.get("cut", 0.0) > 0:
            # the background drawn in front of the object: an occlusion no real scene can produce
            half = 0.4 * defects["cut"] * r
            mid = stand - lift - r
            box = (int(cx - 1.3 * r), int(mid - half), int(cx + 1.3 * r), int(mid + half) + 1)
            image.paste(background.crop(box), box[:2])


def _render_flat(
    objects: tuple[Shape, ...], defects: dict[str, float], size: int, rng: np.random.Generator
) -> Image.Image:
    """The flat style before its defects: flat sky and table, hard shadows, outlined flat-coloured shapes."""
    side = 2 * size
    background = _background(side)
    image = background.copy()
    draw = ImageDraw.Draw(image)
    target = int(rng.integers(len(objects))) if objects else -1  # the object plausibility defects hit
    stand = _STAND * side
    for obj in objects:  # shadows first, so objects never sit under another's shadow
        r = obj.size * side / 2
        draw.ellipse(
            (obj.x * side - 1.1 * r, stand - 0.18 * r, obj.x * side + 1.1 * r, stand + 0.18 * r), fill=_SHADOW
        )

    def paint(obj: Shape, cx: float, bottom: float, r: float) -> Image.Image:
        layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        _draw_shape(ImageDraw.Draw(layer), obj.shape, cx, bottom, r, COLOURS[obj.colour])
        return layer

    _place_objects(image, background, objects, defects, target, paint)
    return image.resize((size, size), Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------------------------------
# Rendering: the natural style
# --------------------------------------------------------------------------------------------------

# Base colours of the backdrop (above the table edge) and of the table, one of each drawn per image and
# jittered: the scenes vary like photographs do, while the objects keep the five prompt colours.
_BACKDROPS: tuple[tuple[int, int, int], ...] = (
    (200, 215, 235),  # pale sky (the flat style's)
    (140, 175, 215),  # deep sky
    (205, 198, 185),  # plaster
    (165, 165, 160),  # concrete
    (115, 135, 95),  # foliage
    (215, 205, 180),  # linen
    (90, 95, 110),  # dusk
)
_MATERIALS: tuple[tuple[int, int, int], ...] = (
    (160, 118, 80),  # wood (the flat style's)
    (115, 80, 52),  # dark wood
    (195, 165, 125),  # oak
    (140, 138, 132),  # stone
    (92, 98, 104),  # slate
    (175, 150, 140),  # terracotta
)


@functools.lru_cache(maxsize=16)
def _frequency_axes(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (cycles per pixel) of a ``side x side`` rfft2 grid: ``fy [side, 1]`` and
    ``fx [1, side // 2 + 1]``, float32."""
    fy = np.fft.fftfreq(side)[:, None].astype(np.float32)
    return fy, np.fft.rfftfreq(side)[None, :].astype(np.float32)


def _frequency(side: int, stretch: float = 1.0) -> np.ndarray:
    """Radial frequency of the rfft2 grid, the x axis scaled by ``stretch`` (> 1: an elongated, grain-like
    texture); the DC term set to 1 (the textures zero it)."""
    fy, fx = _frequency_axes(side)
    f = np.sqrt(fy * fy + (fx * np.float32(stretch)) ** 2)
    f[0, 0] = 1.0
    return f


def _pink(white: np.ndarray, side: int, gain: np.ndarray) -> np.ndarray:
    """The texture of the white-noise spectrum ``white`` (rfft2) filtered by ``gain``: zero mean, unit
    standard deviation, ``[side, side]`` float32."""
    spectrum = white * gain
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(side, side))
    return (field / field.std()).astype(np.float32)


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: float) -> np.ndarray:
    """``colour`` (float32) with its brightness and each channel scaled by random factors: ±``amount`` and
    ±8 %."""
    scale = rng.uniform(1 - amount, 1 + amount) * rng.uniform(0.92, 1.08, 3)
    return (np.asarray(colour, np.float64) * scale).astype(np.float32)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A draw whose logarithm is uniform: contrasts spread evenly over their octaves."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def dead_leaves(
    rng: np.random.Generator,
    image: Image.Image,
    count: int,
    radii: tuple[float, float],
    colour: np.ndarray,
    contrast: float,
    saturation: float,
    region: tuple[float, float, float, float] | None = None,
    aspect: float = 1.0,
) -> None:
    """Draw ``count`` opaque "leaves" (discs and boxes) centred in ``region`` (x0, y0, x1, y1; default the
    whole image) of ``image``, in place, their heights scaled by ``aspect`` (< 1: a surface seen at a
    slant): the dead-leaves model of natural images (Matheron; Lee, Mumford and Huang 2001), also the
    camera industry's texture-sharpness target. Radii follow p(r) ∝ r^-3 within ``radii`` (pixels), which
    gives the 1/f² power spectrum of photographs with sharp occlusion edges at every scale; each leaf is
    ``colour`` times a log-normal brightness (``contrast``: its standard deviation in log units) with a
    weak per-channel tint (``saturation``)."""
    low, high = radii[0] ** -2, radii[1] ** -2
    r = (low - rng.random(count) * (low - high)) ** -0.5
    x0, y0, x1, y1 = region if region is not None else (0.0, 0.0, *image.size)
    centres = np.array([x0, y0]) + rng.random((count, 2)) * np.array([x1 - x0, y1 - y0])
    brightness = np.exp(contrast * rng.standard_normal((count, 1)))
    shades = brightness * (1 + saturation * rng.standard_normal((count, 3)))
    fills = np.clip(colour * shades, 0, 255).round().astype(int).tolist()
    boxes = rng.random(count) < 0.3  # some are boxes: man-made edges, horizontal and vertical
    draw = ImageDraw.Draw(image)
    for (x, y), radius, fill, box in zip(centres.tolist(), r.tolist(), fills, boxes.tolist(), strict=True):
        shape = (x - radius, y - aspect * radius, x + radius, y + aspect * radius)
        (draw.rectangle if box else draw.ellipse)(shape, fill=tuple(fill))


def _natural_background(side: int, scene: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Backdrop and table, ``[side, side, 3]`` float32 in 0..255 (unlit), and a surface texture for the
    objects ``[side, side]``. The backdrop: a vertical gradient, smooth above a random skyline and covered
    below it by dead leaves (:func:`dead_leaves`: clutter, foliage, shelves) of a muted palette around one
    base colour, a few thin lines (branches, cables), a faint 1/f grain; the table: an elongated 1/f
    grain plus a fine one, with plank seams, darker or lighter towards the viewer, a lit front edge, and
    in 70 % of the scenes pebbles or tiles (dead leaves seen at a slant) over it; over all, a soft 1/f²
    shading and a random saturation (grey to vivid). Every texture has the 1/f amplitude spectrum of
    photographs, and their contrasts vary, so that the amount of fine detail says little by itself and a
    model must learn its *loss* (blur, pixelation) or its *kind* (the noise defect's per-pixel colour
    noise)."""
    top = int(_TABLE_TOP * side)
    f = _frequency(side)
    white = np.fft.rfft2(scene.standard_normal((side, side), dtype=np.float32))
    backdrop = _jitter(scene, _BACKDROPS[int(scene.integers(len(_BACKDROPS)))], 0.15)
    rows = 1 + scene.uniform(-0.35, 0.25) * (np.arange(top, dtype=np.float32) / side - 0.3)
    gradient = (rows[:, None] * backdrop[None, :])[:, None, :] * np.ones((1, side, 1), np.float32)
    back = Image.fromarray(np.clip(gradient, 0, 255).round().astype(np.uint8))
    # clutter (foliage, shelves, buildings) from a random height down to the table; above it, the smooth
    # backdrop where noise shows as it does in a photograph's sky or wall
    skyline = scene.uniform(0.0, 0.3) * top
    count = int(scene.uniform(0.027, 0.048) * side * (top - skyline))
    radii = (scene.uniform(1.0, 1.5), side * scene.uniform(0.06, 0.25))
    contrast, saturation = _log_uniform(scene, 0.25, 0.8), scene.uniform(0.01, 0.06)
    dead_leaves(scene, back, count, radii, backdrop, contrast, saturation, (0, skyline, side, top))
    draw = ImageDraw.Draw(back)
    for _ in range(int(scene.integers(0, 6))):  # thin lines: sharp edges at every orientation
        ends = scene.uniform(-0.2, 1.2, 4) * np.array([side, top, side, top])
        tone = np.clip(backdrop * scene.uniform(0.3, 1.4), 0, 255).round().astype(int)
        draw.line(tuple(ends), fill=tuple(tone.tolist()), width=int(scene.integers(1, 4)))
    pixels = np.empty((side, side, 3), np.float32)
    fine = np.exp(_log_uniform(scene, 0.01, 0.06) * _pink(white, side, 1 / f)[:top])
    pixels[:top] = np.asarray(back, np.float32) * fine[..., None]  # fine grain: foliage, fabric, plaster
    grain = 1 / _frequency(side, scene.uniform(4.0, 10.0))  # the mix: grain plus some fine detail
    grain += scene.uniform(0.5, 2.0) / f
    depth = 1 + scene.uniform(-0.25, 0.2) * (np.arange(side - top, dtype=np.float32) / side)
    table = np.exp(_log_uniform(scene, 0.05, 0.5) * _pink(white, side, grain)[top:]) * depth[:, None]
    for y in np.sort(scene.integers(top + 2, side, int(scene.integers(0, 4)))):  # plank seams
        table[y - top : y - top + max(1, side // 96)] *= scene.uniform(0.55, 0.8)
    table[: max(1, side // 64)] *= scene.uniform(1.1, 1.3)  # the lit front edge of the table
    material = _jitter(scene, _MATERIALS[int(scene.integers(len(_MATERIALS)))], 0.15)
    pixels[top:] = material * table[..., None]
    if scene.random() < 0.7:  # pebbles or tiles: dead leaves seen at a slant, over the grain
        floor = Image.new("RGB", (side, side - top), tuple(material.round().astype(int).tolist()))
        count = int(scene.uniform(0.034, 0.068) * side * 2 * (side - top))  # as dense as 2x the height
        radii = (scene.uniform(1.0, 1.6), side * scene.uniform(0.03, 0.12))
        contrast, saturation = _log_uniform(scene, 0.15, 0.6), scene.uniform(0.01, 0.04)
        dead_leaves(scene, floor, count, radii, material, contrast, saturation, aspect=0.5)
        pixels[top:] = np.asarray(floor, np.float32) * np.sqrt(table)[..., None]
    shading = np.exp(scene.uniform(0.03, 0.15) * np.roll(_pink(white, side, f**-2.0), side // 3, axis=0))
    pixels *= shading[..., None]
    grey = pixels.mean(axis=-1, keepdims=True)
    pixels = grey + np.float32(max(0.0, scene.uniform(-0.2, 1.25))) * (pixels - grey)
    surface = np.roll(_pink(white, side, 1 / f), side // 2, axis=1)
    return pixels, surface


def _lighting(side: int, scene: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A light direction ``[3]`` (x right, y down, z towards the viewer; from above, left or right) and the
    scene's illumination ``[side, side, 1]``: a horizontal fall-off away from the light and a vignette."""
    lx = scene.uniform(0.25, 0.7) * (1 if scene.random() < 0.5 else -1)
    light = np.array([lx, -0.55, 0.75])
    light /= np.linalg.norm(light)
    u = np.arange(side, dtype=np.float32) / side - 0.5
    ramp = 1 + np.float32(scene.uniform(0.1, 0.3) * lx) * u[None, :]
    vignette = 1 - np.float32(scene.uniform(0.0, 0.5)) * (u[:, None] ** 2 + u[None, :] ** 2)
    exposure = np.float32(scene.uniform(0.9, 1.05))
    return light, (exposure * ramp * vignette)[..., None]


def _shaded_layer(
    obj: Shape,
    cx: float,
    bottom: float,
    r: float,
    side: int,
    light: np.ndarray,
    surface: np.ndarray,
    scene: np.random.Generator,
) -> Image.Image:
    """One object as a ``side x side`` RGBA layer: the blurred mask taken as a height field gives surface
    normals (rounded edges), lit by ``light`` (diffuse and a specular highlight) and textured by
    ``surface``. Computed in the object's bounding box only."""
    margin = int(0.9 * r) + 3  # the height field's blur reaches ~3 sigma = 0.9 r beyond the mask
    x0, y0 = max(0, int(cx - r) - margin), max(0, int(bottom - 2 * r) - margin)
    x1, y1 = min(side, int(cx + r) + margin + 1), min(side, int(bottom) + margin + 1)
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    if x1 <= x0 or y1 <= y0:
        return layer
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    _draw_shape(ImageDraw.Draw(mask), obj.shape, cx - x0, bottom - y0, r, fill=255, outline=255, width=1)
    height = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.3 * r)), np.float32) * (0.9 * r / 255.0)
    normal = np.ones((*height.shape, 3), np.float32)
    normal[..., 0], normal[..., 1] = np.gradient(height)
    normal[..., :2] *= -1.0
    normal /= np.sqrt((normal * normal).sum(-1, keepdims=True))
    view_half = light + np.array([0.0, 0.0, 1.0])
    view_half /= np.linalg.norm(view_half)
    diffuse = np.clip(normal @ light.astype(np.float32), 0.0, None) * (0.72 / light[2])
    specular = np.clip(normal @ view_half.astype(np.float32), 0.0, None) ** scene.uniform(12, 40)
    texture = np.exp(_log_uniform(scene, 0.03, 0.2) * surface[y0:y1, x0:x1])
    base = _jitter(scene, COLOURS[obj.colour], 0.06)
    rgb = base * ((0.3 + diffuse) * texture)[..., None]
    rgb += (255.0 * scene.uniform(0.05, 0.35)) * specular[..., None]
    rgba = np.dstack([np.clip(rgb, 0, 255).round().astype(np.uint8), np.asarray(mask)])
    layer.paste(Image.fromarray(rgba, "RGBA"), (x0, y0))
    return layer


def _render_natural(
    objects: tuple[Shape, ...], defects: dict[str, float], size: int, rng: np.random.Generator
) -> Image.Image:
    """The natural style (docs/data.md §3): a textured backdrop and table, soft shadows, shaded and
    textured objects, the scene lit from one side with a vignette, drawn at twice the size and
    downsampled; then the defects, with the sensor noise floor (:func:`_noise_floor`) added after all of
    them but noise."""
    scene = rng.spawn(1)[0]  # every texture draw; rng's own sequence stays the flat style's
    side = 2 * size
    light, illumination = _lighting(side, scene)
    background_pixels, surface = _natural_background(side, scene)
    target = int(rng.integers(len(objects))) if objects else -1  # the object plausibility defects hit
    stand = _STAND * side
    shadows = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(shadows)
    for obj in objects:  # soft shadows under the objects' standing places, away from the light
        r, cx = obj.size * side / 2, (obj.x - 0.02 * light[0]) * side
        draw.ellipse((cx - 1.15 * r, stand - 0.2 * r, cx + 1.15 * r, stand + 0.22 * r), fill=255)
    blur = ImageFilter.GaussianBlur(max(1.0, 0.06 * side * max((o.size for o in objects), default=0.2)))
    strength = np.float32(scene.uniform(0.4, 0.65) / 255)
    darkness = np.asarray(shadows.filter(blur), np.float32)[..., None] * strength
    background = Image.fromarray(np.clip(background_pixels, 0, 255).round().astype(np.uint8))
    image = Image.fromarray(np.clip(background_pixels * (1 - darkness), 0, 255).round().astype(np.uint8))

    def paint(obj: Shape, cx: float, bottom: float, r: float) -> Image.Image:
        return _shaded_layer(obj, cx, bottom, r, side, light, surface, scene)

    _place_objects(image, background, objects, defects, target, paint)
    lit = np.asarray(image, np.float32) * illumination
    image = Image.fromarray(np.clip(lit, 0, 255).round().astype(np.uint8))
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    # The camera's order: optics and processing (blur, pixelation, ...), the sensor's noise floor on
    # whatever they left, then the noise defect. A floor drawn before them would be smoothed away by
    # blur or pixelation, and a tiny model would learn "softened = less noisy = more realistic".
    image = apply_defects(image, {k: v for k, v in defects.items() if k != "noise"}, rng)
    image = _noise_floor(image, scene)
    return apply_defects(image, {"noise": defects["noise"]} if "noise" in defects else {}, rng)


def _noise_floor(image: Image.Image, scene: np.random.Generator) -> Image.Image:
    """A sensor-like noise floor: Gaussian with σ² = r² + k·I (read noise r ∈ [0.5, 1.5] and shot noise
    k ∈ [0.002, 0.012]; σ ≈ 0.7-2 grey levels), mostly shared by the channels (luminance grain): camera
    pipelines suppress chroma noise far more than luminance noise."""
    pixels = np.asarray(image, np.float32)
    read, shot = scene.uniform(0.5, 1.5), scene.uniform(0.002, 0.012)
    sigma = np.sqrt(read * read + shot * pixels)
    shared = scene.standard_normal((*pixels.shape[:2], 1), dtype=np.float32)
    noise = sigma * (0.97 * shared + 0.2 * scene.standard_normal(pixels.shape, dtype=np.float32))
    return Image.fromarray(np.clip(pixels + noise, 0, 255).round().astype(np.uint8))


def apply_defects(image: Image.Image, defects: dict[str, float], rng: np.random.Generator) -> Image.Image:
    """The image-level defects of :data:`DEFECT_EFFECTS` (tilt, washout, pixelate, blur, noise; severities
    in [0, 1]) applied to an RGB image, in that order, at strengths defined at 64 px and scaled with its
    width (the table at the top of this module). The plausibility defects are drawn in the scene instead
    and are ignored here. ``zreward bench transfer`` degrades photographs with this same function."""
    size = image.width
    unit = size / 64  # defect strengths are tuned at 64 px and scale with the image
    if (s := defects.get("tilt", 0.0)) > 0:
        angle = 15.0 * s * (1 if rng.random() < 0.5 else -1)
        image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128))
    if (s := defects.get("washout", 0.0)) > 0:
        image = Image.blend(image, Image.new("RGB", image.size, (205, 195, 165)), 0.55 * s)
    if (s := defects.get("pixelate", 0.0)) > 0:
        block = 1 + 5 * s * unit
        small = max(2, round(size / block))
        image = image.resize((small, small), Image.Resampling.BOX).resize(
            (size, size), Image.Resampling.NEAREST
        )
    if (s := defects.get("blur", 0.0)) > 0:
        image = image.filter(ImageFilter.GaussianBlur(2.0 * s * unit))
    if (s := defects.get("noise", 0.0)) > 0:
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0.0, 46.0 * s, pixels.shape).astype(np.float32)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return image


# --------------------------------------------------------------------------------------------------
# Truth and annotators
# --------------------------------------------------------------------------------------------------


def ground_truth(defects: dict[str, float], mismatch: str) -> dict[str, float]:
    """Truth per dimension in [1, 5] from defect severities and the alignment mismatch."""
    lost = dict.fromkeys(DIMENSIONS, 0.0)
    lost["alignment"] = ALIGNMENT_PENALTY[mismatch]
    for name, severity in defects.items():
        for dim, weight in DEFECT_EFFECTS[name].items():
            lost[dim] += weight * severity
    return {d: min(5.0, max(1.0, 5.0 - lost[d])) for d in DIMENSIONS}


def round_half(x: float) -> float:
    """Nearest multiple of 0.5, halves rounding up (numpy's round-half-to-even would make 3.25 -> 3.0 but
    3.75 -> 4.0)."""
    return math.floor(2.0 * x + 0.5) / 2.0


def annotate(truth: dict[str, float], bias: np.ndarray, rng: np.random.Generator) -> dict[str, list[float]]:
    """One score per annotator and dimension: ``clip(round_half(truth + bias_a + N(0, σ_d²)), 1, 5)``."""
    out = {}
    for dim in DIMENSIONS:
        noise = rng.normal(0.0, ANNOTATOR_NOISE[dim], len(bias))
        out[dim] = [
            min(5.0, max(1.0, round_half(truth[dim] + b + e))) for b, e in zip(bias, noise, strict=True)
        ]
    return out


def _draw_defects(rng: np.random.Generator) -> dict[str, float]:
    defects = {}
    for name in DEFECT_EFFECTS:
        if rng.random() < DEFECT_PROBABILITY:
            defects[name] = float(rng.choice(SEVERITIES))
    return defects


def _draw_group(rng: np.random.Generator, m: int) -> list[tuple[str, dict[str, float]]]:
    """(mismatch, defects) for the M images of one prompt, such that no dimension's truth is the same on
    all M images (so every dimension has same-prompt pairs)."""
    names, probs = list(MISMATCH_PROBABILITY), np.array(list(MISMATCH_PROBABILITY.values()))
    group = [(str(rng.choice(names, p=probs / probs.sum())), _draw_defects(rng)) for _ in range(m)]
    truths = [ground_truth(d, mm) for mm, d in group]
    for dim in DIMENSIONS:
        if len({round(t[dim], 6) for t in truths}) > 1:
            continue
        j = int(rng.integers(m))
        mismatch, defects = group[j]
        if dim == "alignment":
            mismatch = "wrong_object" if mismatch == "none" else "none"
        else:
            name = _PRIMARY_DEFECT[dim]
            defects = {**defects, name: 0.0 if defects.get(name, 0.0) > 0 else 1.0}
        group[j] = (mismatch, {k: v for k, v in defects.items() if v > 0})
        truths[j] = ground_truth(group[j][1], mismatch)
    return group


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------


def _split_of_prompts(n: int, cfg: SynthConfig, rng: np.random.Generator) -> list[str]:
    """Split name per prompt index: val and test get their fractions (at least one prompt each when
    there are 3 or more prompts), train the rest."""
    n_val, n_test = round(n * cfg.val_fraction), round(n * cfg.test_fraction)
    if n >= 3:
        n_val, n_test = max(n_val, int(cfg.val_fraction > 0)), max(n_test, int(cfg.test_fraction > 0))
    n_val, n_test = min(n_val, max(0, n - 1)), min(n_test, max(0, n - 1 - n_val))
    labels = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    order = rng.permutation(n)
    out = [""] * n
    for label, i in zip(labels, order, strict=True):
        out[int(i)] = label
    return out


def generate_dataset(
    out_dir: str | os.PathLike, config: SynthConfig | None = None, overwrite: bool = False
) -> dict[str, int]:
    """Write a synthetic dataset to ``out_dir``: ``train/val/test.jsonl``, ``images/*.png`` and
    ``synth.json`` (the generator's settings, annotator biases and defect tables).

    Refuses a file, or a non-empty ``out_dir`` unless ``overwrite`` (then the whole folder is replaced),
    through the package's one output-folder rule (:func:`~zreward_deploy.fileio.check_output_dir`). The
    dataset is built in a temporary sibling folder and renamed into place when complete, so an interrupted
    run never leaves a half-written dataset under ``out_dir`` (nor damages what was there).

    Returns:
        Number of records per split.
    """
    cfg = config or SynthConfig()
    final = check_output_dir(out_dir, overwrite, marker=["train.jsonl", "val.jsonl", "test.jsonl"])
    with atomic_directory(final) as out:
        return _write_dataset(out, cfg)


def _write_dataset(out: Path, cfg: SynthConfig) -> dict[str, int]:
    """Write the dataset into the (empty) folder ``out``; see :func:`generate_dataset`."""
    (out / "images").mkdir()
    master = np.random.default_rng(cfg.seed)
    bias = master.normal(0.0, ANNOTATOR_BIAS_STD, cfg.annotators)
    specs = [draw_prompt(master) for _ in range(cfg.prompts)]
    splits = _split_of_prompts(cfg.prompts, cfg, master)
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    for p, spec in enumerate(specs):
        rng = np.random.default_rng([cfg.seed, p])  # per prompt: a prompt's images do not depend on N
        prompt_id = f"p{p}"
        for j, (mismatch, defects) in enumerate(_draw_group(rng, cfg.images_per_prompt)):
            mismatch, objects = apply_mismatch(spec, mismatch, rng)
            if not objects:  # nothing to float, break or cut
                defects = {k: v for k, v in defects.items() if k not in ("float", "broken", "cut")}
            image = render_image(objects, defects, cfg.image_size, rng, style=cfg.style)
            name = f"images/{prompt_id}_{j}.png"
            # no metadata chunks and a fixed compression level: the same pixels give the same bytes
            image.save(out / name, format="PNG", compress_level=6)
            truth = ground_truth(defects, mismatch)
            annotations = annotate(truth, bias, rng)
            record = {
                "id": f"{prompt_id}_{j}",
                "prompt_id": prompt_id,
                "prompt": spec.text,
                "image": name,
                "scores": {d: round_half(aggregate_annotations(a)) for d, a in annotations.items()},
                "annotations": annotations,
                "meta": {
                    "truth": {d: round(t, 4) for d, t in truth.items()},
                    "mismatch": mismatch,
                    "defects": defects,
                    "kind": spec.kind,
                },
            }
            lines[splits[p]].append(json.dumps(record))
    for split, rows in lines.items():
        (out / f"{split}.jsonl").write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    (out / "synth.json").write_text(json.dumps(_manifest(cfg, bias), indent=2) + "\n", encoding="utf-8")
    return {split: len(rows) for split, rows in lines.items()}


def _manifest(cfg: SynthConfig, bias: np.ndarray) -> dict[str, Any]:
    return {
        "generator": "zreward_deploy.data.synth",
        "config": asdict(cfg),
        "annotator_bias": [round(float(b), 6) for b in bias],
        "annotator_noise": ANNOTATOR_NOISE,
        "defect_effects": DEFECT_EFFECTS,
        "alignment_penalty": ALIGNMENT_PENALTY,
        "mismatch_probability": MISMATCH_PROBABILITY,
        "defect_probability": DEFECT_PROBABILITY,
    }

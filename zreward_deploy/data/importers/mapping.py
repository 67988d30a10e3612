"""How a public set's fields become the package's records: which rubric dimension each field feeds, and
the linear map from the set's scale onto the model's score scale.

Each importer declares its fields (:class:`FieldSpec`): a score (one aggregated value per image), a list of
per-annotator ratings, a standard deviation published beside a mean, or a preference (a pairwise choice or
a ranking, which becomes lines of ``{split}.preferences.jsonl``). The user can send a field to another
dimension (``--map src=dst``), drop it (``--drop src``) or correct its source range (``--source-range
field=lo:hi``); :func:`resolve_fields` validates all of it against the target rubric before anything is
read. Every original value is kept in ``meta.original`` whatever the mapping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from ...errors import ZRewardInputError

FieldKind = Literal["score", "annotations", "std", "preference"]
OVERALL = "overall"  # the model's scalar reward: a preference may target it, a score may not


@dataclass(frozen=True)
class FieldSpec:
    """One field a set publishes.

    Attributes:
        name: the set's own field name (``mos_quality``, ``fidelity_rating``, ``preference``).
        kind: ``score`` (aggregated value per image), ``annotations`` (per-annotator ratings), ``std``
            (the spread of the score field ``of``), ``preference`` (pairwise choices or a ranking).
        low, high: the set's scale for scores and annotations (``std`` uses the scale of ``of``).
        default: the rubric dimension it feeds by default (``"overall"`` for preferences), or None to keep
            it in ``meta.original`` only.
        of: for ``std``, the score field whose spread it is.
        why: one line saying why the default is what it is (docs/data.md prints it).
    """

    name: str
    kind: FieldKind
    low: float = 0.0
    high: float = 1.0
    default: str | None = None
    of: str | None = None
    why: str = ""


@dataclass(frozen=True)
class Target:
    """The model side: rubric dimension names and the score range [``low``, ``high``]."""

    dimensions: tuple[str, ...] = ("alignment", "realism", "aesthetics", "plausibility")
    low: float = 1.0
    high: float = 5.0

    def __post_init__(self) -> None:
        if not self.dimensions:
            raise ZRewardInputError("rubric", "needs at least one dimension")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.high <= self.low:
            raise ZRewardInputError(
                "--scale-min/--scale-max", f"need finite min < max, got [{self.low}, {self.high}]"
            )


@dataclass(frozen=True)
class ResolvedField:
    """A field with its final dimension (None: kept in meta only) and source range."""

    spec: FieldSpec
    dimension: str | None
    low: float
    high: float


class FieldMap:
    """The resolved mapping of one import: source field -> (dimension, source range), and the linear
    maps onto the target scale."""

    def __init__(self, fields: Mapping[str, ResolvedField], target: Target):
        self.fields = dict(fields)
        self.target = target

    def dimension(self, name: str) -> str | None:
        field = self.fields.get(name)
        return field.dimension if field is not None else None

    def to_target(self, name: str, value: object) -> float:
        """``value`` of field ``name`` mapped linearly onto the target scale; raises ValueError naming
        what is wrong (not a number, not finite, outside the field's source range)."""
        field = self.fields[name]
        number = as_number(value)
        if not field.low <= number <= field.high:
            raise ValueError(f"{number} is outside the set's scale [{_fmt(field.low)}, {_fmt(field.high)}]")
        t = self.target
        mapped = t.low + (number - field.low) * (t.high - t.low) / (field.high - field.low)
        return min(max(mapped, t.low), t.high)  # no rounding residue outside the range

    def std_to_target(self, name: str, value: object) -> float:
        """A standard deviation of field ``of`` scaled like the mean (by the ratio of the ranges; a
        spread has no offset)."""
        field = self.fields[name]
        of = self.fields.get(field.spec.of or "", field)
        number = as_number(value)
        if number < 0:
            raise ValueError(f"a standard deviation cannot be negative, got {number}")
        return number * (self.target.high - self.target.low) / (of.high - of.low)

    def as_dict(self) -> dict[str, dict[str, object]]:
        """The mapping as JSON (the import report and the resume fingerprint)."""
        return {
            name: {"kind": f.spec.kind, "dimension": f.dimension, "source_range": [f.low, f.high]}
            for name, f in self.fields.items()
        }


def as_number(value: object) -> float:
    """A finite float from a number or a numeric string; ValueError otherwise."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"must be a number, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("is empty")
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"must be a number, got {value!r}") from None
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise ValueError(f"must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"must be finite, got {number}")
    return number


def _fmt(x: float) -> str:
    return f"{x:g}"


def parse_assignments(items: Iterable[str] | None, flag: str) -> dict[str, str]:
    """``["a=b", ...]`` -> ``{"a": "b"}``; ZRewardInputError naming ``flag`` on a malformed item."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ZRewardInputError(flag, f"expected FIELD=VALUE, got {item!r}")
        if name.strip() in out:
            raise ZRewardInputError(flag, f"field {name.strip()!r} is given twice")
        out[name.strip()] = value.strip()
    return out


def parse_ranges(items: Mapping[str, object] | Iterable[str] | None) -> dict[str, tuple[float, float]]:
    """Source ranges from ``{"field": (lo, hi)}`` or ``["field=lo:hi", ...]``."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        pairs = dict(items)
    else:
        pairs = {}
        for name, text in parse_assignments(items, "--source-range").items():
            lo, sep, hi = str(text).partition(":")
            if not sep:
                raise ZRewardInputError("--source-range", f"expected FIELD=LO:HI, got {name}={text}")
            pairs[name] = (lo, hi)
    out: dict[str, tuple[float, float]] = {}
    for name, pair in pairs.items():
        try:
            lo, hi = (as_number(v) for v in pair)  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise ZRewardInputError("--source-range", f"{name}: {exc}") from None
        if hi <= lo:
            raise ZRewardInputError("--source-range", f"{name}: needs LO < HI, got {lo}:{hi}")
        out[name] = (lo, hi)
    return out


def resolve_fields(
    specs: Sequence[FieldSpec],
    target: Target,
    mapping: Mapping[str, str] | None = None,
    drop: Iterable[str] = (),
    source_ranges: Mapping[str, tuple[float, float]] | None = None,
    set_name: str = "",
) -> FieldMap:
    """Apply the user's ``mapping`` (field -> dimension), ``drop`` and ``source_ranges`` to the set's
    defaults and check the result against ``target``: every named field exists, a score goes to a
    rubric dimension (a preference also may go to ``"overall"``), no two score fields share a dimension,
    and every default that is kept names a dimension of the target rubric."""
    by_name = {s.name: s for s in specs}
    mapping = dict(mapping or {})
    drop = set(drop)
    ranges = dict(source_ranges or {})
    known = ", ".join(s.name for s in specs if s.kind != "std")
    for name, flag in [
        *((n, "--map") for n in mapping),
        *((n, "--drop") for n in drop),
        *((n, "--source-range") for n in ranges),
    ]:
        if name not in by_name or by_name[name].kind == "std":
            raise ZRewardInputError(flag, f"{set_name} has no field {name!r}; its fields are {known}")
    for name in ranges:
        if by_name[name].kind == "preference":
            raise ZRewardInputError("--source-range", f"{name} is a preference: it has no scale")
    both = sorted(set(mapping) & drop)
    if both:
        raise ZRewardInputError("--map/--drop", f"{both[0]!r} is both mapped and dropped")
    resolved: dict[str, ResolvedField] = {}
    for spec in specs:
        if spec.kind == "std":
            continue
        dim = None if spec.name in drop else mapping.get(spec.name, spec.default)
        low, high = ranges.get(spec.name, (spec.low, spec.high))
        if dim is not None:
            allowed = [*target.dimensions, OVERALL] if spec.kind == "preference" else list(target.dimensions)
            if dim not in allowed:
                flag = "--map" if spec.name in mapping else "rubric"
                raise ZRewardInputError(
                    flag,
                    f"{spec.name} -> {dim!r}: not a dimension of the target rubric {allowed}"
                    + (
                        ""
                        if spec.name in mapping
                        else f" (drop it with --drop {spec.name} or map it with --map)"
                    ),
                )
        resolved[spec.name] = ResolvedField(spec, dim, low, high)
    for spec in specs:  # a spread follows its mean's dimension and range
        if spec.kind == "std":
            of = resolved.get(spec.of or "")
            if of is None:
                raise ZRewardInputError(spec.name, f"is the spread of an unknown field {spec.of!r}")
            resolved[spec.name] = ResolvedField(replace(spec), of.dimension, of.low, of.high)
    seen: dict[str, str] = {}
    for name, field in resolved.items():
        if field.spec.kind in ("score", "annotations") and field.dimension is not None:
            other = seen.get(field.dimension)
            if other is not None:
                raise ZRewardInputError(
                    "--map", f"{other} and {name} both map to {field.dimension!r}; drop or remap one"
                )
            seen.setdefault(field.dimension, name)
    return FieldMap(resolved, target)

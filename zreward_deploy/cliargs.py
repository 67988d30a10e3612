"""One way from a config dataclass to command-line flags, help text and back, for every ``zreward`` command.

Why not transformers' ``HfArgumentParser``: importing it imports transformers and torch (2.5 s here), and
``zreward --help`` must stay instant; it makes every list field ``nargs="+"``, so ``--dimensions a,b`` is
one bad value where every ``zreward`` command takes one comma-separated argument; and a bool becomes
``--validate [VALUE]`` beside an underscored ``--no_validate`` whose help shows the opposite default.
This module is plain argparse and the standard library, and a bad value is one
:class:`~zreward_deploy.errors.ZRewardInputError` line that names the flag the user typed.

The conventions (``zreward_deploy/commands/*`` and ``bench/bench_*.py`` all go through here):

* a field ``batch_sizes`` is the flag ``--batch-sizes`` (unless the command renames it), with the field's
  ``field(metadata={"help": ...})`` text and its default;
* ``bool``: ``--x`` and ``--no-x``;
* ``tuple[T, ...]`` / ``list[T]``: one comma-separated argument (``--batch-sizes 1,8,32``), parsed by
  :func:`parse_list`; an empty entry (``1,,8``) is refused naming the flag. Commands whose flags took
  space-separated values before (the benchmarks) pass ``space_separated=True`` and keep accepting them;
* ``X | None``: defaults to None; ``Literal[...]`` or ``metadata={"choices": ...}``: argparse choices;
* ``--device`` is checked at once by :func:`check_device`.

Flags of a config whose module imports torch (the exporters, the synthetic data generator) are added only
when their own command is parsed (:func:`defer_dataclass_arguments`), so ``zreward --help`` does not pay
for them. ``zreward train`` keeps ``key=value`` overrides (``training/config.py``); its ``--help-config``
listing is :func:`format_fields`.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from .errors import ZRewardInputError

T = TypeVar("T")

_SCALARS = (int, float, str, bool, Path)


# --------------------------------------------------------------------------------------------------
# Lists and devices: the conventions every command shares
# --------------------------------------------------------------------------------------------------


def parse_list(text: str | None, flag: str, cast: Callable[[str], T] = str) -> list[T] | None:
    """``"a,b"`` -> ``["a", "b"]`` (``None`` for an absent flag); entries are stripped of spaces.

    Raises:
        ZRewardInputError: naming ``flag``, for an empty entry (``","``, ``"a,,b"``) or an entry ``cast``
            refuses.
    """
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise ZRewardInputError(flag, f"expected comma-separated values such as a,b; got {text!r}")
    try:
        return [cast(p) for p in parts]
    except (TypeError, ValueError):
        name = getattr(cast, "__name__", "values")
        raise ZRewardInputError(flag, f"{text!r} is not a comma-separated list of {name}") from None


def check_device(text: str | None, flag: str = "--device") -> Any:
    """The ``torch.device`` for ``text``, or a one-line :class:`ZRewardInputError` naming ``flag``
    (CUDA asked of a CPU-only build, an index that does not exist). Imports torch, so call it when the
    command runs, not when it is declared."""
    from .devices import resolve_device

    return resolve_device(text, flag)


# --------------------------------------------------------------------------------------------------
# What a dataclass field becomes
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
    """The command-line form of one dataclass field.

    Attributes:
        name: the field name (the argparse ``dest``; the keyword of the dataclass).
        flag: ``--kebab-case`` of the name, or the command's own spelling of it.
        scalar: the type of the value, or of each entry of a list (int, float, str, bool or Path).
        container: ``tuple`` or ``list`` for a list field, else None.
        optional: the annotation allows None.
        choices: the allowed values (``Literal[...]`` or ``metadata={"choices": ...}``), else None.
        default: the field's default (``dataclasses.MISSING`` when it has none: a required flag).
        help: the field's help text (``metadata={"help": ...}``).
        annotation: the annotation as written, for listings.
    """

    name: str
    flag: str
    scalar: type
    container: type | None
    optional: bool
    choices: tuple[Any, ...] | None
    default: Any
    help: str
    annotation: str


def config_flags(cls: type, flags: Mapping[str, str] | None = None) -> list[ConfigFlag]:
    """One :class:`ConfigFlag` per ``__init__`` field of the dataclass ``cls``, in field order.

    Args:
        cls: a dataclass whose field annotations are int, float, str, bool, Path, ``Literal[...]``,
            ``tuple[T, ...]`` or ``list[T]`` of those, optionally ``| None``.
        flags: field name -> flag, for a command that spells a flag otherwise (``{"model_name":
            "--name"}``); the rest are ``--kebab-case``.

    Raises:
        TypeError: a field of another type (a bug in the config class, not in the user's input).
    """
    flags = dict(flags or {})
    unknown = set(flags) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        scalar, container, optional, choices = _describe(cls, f.name, hints[f.name])
        if f.metadata.get("choices") is not None:
            choices = tuple(f.metadata["choices"])
        flag = flags.get(f.name) or "--" + f.name.replace("_", "-")
        out.append(
            ConfigFlag(
                f.name,
                flag,
                scalar,
                container,
                optional,
                choices,
                _default(f),
                f.metadata.get("help", ""),
                _annotation(f),
            )
        )
    return out


def _default(f: dataclasses.Field) -> Any:
    """The field's default (its factory called), or ``dataclasses.MISSING``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _annotation(f: dataclasses.Field) -> str:
    """The annotation as written (a string under ``from __future__ import annotations``)."""
    if isinstance(f.type, str):
        return f.type
    return f.type.__name__ if isinstance(f.type, type) else str(f.type).replace("typing.", "")


def _describe(cls: type, name: str, annotation: Any) -> tuple[type, type | None, bool, tuple | None]:
    """``(scalar, container, optional, choices)`` of a field annotation."""
    optional = False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) == 1:
            annotation = rest[0]
            origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    container = None
    if origin in (tuple, list) and (origin is list or (len(args) == 2 and args[1] is Ellipsis)):
        container = origin
        annotation = args[0] if args else str
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal and args and all(type(a) is type(args[0]) for a in args):
        return type(args[0]), container, optional, tuple(args)
    if annotation in _SCALARS and not (container and annotation is bool):
        return annotation, container, optional, None
    raise TypeError(f"{cls.__name__}.{name}: no command-line form for the type {annotation!r}")


def show_value(value: Any) -> str:
    """A value as a user types it: ``1,8,32`` for a list, ``true``/``false``, ``null`` for None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str) and not value:
        return '""'
    if isinstance(value, (tuple, list)):
        return ",".join(show_value(v) for v in value) if value else "[]"
    return str(value)


# --------------------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------------------


class _OnOff(argparse.Action):
    """``--x`` stores True, ``--no-x`` False. (argparse's ``BooleanOptionalAction`` appends its own
    ``(default: ...)`` on Python 3.10-3.11 only; this reads the same on every version.)"""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, option_string == self.option_strings[0])

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


class _JoinWithCommas(argparse.Action):
    """``--batch-sizes 1 8,32`` -> ``"1,8,32"``: the older space-separated form becomes the one form
    :func:`parse_list` reads."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, ",".join(values))


def _help(spec: ConfigFlag) -> str:
    # argparse %-formats help strings: a literal % (a "% of peak" column) must reach it as %%
    text = spec.help.replace("%", "%%")
    if spec.container is not None:
        text = f"{text}; comma-separated" if text else "comma-separated"
    default = spec.default
    if default is dataclasses.MISSING or default is None:
        return text  # a None default is described by the help text ("default: all dimensions")
    shown = "none" if isinstance(default, (tuple, list)) and not default else show_value(default)
    return f"{text} (default: {shown.replace('%', '%%')})"


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    flags: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
    space_separated: bool = False,
) -> None:
    """One flag per field of the dataclass ``cls`` (module docstring), with its help and default.

    Args:
        parser: the parser (or argument group) to add to.
        flags: field name -> flag for the fields a command spells otherwise (``{"model_name": "--name"}``).
        exclude: fields left out (they keep the dataclass default in :func:`dataclass_from_namespace`).
        space_separated: list flags also take space-separated values (``--batch-sizes 1 8 32``), for
            commands whose flags did before; the comma form is the documented one.
    """
    skipped = set(exclude)
    for spec in config_flags(cls, flags):
        if spec.name in skipped:
            continue
        required = spec.default is dataclasses.MISSING
        kwargs: dict[str, Any] = {"dest": spec.name, "help": _help(spec)}
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = spec.default
        if spec.scalar is bool and spec.container is None:
            negative = "--no-" + spec.flag.removeprefix("--")
            parser.add_argument(spec.flag, negative, action=_OnOff, **kwargs)
            continue
        if spec.container is not None:
            # raw text here; dataclass_from_namespace parses it, so errors name the flag in one line
            kwargs.update(metavar="LIST")
            if space_separated:
                kwargs.update(nargs="+", action=_JoinWithCommas)
        else:
            # the metavar follows the flag (--name NAME), not the field (model_name)
            metavar = None if spec.choices else spec.flag.removeprefix("--").replace("-", "_").upper()
            kwargs.update(type=spec.scalar, choices=spec.choices, metavar=metavar)
        parser.add_argument(spec.flag, **kwargs)


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` that can add a config's flags when it is first used.

    ``zreward --help`` builds every command's parser; a config whose module imports torch (the exporters,
    the synthetic data generator) would make it take seconds. Such a command's flags are declared with
    :func:`defer_dataclass_arguments` and added the first time this parser parses or prints help, i.e.
    only for ``zreward <group> <that command> ...``. Give it as ``add_subparsers(parser_class=...)``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._deferred: list[tuple[Callable[[], type], dict[str, Any]]] = []

    def _add_deferred(self) -> None:
        while self._deferred:
            load, options = self._deferred.pop(0)
            try:
                cls = load()
            except ImportError as exc:  # a missing extra: one line naming it, also for --help
                self.error(str(exc))
            add_dataclass_arguments(self, cls, **options)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._add_deferred()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._add_deferred()
        return super().format_help()

    def format_usage(self) -> str:
        self._add_deferred()
        return super().format_usage()


def defer_dataclass_arguments(
    parser: argparse.ArgumentParser, load: Callable[[], type], **options: Any
) -> None:
    """:func:`add_dataclass_arguments` for the class ``load()`` returns, when ``parser`` is first used.

    ``parser`` must be a :class:`ArgumentParser`; ``options`` are those of
    :func:`add_dataclass_arguments`.
    """
    if not isinstance(parser, ArgumentParser):
        raise TypeError("defer_dataclass_arguments needs a zreward_deploy.cliargs.ArgumentParser")
    parser._deferred.append((load, options))


# --------------------------------------------------------------------------------------------------
# Back to the dataclass
# --------------------------------------------------------------------------------------------------


def list_flag_values(
    cls: type, values: Mapping[str, Any], flags: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``values`` with each list field given on the command line (text, or a list of texts joined with
    commas) parsed by :func:`parse_list` into the field's container, entries cast to its type; defaults
    (tuples, None) pass through.

    Raises:
        ZRewardInputError: naming the flag, for an empty entry (``1,,8``) or an entry of the wrong type.
    """
    out = dict(values)
    for spec in config_flags(cls, flags):
        value = out.get(spec.name)
        if spec.container is None:
            continue
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = ",".join(value)  # the texts of `--flag a b` (argparse nargs="+")
        if not isinstance(value, str):
            continue  # a default, or values a caller already has
        entries = parse_list(value, spec.flag, spec.scalar) or []
        if spec.choices is not None and (bad := [e for e in entries if e not in spec.choices]):
            raise ZRewardInputError(
                spec.flag, f"{bad[0]!r} is not one of {', '.join(map(str, spec.choices))}"
            )
        out[spec.name] = spec.container(entries)
    return out


def dataclass_from_namespace(
    cls: type, args: argparse.Namespace, flags: Mapping[str, str] | None = None
) -> Any:
    """Build ``cls`` from parsed flags: list flags parsed by :func:`list_flag_values`; fields absent from
    ``args`` (excluded, or another command's) keep their defaults.

    Raises:
        ZRewardInputError: one line naming the flag: a bad list entry, or a value ``cls.__post_init__``
            refuses (its error naming a field is re-worded to name the flag; a plain ``ValueError`` is
            passed on as its message).
    """
    specs = config_flags(cls, flags)
    values = {s.name: getattr(args, s.name) for s in specs if hasattr(args, s.name)}
    parsed = list_flag_values(cls, values, flags)
    try:
        return cls(**parsed)
    except ZRewardInputError as exc:
        by_name = {s.name: s.flag for s in specs}
        if isinstance(exc.item, str) and exc.item in by_name:
            raise type(exc)(by_name[exc.item], exc.reason) from None
        raise
    except ValueError as exc:  # a config's own checks: one line from the CLI, not a traceback
        raise ZRewardInputError(None, str(exc)) from None


# --------------------------------------------------------------------------------------------------
# Listing (``zreward train <method> --help-config``)
# --------------------------------------------------------------------------------------------------


def config_from_argv(
    cls: type[T], argv: Sequence[str] | None, description: str | None, *, space_separated: bool = False
) -> T:
    """The config of a ``python -m`` script from its command line: the fields as flags
    (:func:`add_dataclass_arguments`), a bad value one ``error:`` line and exit status 2."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataclass_arguments(parser, cls, space_separated=space_separated)
    try:
        return dataclass_from_namespace(cls, parser.parse_args(argv))
    except ValueError as err:  # a ZRewardInputError naming the flag included
        parser.error(str(err))


def format_fields(cls: type, title: str, width: int = 100) -> str:
    """Every field of ``cls`` as ``name: type = default`` and its help text below, under ``title``.

    For configs given as ``key=value`` (``zreward train``): the default is shown as it would be typed
    (``dimensions=realism,alignment``, ``tensorboard=false``, ``teacher=null``); help wraps at ``width``.
    """
    lines = [f"{title} (name: type = default, then its help):"]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = _default(f)
        shown = "(required)" if default is dataclasses.MISSING else show_value(default)
        lines.append(f"  {f.name}: {_annotation(f)} = {shown}")
        text = f.metadata.get("help", "")
        if f.metadata.get("choices") is not None:
            text += f" (one of: {', '.join(map(show_value, f.metadata['choices']))})"
        if text:
            lines.append(textwrap.fill(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)

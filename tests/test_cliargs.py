"""``zreward_deploy.cliargs``: the one way from a config dataclass to flags, help text and back.

The module's conventions on a toy config (bools, lists with commas or spaces, None defaults, choices,
renamed flags, errors naming the flag, defaults in the help), then every command that goes through it:
the export and synthetic-data flags are the configs' fields, the benchmarks import no command module, and
``zreward --help`` stays free of torch.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from zreward_deploy import cliargs
from zreward_deploy.cli import build_parser
from zreward_deploy.errors import ZRewardInputError

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ToyConfig:
    out: str = field(default="runs/toy", metadata={"help": "output folder"})
    sizes: tuple[int, ...] = field(default=(1, 8), metadata={"help": "sizes to try"})
    names: list[str] | None = field(default=None, metadata={"help": "names (default: every name)"})
    limit: int | None = field(default=None, metadata={"help": "first N only"})
    ratio: float = field(default=0.5, metadata={"help": "share of the % column"})
    validate: bool = field(default=True, metadata={"help": "check the result"})
    quick: bool = field(default=False, metadata={"help": "a small run"})
    mode: Literal["fast", "slow"] = field(default="fast", metadata={"help": "how to run"})
    dtype: str = field(default="fp32", metadata={"help": "precision", "choices": ("fp32", "fp16")})

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ZRewardInputError("limit", f"must be >= 1, got {self.limit}")
        if not 0 < self.ratio < 1:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")


def _parser(**options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    cliargs.add_dataclass_arguments(parser, ToyConfig, **options)
    return parser


def _toy(argv: list[str], **options) -> ToyConfig:
    parser = _parser(**options)
    return cliargs.dataclass_from_namespace(ToyConfig, parser.parse_args(argv), options.get("flags"))


# --------------------------------------------------------------------------------------------------
# 1. The conventions
# --------------------------------------------------------------------------------------------------


def test_defaults_give_the_dataclass_defaults():
    assert _toy([]) == ToyConfig()


def test_bool_fields_take_the_flag_and_its_no_form():
    assert _toy(["--quick"]).quick is True and _toy(["--no-quick"]).quick is False
    assert _toy(["--no-validate"]).validate is False and _toy(["--validate"]).validate is True
    assert _toy(["--quick", "--no-quick"]).quick is False  # the last one wins, as for any flag


@pytest.mark.parametrize("value", ["2,3,5", "2, 3 ,5"])
def test_a_list_flag_takes_one_comma_separated_value(value):
    assert _toy(["--sizes", value]).sizes == (2, 3, 5)
    assert _toy(["--names", "a,b"]).names == ["a", "b"]  # the field's own container type


def test_space_separated_lists_only_where_a_command_accepts_them(capsys):
    assert _toy(["--sizes", "2", "3,5"], space_separated=True).sizes == (2, 3, 5)
    with pytest.raises(SystemExit):
        _toy(["--sizes", "2", "3"])  # one argument by default: "3" is left over
    assert "unrecognized arguments: 3" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--sizes", "1,,8"], "--sizes: expected comma-separated values such as a,b; got '1,,8'"),
        (["--sizes", ","], "--sizes: expected comma-separated values"),
        (["--sizes", "1,x"], "--sizes: '1,x' is not a comma-separated list of int"),
        (["--limit", "0"], "--limit: must be >= 1, got 0"),  # the config's error names the field
        (["--ratio", "2"], "ratio must be in (0, 1), got 2.0"),  # a plain ValueError: its message
    ],
)
def test_errors_are_one_zreward_input_error_naming_the_flag(argv, words):
    with pytest.raises(ZRewardInputError) as info:
        _toy(argv)
    assert str(info.value) == words or str(info.value).startswith(words)
    assert "\n" not in str(info.value)


def test_none_defaults_stay_none_and_are_not_printed_as_none():
    config = _toy([])
    assert config.names is None and config.limit is None
    assert _toy(["--limit", "3"]).limit == 3
    text = _parser().format_help()
    assert "None" not in text and "names (default: every name)" in " ".join(text.split())


def test_choices_from_literal_and_metadata(capsys):
    assert _toy(["--mode", "slow", "--dtype", "fp16"]).mode == "slow"
    for flag in ("--mode", "--dtype"):
        with pytest.raises(SystemExit):
            _toy([flag, "bf16"])
        assert f"argument {flag}: invalid choice: 'bf16'" in capsys.readouterr().err


def test_help_shows_each_default_as_typed():
    text = " ".join(_parser(space_separated=True).format_help().split())  # unwrapped
    assert "sizes to try; comma-separated (default: 1,8)" in text
    assert "--validate, --no-validate check the result (default: true)" in text
    assert "--quick, --no-quick a small run (default: false)" in text
    assert "output folder (default: runs/toy)" in text
    assert "share of the % column (default: 0.5)" in text  # a literal % survives argparse's formatting


def test_a_command_may_keep_its_own_spelling_of_a_flag():
    flags = {"sizes": "--buckets", "limit": "--first"}
    assert _toy(["--buckets", "4,16", "--first", "2"], flags=flags) == ToyConfig(sizes=(4, 16), limit=2)
    with pytest.raises(ZRewardInputError, match=r"^--buckets: "):
        _toy(["--buckets", "4,,16"], flags=flags)
    with pytest.raises(ZRewardInputError, match=r"^--first: must be >= 1"):
        _toy(["--first", "0"], flags=flags)
    with pytest.raises(TypeError, match="no field"):
        _toy([], flags={"nope": "--nope"})


def test_excluded_fields_keep_their_defaults():
    parser = _parser(exclude=["quick", "sizes"])
    options = {s for a in parser._actions for s in a.option_strings}
    assert "--sizes" not in options and "--no-quick" not in options
    assert cliargs.dataclass_from_namespace(ToyConfig, parser.parse_args([])) == ToyConfig()


def test_a_field_without_a_default_is_a_required_flag(capsys):
    @dataclass
    class Needs:
        path: str = field(metadata={"help": "where"})

    parser = argparse.ArgumentParser(prog="needs")
    cliargs.add_dataclass_arguments(parser, Needs)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "the following arguments are required: --path" in capsys.readouterr().err
    assert cliargs.dataclass_from_namespace(Needs, parser.parse_args(["--path", "x"])) == Needs("x")


def test_a_field_type_without_a_command_line_form_is_a_config_bug():
    @dataclass
    class Bad:
        table: dict[str, int] = field(default_factory=dict)

    with pytest.raises(TypeError, match=r"Bad\.table"):
        cliargs.add_dataclass_arguments(argparse.ArgumentParser(), Bad)


def test_list_flag_values_parses_command_line_text_and_passes_values_through():
    assert cliargs.list_flag_values(ToyConfig, {"sizes": "3,4"}) == {"sizes": (3, 4)}
    assert cliargs.list_flag_values(ToyConfig, {"sizes": ["3", "4,5"]}) == {"sizes": (3, 4, 5)}
    assert cliargs.list_flag_values(ToyConfig, {"sizes": (1, 2), "names": None}) == {
        "sizes": (1, 2),
        "names": None,
    }


def test_parse_list():
    assert cliargs.parse_list(None, "--x") is None
    assert cliargs.parse_list(" a , b ", "--x") == ["a", "b"]
    assert cliargs.parse_list("1,2", "--x", float) == [1.0, 2.0]
    with pytest.raises(ZRewardInputError, match=r"^--x: "):
        cliargs.parse_list("", "--x")


def test_format_fields_lists_every_field_as_key_equals_value():
    text = cliargs.format_fields(ToyConfig, "toy config fields", width=60)
    lines = text.splitlines()
    assert lines[0].startswith("toy config fields")
    assert "  sizes: tuple[int, ...] = 1,8" in lines and "  names: list[str] | None = null" in lines
    assert "  validate: bool = true" in lines and "  out: str = runs/toy" in lines
    assert "      precision (one of: fp32, fp16)" in lines
    assert all(len(line) <= 60 for line in lines if line.startswith("      "))


def test_train_help_config_is_the_shared_listing(capsys):
    from zreward_deploy.cli import main
    from zreward_deploy.training.gdso import GDSOConfig

    assert main(["train", "gdso", "--help-config"]) == 0
    assert capsys.readouterr().out.strip() == cliargs.format_fields(GDSOConfig, "gdso config fields")


# --------------------------------------------------------------------------------------------------
# 2. Deferred flags: a config whose module imports torch is read only for its own command
# --------------------------------------------------------------------------------------------------


def _group_with_deferred(load) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool")
    sub = parser.add_subparsers(dest="command", parser_class=cliargs.ArgumentParser)
    run = sub.add_parser("run")
    cliargs.defer_dataclass_arguments(run, load)
    sub.add_parser("other")
    return parser


def test_deferred_flags_are_added_only_when_their_command_is_parsed():
    loads = []

    def load():
        loads.append(1)
        return ToyConfig

    parser = _group_with_deferred(load)
    parser.format_help()
    assert parser.parse_args(["other"]).command == "other" and not loads
    args = parser.parse_args(["run", "--sizes", "2,3", "--no-validate"])
    assert loads == [1]
    assert cliargs.dataclass_from_namespace(ToyConfig, args) == ToyConfig(sizes=(2, 3), validate=False)


def test_a_missing_extra_behind_deferred_flags_is_one_line(capsys):
    def load():
        raise ImportError("the run command needs the optional package 'x'")

    with pytest.raises(SystemExit) as info:
        _group_with_deferred(load).parse_args(["run", "--help"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "tool run: error: the run command needs the optional package 'x'" in err
    assert "Traceback" not in err


def test_defer_needs_the_cliargs_parser():
    with pytest.raises(TypeError, match="ArgumentParser"):
        cliargs.defer_dataclass_arguments(argparse.ArgumentParser(), lambda: ToyConfig)


# --------------------------------------------------------------------------------------------------
# 3. The commands: flags are the configs' fields, old spellings kept
# --------------------------------------------------------------------------------------------------


def _subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = action.choices[name]
    parser.format_help()  # adds deferred flags
    return parser


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _dest_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {s: a.dest for a in parser._actions for s in a.option_strings}


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_every_onnx_export_config_field_is_a_flag_of_export_onnx():
    from zreward_deploy.export.contract import OPSET
    from zreward_deploy.export.onnx import OnnxExportConfig

    dests = set(_dest_of(_subparser("export", "onnx")).values())
    assert {f.name for f in dataclasses.fields(OnnxExportConfig)} <= dests
    assert _parse("export", "onnx", "--model", "m", "--out", "o").opset == OPSET  # the contract's default


def test_export_onnx_keeps_its_flag_names():
    from zreward_deploy.export.onnx import OnnxExportConfig

    args = _parse(
        "export", "onnx", "--model", "m", "--out", "o", "--dtype", "fp16", "--dimensions", "realism,alignment",
        "--opset", "17", "--atol", "0.02", "--no-validate", "--overwrite", "--trace-batch-size", "3",
    )  # fmt: skip
    assert (args.model, args.out) == ("m", "o")
    config = cliargs.dataclass_from_namespace(OnnxExportConfig, args)
    assert config == OnnxExportConfig(
        dtype="fp16", dimensions=("realism", "alignment"), opset=17, atol=0.02, validate=False,
        overwrite=True, trace_batch_size=3,
    )  # fmt: skip
    defaults = cliargs.dataclass_from_namespace(
        OnnxExportConfig, _parse("export", "onnx", "--model", "m", "--out", "o")
    )
    assert defaults == OnnxExportConfig()


def test_synth_config_flags_round_trip():
    from zreward_deploy.data.synth import SynthConfig

    parser = _subparser("data", "synth")
    assert {"--out", "--overwrite"} <= _options(parser)
    assert {f.name for f in dataclasses.fields(SynthConfig)} <= set(_dest_of(parser).values())
    base = ["data", "synth", "--out", "d"]
    assert cliargs.dataclass_from_namespace(SynthConfig, _parse(*base)) == SynthConfig()
    wanted = SynthConfig(
        prompts=3, images_per_prompt=2, annotators=4, image_size=32, seed=7, val_fraction=0.2
    )
    argv = [
        "--prompts", "3", "--images-per-prompt", "2", "--annotators", "4", "--image-size", "32", "--seed", "7",
        "--val-fraction", "0.2",
    ]  # fmt: skip
    assert cliargs.dataclass_from_namespace(SynthConfig, _parse(*base, *argv)) == wanted


def test_tensorrt_and_triton_flags_are_their_configs_fields_under_the_old_names():
    from zreward_deploy.commands.export import TENSORRT_FLAGS, TRITON_FLAGS
    from zreward_deploy.export.tensorrt import TensorRTBuildConfig
    from zreward_deploy.export.triton_repo import TritonRepoConfig

    trt = _parse(
        "export", "tensorrt", "--onnx", "x", "--out", "o", "--buckets", "16,64", "--max-batch-size", "8",
        "--opt-batch-size", "4", "--workspace-gib", "2", "--builder-optimization-level", "5",
    )  # fmt: skip
    assert cliargs.dataclass_from_namespace(TensorRTBuildConfig, trt, TENSORRT_FLAGS) == TensorRTBuildConfig(
        max_batch_size=8, opt_batch_size=4, text_length_buckets=(16, 64), workspace_gib=2.0,
        builder_optimization_level=5,
    )  # fmt: skip
    triton = _parse(
        "export", "triton-repo", "--source", "x", "--out", "o", "--name", "rm", "--kind", "cpu", "--no-warmup",
        "--preferred-batch-sizes", "2,4", "--max-batch-size", "4", "--buckets", "32", "--max-queue-delay-us", "10",
    )  # fmt: skip
    assert cliargs.dataclass_from_namespace(TritonRepoConfig, triton, TRITON_FLAGS) == TritonRepoConfig(
        model_name="rm", instance_kind="cpu", warmup=False, preferred_batch_sizes=(2, 4), max_batch_size=4,
        text_length_buckets=(32,), max_queue_delay_us=10,
    )  # fmt: skip
    for cls, path, flags in (
        (TensorRTBuildConfig, ("export", "tensorrt"), TENSORRT_FLAGS),
        (TritonRepoConfig, ("export", "triton-repo"), TRITON_FLAGS),
    ):
        dests = set(_dest_of(_subparser(*path)).values())
        assert {f.name for f in dataclasses.fields(cls)} <= dests, path
        assert set(flags.values()) <= _options(_subparser(*path))


@pytest.mark.parametrize("command", ["latency", "parity"])
def test_bench_commands_are_their_configs_fields(command):
    import importlib

    module = importlib.import_module(f"zreward_deploy.bench.bench_{command}")
    cls = getattr(module, f"{command.capitalize()}BenchConfig")
    assert cliargs.dataclass_from_namespace(cls, _parse("bench", command)) == cls()
    dests = set(_dest_of(_subparser("bench", command)).values())
    assert {f.name for f in dataclasses.fields(cls)} <= dests


# --------------------------------------------------------------------------------------------------
# 4. Import direction and a light --help
# --------------------------------------------------------------------------------------------------


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "bench").glob("*.py")), ids=lambda p: p.name)
def test_bench_imports_no_command_module(path):
    # bench/ sits below the application layer: its scripts parse flags with zreward_deploy.cliargs
    bad = {
        m for m in _imported_modules(path) if m.startswith(("zreward_deploy.commands", "zreward_deploy.cli."))
    }
    assert not bad and "zreward_deploy.cli" not in _imported_modules(path), f"{path.name} imports {bad}"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["export", "--help"],
        ["data", "--help"],
        ["bench", "latency", "--help"],
        ["train", "--help"],
        # the leaf commands whose flags come from config dataclasses (torch-free config modules)
        ["export", "onnx", "--help"],
        ["export", "tensorrt", "--help"],
        ["export", "triton-repo", "--help"],
        ["data", "synth", "--help"],
    ],
    ids=" ".join,
)
def test_help_imports_neither_torch_nor_transformers(argv):
    code = (
        "import contextlib, io\nfrom zreward_deploy.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main({argv!r})"
    )
    loaded = _modules_after(code)
    assert "torch" not in loaded and "transformers" not in loaded


def test_cliargs_is_light():
    loaded = _modules_after("import zreward_deploy.cliargs")
    assert not {"torch", "transformers", "numpy"} & loaded


def test_config_from_argv_is_a_script_command_line(capsys):
    # what the benchmarks' `python -m` entry points parse with: flags, or one error line and exit 2
    from zreward_deploy.bench.bench_latency import LatencyBenchConfig
    from zreward_deploy.cliargs import config_from_argv

    config = config_from_argv(LatencyBenchConfig, ["--batch-sizes", "1", "8"], "doc", space_separated=True)
    assert config.batch_sizes == (1, 8)
    with pytest.raises(SystemExit) as exit_info:
        config_from_argv(LatencyBenchConfig, ["--batch-sizes", "1,,8"], "doc", space_separated=True)
    assert exit_info.value.code == 2 and "--batch-sizes" in capsys.readouterr().err.splitlines()[-1]

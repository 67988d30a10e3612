"""Packaging (docs/design.md §2): the repository's kernels/, export/, training/, bench/ install as subpackages
of zreward_deploy and never as top-level modules; extras and the console script are declared."""

import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["kernels", "export", "training", "bench"])
def test_subpackages_map_to_top_level_folders(name):
    module = importlib.import_module(f"zreward_deploy.{name}")
    assert Path(module.__file__).resolve().parent == ROOT / name


@pytest.mark.parametrize("name", ["kernels", "export", "training", "bench"])
def test_no_top_level_module_shadows_pypi(name):
    # A top-level `kernels` would shadow the PyPI package that transformers probes for.
    spec = importlib.util.find_spec(name)
    assert spec is None or not str(spec.origin).startswith(str(ROOT)), f"{name} importable from the repo root"


def test_core_does_not_import_training_or_bench():
    import subprocess
    import sys

    code = (
        "import sys, zreward_deploy.scoring, zreward_deploy.presets, zreward_deploy.generation, zreward_deploy.cli;"
        "bad = [m for m in sys.modules if m.startswith(('zreward_deploy.training', 'zreward_deploy.bench'))"
        " or m in ('optimum', 'onnxruntime', 'tensorrt', 'ray')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"core imported {out.stdout} (heavy or higher-layer modules)"


def test_pyproject_declares_extras_and_script():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"onnx", "optimum", "triton", "gpu", "dev"} <= set(extras)
    assert any(dep.startswith("onnxruntime") for dep in extras["onnx"])
    assert any(dep.startswith("optimum-onnx") for dep in extras["optimum"])
    assert any(dep.startswith("tensorrt") for dep in extras["gpu"])
    assert project["scripts"]["zreward"] == "zreward_deploy.cli:main"


def test_only_the_optimum_extra_moves_transformers_off_5():
    """A plain install, and every extra but `optimum`, accepts both lines, so installing the package where
    transformers 5 is present never downgrades it; `optimum` (optimum-onnx pins <4.58) takes 4.57."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def admits(deps, version):
        reqs = [Requirement(d) for d in deps if Requirement(d).name == "transformers"]
        return all(r.specifier.contains(version) for r in reqs)

    lines = ("4.57.6", "5.0.0", "5.17.0", "5.24.0")  # the 4.57 line; 5.17 is the GPU machines' version
    assert [Requirement(d).name for d in project["dependencies"]].count("transformers") == 1
    assert all(admits(project["dependencies"], v) for v in lines)
    extras = project["optional-dependencies"]
    for name, deps in extras.items():
        if name != "optimum":
            assert all(admits(deps, v) for v in lines), name
    assert admits(extras["optimum"], "4.57.6") and not admits(extras["optimum"], "5.17.0")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    # the linter and the formatter's check run before the tests
    # ... then the second transformers line (.ci/transformers-4.57.sh: the tests that touch transformers)
    command = (
        'pip install torch==2.13.0 && pip install -e ".[onnx,triton,dev]" '
        "&& ruff check . && ruff format --check . && pytest && bash .ci/transformers-4.57.sh"
    )
    assert command in readme and command in ci
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2
    assert commands[0].endswith("zreward demo") and commands[1] == command

#!/usr/bin/env bash
# The second transformers line. The README's test command (and .ci/run) installs the package plainly, which
# takes the newest transformers 5.x, and runs the whole suite there; this script then repeats, in a second
# virtualenv, every test that touches transformers on the 4.57 line, with the `optimum` extra (optimum-onnx
# 0.1.0 pins transformers<4.58), so both ONNX exporters are exercised. Only tests that never import
# transformers are left out (listed below).
#
# The virtualenv is .venv-transformers-4.57 (ignored by git), made on the first run and reused after;
# ZREWARD_LINE_VENV=DIR puts it elsewhere. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${ZREWARD_LINE_VENV:-.venv-transformers-4.57}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# activated, so that the tests' subprocesses (the `zreward` console script among them) are this line's
# shellcheck disable=SC1091
source "$venv/bin/activate"
# torch first, from the local CPU build (as in the README), then the package with the optimum-onnx exporter.
# diffusers from 0.40 on needs huggingface-hub>=1, which transformers 4.57 refuses: saying so here spares pip
# 23.2's resolver minutes of backtracking through every diffusers release (and ends on the same version).
pip install -q torch==2.13.0 && pip install -q -e ".[optimum,triton,dev]" "diffusers<0.40"
python - <<'PY'
import transformers, optimum.exporters.onnx  # noqa: F401  (fails loudly if the extra did not resolve)
assert transformers.__version__.startswith("4.57."), transformers.__version__
print(f"transformers {transformers.__version__} with optimum-onnx: the 4.57 line")
PY
# Left out: tests that import neither transformers nor a model (checked: after running them alone,
# `transformers` is not in sys.modules): the kernels' numerics, metrics, benchmark helpers, and the
# documentation, packaging and import-layer checks. They ran in the first pass and cannot depend on the line.
# Also left out, to keep CI within its 15 minutes on 2 cores: the layers above the model whose only
# transformers use is the Scorer / model calls that the tests kept here already run on this line (scoring,
# score_tensor's gradients, native models, every trainer): the HTTP server and its clients (tests/serving),
# the dataset importers and the preference-file format (pure file parsing), the photo-transfer benchmark and
# the diffusers fine-tuning (tests/refl; diffusers' own version is pinned for this line above), and the
# harness and command-line plumbing around already-tested models: the GPU bench's dry run, the latency and
# memory benches and the CLI conventions (tests/test_user_experience.py). Everything they call on a model
# runs in the tests kept. And the learning test (tests/training/test_learning.py, ~70 s: a few hundred
# training steps that must reach HPA 0.8): on this line the trainers' golden tests (tests/training/
# test_trainers.py) check every method's first steps against pinned values to 1e-4, which a numeric
# difference of the line would already fail.
exec pytest -p no:cacheprovider \
    --ignore=tests/kernels \
    --ignore=tests/test_metrics.py \
    --ignore=tests/bench/test_common.py \
    --ignore=tests/bench/test_stability.py \
    --ignore=tests/test_docs.py \
    --ignore=tests/test_packaging.py \
    --ignore=tests/test_import_direction.py \
    --ignore=tests/serving \
    --ignore=tests/refl \
    --ignore=tests/test_importers.py \
    --ignore=tests/test_importers_bench.py \
    --ignore=tests/test_preferences.py \
    --ignore=tests/bench/test_bench_transfer.py \
    --ignore=tests/bench/test_bench_gpu.py \
    --ignore=tests/bench/test_bench_latency.py \
    --ignore=tests/bench/test_bench_memory.py \
    --ignore=tests/test_user_experience.py \
    --ignore=tests/training/test_learning.py \
    "$@"

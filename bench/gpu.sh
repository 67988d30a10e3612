#!/usr/bin/env bash
# Every GPU measurement in one run, on a machine that has the repository's working tree and a GPU:
#   bash bench/gpu.sh [OUT] [BUDGET_S] [more zreward bench gpu flags]   (defaults: runs/bench_gpu, 480)
# Installs nothing from the network. The package is imported from this working tree: as installed if
# `import zreward_deploy` already works from here, else with `pip install --no-deps --no-build-isolation -e .`
# (offline: setuptools is already in the image), else through a PYTHONPATH shim (the repository's
# bench/, kernels/ and export/ are subpackages of zreward_deploy only through pyproject's package-dir).
set -u
cd "$(dirname "$0")/.."
OUT="${1:-runs/bench_gpu}"
BUDGET="${2:-480}"
PY="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! "$PY" -c "import zreward_deploy.bench.bench_gpu" 2>/dev/null; then
  echo "gpu.sh: zreward_deploy is not importable; trying an offline editable install" >&2
  "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . >&2 \
    || echo "gpu.sh: the editable install failed; running from source" >&2
fi
if [ -z "${GPU_SH_SHIM:-}" ] && "$PY" -c "import zreward_deploy.bench.bench_gpu" 2>/dev/null; then
  RUN=("$PY" -m zreward_deploy.cli bench gpu)
else
  # no install possible: map the package-dir layout by hand, for this run only
  SHIM="$(mktemp -d)"
  mkdir -p "$SHIM/zreward_deploy"
  for f in zreward_deploy/*; do ln -s "$PWD/$f" "$SHIM/zreward_deploy/"; done
  ln -s "$PWD/bench" "$SHIM/zreward_deploy/bench"
  ln -s "$PWD/kernels" "$SHIM/zreward_deploy/kernels"
  ln -s "$PWD/export" "$SHIM/zreward_deploy/export"
  ln -s "$PWD/training" "$SHIM/zreward_deploy/training"
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  RUN=("$PY" -m zreward_deploy.cli bench gpu)
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "gpu.sh: no nvidia-smi" >&2
"${RUN[@]}" --out "$OUT" --budget-s "$BUDGET" "${@:3}"
STATUS=$?
echo "gpu.sh: results in $(cd "$OUT" 2>/dev/null && pwd || echo "$OUT") (summary.md; NN_section.jsonl and .md); exit $STATUS"
exit $STATUS

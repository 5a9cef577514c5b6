#!/usr/bin/env bash
# Execute chapters in place from book/ (as nbval does), drop per-cell timing metadata so that a re-run
# only changes what really changed, and re-sync the py:percent twins.
#   tools/execute_chapter.sh book/01_multi_crop.ipynb [more notebooks...]
set -euo pipefail
cd "$(dirname "$0")/.."
export DINO_DATA="${DINO_DATA:-$PWD/data}" TQDM_DISABLE="${TQDM_DISABLE:-1}"
for notebook in "$@"; do
  name="$(basename "$notebook" .py)"; name="${name%.ipynb}"
  jupytext --sync "book/$name.py" >/dev/null
  start=$(date +%s)
  log="$(mktemp)"
  if ! (cd book && jupyter execute --inplace "$name.ipynb") >"$log" 2>&1; then
    cat "$log"; rm -f "$log"; echo "$name: execution failed" >&2; exit 1
  fi
  rm -f "$log"
  python - "book/$name.ipynb" <<'PY'
import sys
import nbformat
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
for cell in nb.cells:
    cell.metadata.pop("execution", None)
nbformat.write(nb, path)
PY
  jupytext --sync "book/$name.ipynb" >/dev/null
  echo "$name: executed in $(( $(date +%s) - start )) s"
done

#!/usr/bin/env bash
# Mutation testing of the modules that define DINO: mutmut changes one thing at a time in a module (an operator, a
# constant, a condition) and runs the unit tests that cover it; a mutant the tests let through is a change of the
# algorithm nothing would notice. Prints the score of each module; mutants listed in tools/mutation_survivors.md
# as equivalent (they compute the same thing) are left out of the "non-equivalent" score.
#   tools/mutation_test.sh                      # every module below (about 40 minutes on 2 cores)
#   tools/mutation_test.sh loss schedules       # some of them
# Works on a copy of the package and the tests (in $MUTATION_DIR, default /tmp/dino-mutation): the sources here are
# never modified. Needs mutmut (requirements-dev.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work="${MUTATION_DIR:-${TMPDIR:-/tmp}/dino-mutation}"
export DINO_DATA="${DINO_DATA:-$(cd "$root/.." && pwd)/shared/data}" OMP_NUM_THREADS=1 TQDM_DISABLE=1
export PYTHONDONTWRITEBYTECODE=1

# module: the unit tests that kill its mutants [mutants to run: the functions of the module that teach DINO]
declare -A TESTS=(
  [augment]="tests/test_augment.py tests/test_view_statistics.py"
  [model]="tests/test_model.py"
  [teacher]="tests/test_teacher.py tests/test_train_step.py"
  [loss]="tests/test_loss.py tests/test_distributed.py::test_center_is_mean_over_all_processes"
  [schedules]="tests/test_schedules.py tests/test_optim.py"
  [optim]="tests/test_optim.py tests/test_train_step.py"
  [knn]="tests/test_knn.py"
  [train]="tests/test_optim.py tests/test_train_step.py tests/test_trainer_step.py"
  [linear]="tests/test_linear.py"
)
declare -A ONLY=(                                   # train.py: the step and the schedules, not the engine around them
  [train]="dino_tutorial.train.xǁTrainerǁtrain_step__mutmut_* dino_tutorial.train.xǁTrainerǁ_build_schedules__mutmut_*"
)
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(augment model teacher loss schedules optim knn train linear)
# the equivalent mutants: the first column of the tables in tools/mutation_survivors.md
equivalent="$(grep '^| `' "$root/tools/mutation_survivors.md" 2>/dev/null | grep -o '[A-Za-z0-9_.ǁ]*__mutmut_[0-9]*' \
              | sort -u || true)"

summary=()
for module in "${modules[@]}"; do
  [ -n "${TESTS[$module]:-}" ] || { echo "unknown module $module; choose from ${!TESTS[*]}" >&2; exit 2; }
  dir="$work/$module"
  rm -rf "$dir" && mkdir -p "$dir"
  cp -r "$root/dino_tutorial" "$root/tests" "$dir/"
  # mutmut leaves decorated functions alone; in the copy, @torch.no_grad() becomes a `with` block around the body
  python "$root/tools/undecorate_no_grad.py" "$dir/dino_tutorial/$module.py"
  printf '[pytest]\nmarkers =\n    slow: end-to-end checks\n' > "$dir/pytest.ini"
  {
    echo "[mutmut]"
    echo "source_paths = dino_tutorial"
    echo "only_mutate = dino_tutorial/$module.py"
    echo "pytest_add_cli_args = -p no:nbval -p no:cacheprovider"
    echo "pytest_add_cli_args_test_selection ="
    for t in ${TESTS[$module]}; do if [ -e "$root/${t%%::*}" ]; then echo "    $t"; fi; done   # an older tree may lack some
  } > "$dir/setup.cfg"
  start=$(date +%s)
  # shellcheck disable=SC2086
  (cd "$dir" && mutmut run --max-children "${MUTATION_JOBS:-2}" ${ONLY[$module]:-} > mutmut.log 2>&1) \
    || { tail -30 "$dir/mutmut.log"; echo "$module: mutmut failed (log: $dir/mutmut.log)" >&2; exit 1; }
  (cd "$dir" && mutmut results --all true) | sed 's/^ *//' > "$dir/results.txt"
  if [ -n "${ONLY[$module]:-}" ]; then                 # mutants of other functions are not run: not counted
    patterns="$(printf '%s\n' ${ONLY[$module]} | sed 's/\*$//')"
    grep -F "$patterns" "$dir/results.txt" > "$dir/results.kept" || true
    mv "$dir/results.kept" "$dir/results.txt"
  fi
  total=$(wc -l < "$dir/results.txt")
  killed=$(grep -cE ': (killed|timeout)$' "$dir/results.txt" || true)
  survived_list="$(grep -E ': (survived|no tests|suspicious)$' "$dir/results.txt" | cut -d: -f1 || true)"
  survived=$(printf '%s' "$survived_list" | grep -c . || true)
  equiv=$(printf '%s\n' "$survived_list" | grep -cxF "${equivalent:-@none@}" || true)
  live=$((survived - equiv))
  score=$(python3 -c "k, s = $killed, $live; print(f'{100 * k / max(1, k + s):.1f}')")
  line="$(printf '%-10s %5d mutants %5d killed %4d survived (%3d equivalent) %6s%% of non-equivalent killed  %4d s' \
          "$module" "$total" "$killed" "$survived" "$equiv" "$score" $(( $(date +%s) - start )))"
  echo "$line"
  summary+=("$line")
  if [ "$live" -gt 0 ]; then
    printf '%s\n' "$survived_list" | grep -vxF "${equivalent:-@none@}" | sed 's/^/    surviving: /'
  fi
done
echo
echo "module     score (equivalent mutants: tools/mutation_survivors.md; see one: cd $work/<module> && mutmut show NAME)"
printf '%s\n' "${summary[@]}"

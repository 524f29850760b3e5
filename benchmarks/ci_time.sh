#!/usr/bin/env bash
# Time each step of .ci/run separately, in a fresh clone: install, browser, lint, test count, tests.
#   bash benchmarks/ci_time.sh [COMMIT]     (default HEAD; the clone goes to a temporary folder, removed at the end)
# Prints one "step seconds" line per step and the total; compare commits by running this twice on the same machine.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
commit="$(git -C "$repo" rev-parse "${1:-HEAD}")"
out="${CI_TIME_OUT:-/tmp}"   # where the slowest-tests list goes
export PYTEST_ARGS="${PYTEST_ARGS:---durations=40}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone --quiet "$repo" "$work/clone"
cd "$work/clone"
git checkout --quiet "$commit"
declare -a rows
step() {  # step NAME COMMAND...: run it, keep its seconds, stop at the first failure like .ci/run does
    local name="$1" start end
    shift
    start=$(date +%s.%N)
    "$@" >"$work/$name.log" 2>&1 || { tail -20 "$work/$name.log"; echo "step $name failed" >&2; exit 1; }
    end=$(date +%s.%N)
    rows+=("$(printf '%-10s %7.1f s' "$name" "$(echo "$end - $start" | bc)")")
}
step browser bash -c 'command -v chromium >/dev/null || echo "chromium missing: .ci/run would install it"'
step install make install
step lint make lint
step collect bash -c '.venv/bin/python -m pytest --collect-only -q -m "slow or not slow" | tail -1'
step test make test
printf '%s\n' "${rows[@]}"
awk '{s += $2} END {printf "total      %7.1f s\n", s}' <<<"$(printf '%s\n' "${rows[@]}")"
echo "tests collected: $(tail -1 "$work/collect.log")"
echo "test run: $(grep -E '[0-9]+ passed' "$work/test.log" | tail -1)"
grep -A42 'slowest' "$work/test.log" >"$out/ci_time_durations_${commit:0:7}.txt" || true
echo "slowest tests: $out/ci_time_durations_${commit:0:7}.txt"

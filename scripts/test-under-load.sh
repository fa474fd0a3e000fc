#!/usr/bin/env bash
# The suite, N times in a row (default 5), on a fresh clone of the current HEAD, while a busy
# loop keeps one core busy: the proof that no test depends on the machine's speed.
#
#   scripts/test-under-load.sh [N] [pytest arguments...]
#   PYTHON=/path/to/venv/bin/python scripts/test-under-load.sh 5
#
# Stops at the first failing run (exit status 1) and keeps that run's clone and log for
# inspection; prints one summary line per run. The busy loop is killed on exit, whatever the
# way out (end, failure, Ctrl-C).
#
# Python: $PYTHON if set, else this checkout's .venv (`make install` creates it), else the clone
# gets its own .venv from `make install`. The tests run the server and the simulators as
# `python -m ...` from the clone's root, so the clone's code is what runs, whichever venv.
# The Debian tools the tests use (mosquitto, mbpoll, socat, victoria-metrics) must be there:
# `make system-deps` installs them.
set -euo pipefail

runs=${1:-5}
[[ $# -gt 0 ]] && shift
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [N] [pytest arguments...]" >&2; exit 2; }

src=$(git rev-parse --show-toplevel)
head=$(git -C "$src" rev-parse HEAD)
work=$(mktemp -d "${TMPDIR:-/tmp}/scada-under-load.XXXXXX")
clone=$work/clone
busy_pid=""

cleanup() {
    if [[ -n $busy_pid ]]; then
        kill "$busy_pid" 2>/dev/null || true
        wait "$busy_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

git clone --quiet --no-checkout "$src" "$clone"
git -C "$clone" checkout --quiet --detach "$head"
if [[ -n $(git -C "$src" status --porcelain --untracked-files=no) ]]; then
    echo "note: uncommitted changes in $src are not tested (a clone of HEAD $head is)"
fi

py=${PYTHON:-}
if [[ -z $py && -x $src/.venv/bin/python ]]; then
    py=$src/.venv/bin/python
fi
if [[ -z $py ]]; then
    make -C "$clone" install >"$work/install.log" 2>&1 || { echo "make install failed: $work/install.log"; exit 1; }
    py=$clone/.venv/bin/python
fi

# One core busy for the whole proof (the machine is assumed to have two or more).
bash -c 'while :; do :; done' &
busy_pid=$!

echo "HEAD $head, $runs runs, one core kept busy (pid $busy_pid), $(nproc) cores, python $py"
for ((i = 1; i <= runs; i++)); do
    log=$work/run-$i.log
    start=$(date +%s)
    if (cd "$clone" && "$py" -m pytest -q -p no:cacheprovider "$@") >"$log" 2>&1; then
        status=passed
    else
        status=FAILED
    fi
    summary=$(grep -v '^[[:space:]]*$' "$log" | tail -1 || true)  # pytest's last line: "N passed in S s"
    echo "run $i/$runs: $status in $(($(date +%s) - start)) s: ${summary:-no pytest summary, see $log}"
    if [[ $status == FAILED ]]; then
        grep -E '^(FAILED|ERROR) ' "$log" | head -20 || true
        echo "stopped at run $i; clone and logs kept in $work"
        exit 1
    fi
done
echo "all $runs runs passed under load"
rm -rf "$work"

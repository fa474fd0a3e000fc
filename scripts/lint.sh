#!/bin/sh
# Lint, format and type checks of the code that ships (common/ scada/ drivers/ simulators/) and of bench/,
# run by `make test` before the suite. Configuration: pyproject.toml ([tool.ruff], [tool.mypy]).
# `ruff format common scada drivers simulators city_scada bench` fixes formatting; `ruff check --fix` what it can.
set -e
BIN=${BIN:-.venv/bin}
PATHS="common scada drivers simulators city_scada bench"
existing=""
for p in $PATHS; do [ -d "$p" ] && existing="$existing $p"; done
echo "ruff check:$existing"
"$BIN/ruff" check $existing
echo "ruff format --check:$existing"
"$BIN/ruff" format --check $existing
echo "mypy (pyproject.toml [tool.mypy] files)"
"$BIN/mypy"

#!/usr/bin/env bash
# Runs the whole test suite: lint, types, unit and mock-engine tests, and the labs (which need root).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy .
exec .venv/bin/python -m pytest "$@"

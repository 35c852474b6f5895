#!/usr/bin/env bash
# The full suite, as CI runs it: in two pytest processes (test files a-l, then m-z), each closing with its own
# summary line; extra arguments go to both (e.g. -x). One process for everything ended in a segmentation fault of
# the pytest process itself after ~375 tests on the 2-core CI machine (each half passes on its own; the cause is
# not found yet: docs/TESTING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pytest -q --ignore-glob='tests/test_[m-z]*.py' "$@" tests
"$PYTHON" -m pytest -q --ignore-glob='tests/test_[a-l]*.py' "$@" tests

#!/usr/bin/env bash
# Run the test suite; pytest's exit code 5 (no test collected) is a failure like any other.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "no tests were collected: that is a failure" >&2
fi
exit $rc

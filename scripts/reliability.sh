#!/usr/bin/env bash
# The long reliability runs, not part of scripts/test.sh:
#   - 100 downloads through random network faults (CROWECODE_SOAK_ROUNDS), printing
#     "N ok, N corrupted, N failed";
#   - 30 downloads killed with SIGKILL at random points (CROWECODE_KILL_TRIALS), each followed by a
#     recovering run.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/test.sh --run-ignored only --no-capture -E 'test(soak_downloads_under_random_faults) | test(sigkill_trials_never_leave_a_half_installed_model)'

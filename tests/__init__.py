"""The test-suite: unit, equivalence and end-to-end tests, all offline."""

import os as _os

# The suite computes in float32 on every machine: its exact comparisons (to 1e-5) across batchings, runs
# and processes hold in float32, while bfloat16 rounding moves a vector by up to ~3e-3 with its batch's
# padding. tests/test_precision.py covers bfloat16, the default where the CPU has it natively.
_os.environ.setdefault("KVEMB_DTYPE", "float32")

# SPDX-License-Identifier: Apache-2.0
"""Where the documentation generator reads and writes: ``docs/``, the repository root, ``benchmarks/results/``."""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(ROOT, "benchmarks", "results")

# SPDX-License-Identifier: Apache-2.0
"""
The structure suite as a table: every structure of ``tests/structures.py``
through every registered estimator, each pair classified as the suite
classifies it (``tests/test_structures.py``):

* ``works``: loss, loss_and_grads and differentiable_loss run and agree;
* ``error``: an error that names the estimator, the site and what to use instead;
* ``looped``: runs with ``vectorize_particles=False`` (the structure mixes
  vectorized particles without a shape error, which no estimator can see);
* ``FAIL``: anything else (the suite fails on it).

Writes ``benchmarks/results/structures.{csv,md}``::

    python benchmarks/structure_table.py
"""

import csv
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import pyro  # noqa: E402
import torch  # noqa: E402
from structures import STRUCTURES  # noqa: E402
from test_structures import ERROR, MIXES, PASS, _outcome, _taken_by_some_estimator, per_site_outcome, predict  # noqa: E402

from pyro_discrete.registry import REGISTRY  # noqa: E402

RESULTS = os.path.join(HERE, "results")


def classify(structure, entry):
    predicted, _ = predict(structure, entry)
    if predicted == MIXES and entry.vectorized_only:
        return "n/a"
    vectorize = predicted != MIXES
    pyro.clear_param_store()
    outcome, detail, _ = _outcome(structure, entry, vectorize=vectorize)
    if predicted == MIXES:
        if entry.vectorized_only:
            return "n/a"
        return "looped" if outcome == PASS else "FAIL"
    if outcome == ERROR:
        clear = detail.startswith(entry.cls.__name__ + ":") and "'" in detail
        return "error" if clear and predicted == ERROR else "FAIL"
    return "works" if predicted == PASS else "FAIL"


def classify_auto(structure):
    """``"works"``/``"looped"``/``"error"``/``"FAIL"`` of ``"auto"`` (under leave-one-out, as the suite runs it)."""
    taken, particles = _taken_by_some_estimator(structure)
    attempts = [(True, particles or 4)] if taken != "looped" else [(True, 4), (False, 4)]
    for vectorize, num_particles in attempts:
        pyro.clear_param_store()
        outcome, detail = per_site_outcome(structure, "auto", vectorize=vectorize, num_particles=num_particles)
        if outcome == PASS:
            return "works" if vectorize else "looped"
    return "error" if taken is None and outcome == ERROR else "FAIL"


def main():
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(True)
    start = time.time()
    names = list(REGISTRY)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for structure in STRUCTURES.values():
            row = {"structure": structure.name}
            for name in names:
                row[name] = classify(structure, REGISTRY[name])
            row["auto"] = classify_auto(structure)
            rows.append(row)
            print("{:<45} {}".format(structure.name, " ".join(row[n][0] for n in names)), flush=True)
    names = names + ["auto"]
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "structures.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["structure"] + names)
        writer.writeheader()
        writer.writerows(rows)
    symbol = {"works": "✓", "error": "E", "looped": "L", "n/a": "–", "FAIL": "**FAIL**"}
    counts = {n: {k: sum(r[n] == k for r in rows) for k in symbol} for n in names}
    lines = [
        "# The structure suite: {} structures x {} estimators".format(len(rows), len(names)),
        "",
        "✓ works (loss methods agree) · E a clear error (names estimator, site, alternative) · "
        "L runs with `vectorize_particles=False` only (the structure mixes vectorized particles without a "
        "shape error, which nothing in the traces can tell) · – not run (the same, for an estimator that "
        "needs vectorized particles) · **FAIL** neither. Written by "
        "`python benchmarks/structure_table.py` from `tests/structures.py`. The last column, `auto`, is the "
        'guide annotated with `config_estimator(guide, "auto")` under leave-one-out (under the moving average '
        "where only one-particle estimators take the structure): a method per site, chosen from the structure.",
        "",
        "Structures that no single estimator runs vectorized: {}; that `auto` does not run: {}. Estimators "
        "refusing a structure, per structure, median {} (of {}).".format(
            sum(all(r[n] not in ("works",) for n in names[:-1]) for r in rows),
            sum(r["auto"] not in ("works", "looped") for r in rows),
            sorted(sum(r[n] == "error" for n in names[:-1]) for r in rows)[len(rows) // 2],
            len(names) - 1,
        ),
        "",
        "| estimator | works | clear error | looped only | fail |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        c = counts[n]
        lines.append("| {} | {} | {} | {} | {} |".format(n, c["works"], c["error"], c["looped"], c["FAIL"]))
    lines += ["", "| structure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        lines.append("| {} | ".format(r["structure"]) + " | ".join(symbol[r[n]] for n in names) + " |")
    with open(os.path.join(RESULTS, "structures.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    failures = sum(c["FAIL"] for c in counts.values())
    print(
        "wrote benchmarks/results/structures.{{csv,md}} in {:.0f} s; {} failures".format(time.time() - start, failures)
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: Apache-2.0
"""
The AIR-like model of ``examples/air.py`` with Pyro AIR's recurrent cell, an
``nn.LSTMCell`` (one batch dim), at 4 particles: ms per ``SVI`` step of
``TraceScoreELBO`` with the particles looped, vectorized with the cell
wrapped by :func:`pyro_discrete.broadcastable`, and Pyro's ``TraceGraph_ELBO``
(which loops its particles), interleaved in one run on the same batch; and
what the unwrapped cell does vectorized (an error naming the module).

Writes ``benchmarks/results/air_vectorized.{csv,md}``::

    python benchmarks/air_vectorized.py
"""

import argparse
import csv
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import pyro  # noqa: E402
import torch  # noqa: E402
from air import AIR, multi_digit_canvases  # noqa: E402
from pyro.infer import SVI, TraceGraph_ELBO  # noqa: E402
from pyro.optim import Adam  # noqa: E402

from pyro_discrete import TraceScoreELBO  # noqa: E402
from pyro_discrete.errors import EstimatorError  # noqa: E402

RESULTS = os.path.join(HERE, "results")

SETUPS = {
    "TraceScoreELBO, looped particles": ("lstm", lambda n: TraceScoreELBO(n, vectorize_particles=False)),
    "TraceScoreELBO, vectorized, broadcastable(LSTMCell)": (
        "lstm-broadcastable",
        lambda n: TraceScoreELBO(n, max_plate_nesting=1),
    ),
    "TraceGraph_ELBO (Pyro, looped)": ("lstm", lambda n: TraceGraph_ELBO(num_particles=n)),
}


def make(setup, particles, data):
    cell, elbo = SETUPS[setup]
    torch.manual_seed(0)
    air = AIR(canvas=20, steps=3, cell=cell)
    svi = SVI(air.model, air.guide, Adam({"lr": 1e-3}), loss=elbo(particles))
    for _ in range(3):  # warm-up (the structural analysis runs on the first step)
        svi.step(data)
    return svi


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    pyro.set_rng_seed(0)
    data, _ = multi_digit_canvases(args.batch, canvas=20, max_digits=2)
    warnings.simplefilter("ignore")

    refused = ""
    pyro.clear_param_store()
    try:
        air = AIR(canvas=20, steps=3, cell="lstm")
        TraceScoreELBO(args.particles, max_plate_nesting=1).loss_and_grads(air.model, air.guide, data)
    except EstimatorError as e:
        refused = str(e).split(". The error was")[0]

    times = {setup: [] for setup in SETUPS}
    stores = {}
    svis = {}
    for setup in SETUPS:
        pyro.clear_param_store()
        svis[setup] = make(setup, args.particles, data)
        stores[setup] = pyro.get_param_store().get_state()
    for _ in range(args.rounds):  # interleaved: each round times every setup once
        for setup, svi in svis.items():
            pyro.get_param_store().set_state(stores[setup])
            start = time.perf_counter()
            for _ in range(args.steps):
                svi.step(data)
            times[setup].append((time.perf_counter() - start) / args.steps * 1000)
            stores[setup] = pyro.get_param_store().get_state()
    reference = statistics.median(times["TraceGraph_ELBO (Pyro, looped)"])
    rows = [
        {
            "setup": setup,
            "ms per step (median)": round(statistics.median(ts), 2),
            "min": round(min(ts), 2),
            "max": round(max(ts), 2),
            "ratio to TraceGraph_ELBO": round(statistics.median(ts) / reference, 2),
        }
        for setup, ts in times.items()
    ]
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "air_vectorized.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# AIR with an LSTM cell: vectorized particles through `broadcastable`",
        "",
        "The AIR-like model of `examples/air.py` (20x20 canvases, 3 steps, batch {}) with Pyro AIR's "
        "recurrent cell, an `nn.LSTMCell`, {} particles; ms per `SVI` step, {} rounds of {} steps "
        "interleaved in one run on 2 CPU threads. Vectorized, the unwrapped cell is refused: *{}*.".format(
            args.batch, args.particles, args.rounds, args.steps, refused or "(it ran)"
        ),
        "",
        "| setup | ms per step (median) | min | max | ratio to TraceGraph_ELBO |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            "| {} | {} | {} | {} | {} |".format(
                r["setup"], r["ms per step (median)"], r["min"], r["max"], r["ratio to TraceGraph_ELBO"]
            )
        )
    with open(os.path.join(RESULTS, "air_vectorized.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

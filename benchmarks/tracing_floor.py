# SPDX-License-Identifier: Apache-2.0
"""
The floor under every Pyro ELBO's step on the tutorial VAE: forward passes only
(no gradients), interleaved, median of rounds, of

* the networks and the categorical sampler in plain PyTorch (encode, draw 10
  samples per data point, decode);
* the same run through Pyro: ``poutine.trace`` of the guide and of the model
  replayed against it, with the particle plate, as every ELBO does before it
  computes anything;
* the hand-written leave-one-out loss (``handwritten.py``);
* ``TraceScoreELBO(loo)``'s loss and surrogate (tracing included).

The difference between the first two is what Pyro's effect handlers cost per
step whatever the estimator; the difference between the last two is that
plus the estimator's own work::

    python benchmarks/tracing_floor.py [--batch 64] [--particles 10]

Writes ``benchmarks/results/tracing_floor_b<batch>.{csv,md}``; restarts with the
malloc tuning of ``run_benchmarks.py`` unless ``--default-malloc``.
"""

import argparse
import os
import statistics
import sys

import pyro
import torch
from pyro import poutine

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from pyro_discrete import TraceScoreELBO  # noqa: E402

from bench_common import (  # noqa: E402
    DiscreteVAE,
    benchmark_data,
    malloc_label,
    restart_with_malloc_tuning,
    time_interleaved,
    write_table,
)
from handwritten import _sample_onehot, score_loss  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--default-malloc", action="store_true")
    args = parser.parse_args()
    if not args.default_malloc:
        restart_with_malloc_tuning()
    pyro.enable_validation(False)
    data, _ = benchmark_data(args.batch)
    x = data[: args.batch]
    torch.manual_seed(0)
    vae = DiscreteVAE(2)
    S = args.particles
    elbo = TraceScoreELBO(num_particles=S, baseline="loo", max_plate_nesting=1)

    def plain():
        z = _sample_onehot(vae.encode(x), S)
        vae.decode(z)

    def traced():
        model, guide = elbo._vectorized_num_particles(vae.model), elbo._vectorized_num_particles(vae.guide)
        guide_trace = poutine.trace(guide).get_trace(x)
        poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)

    def hand_loss():
        score_loss(vae, x, S, "loo")

    def ours():
        elbo._loss_and_surrogate(vae.model, vae.guide, (x,), {}, False)

    steps = {
        "networks + sampler, plain PyTorch": plain,
        "the same traced by Pyro": traced,
        "hand-written loo loss": hand_loss,
        "TraceScoreELBO(loo) loss and surrogate": ours,
    }
    with torch.no_grad():
        times = time_interleaved(steps, warmup=10, rounds=args.rounds, steps_per_round=10)
    rows = []
    for name, ts in times.items():
        rows.append(
            {
                "forward pass": name,
                "ms": statistics.median(ts),
                "batch": args.batch,
                "particles": S,
                "malloc": malloc_label(),
            }
        )
        print("{:<42} {:7.3f} ms".format(name, rows[-1]["ms"]), flush=True)
    print("wrote", *write_table(rows, "tracing_floor_b{}".format(args.batch), list(rows[0])))


if __name__ == "__main__":
    main()

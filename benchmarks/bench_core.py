# SPDX-License-Identifier: Apache-2.0
"""
ms per SVI step on the Storchastic tutorial's discrete VAE (2x10 latents,
784-512-256 encoder, mirrored decoder, batch 64): TraceScoreELBO with a
leave-one-out baseline, Pyro's Trace_ELBO with the same particles (no baseline),
and a hand-written PyTorch step of the same estimator, timed in one run.

    python benchmarks/bench_core.py [--particles 10] [--batch-size 64]

Writes benchmarks/results/core_step.{csv,md}.
"""

import argparse
import copy
import itertools
import os
import platform
import sys

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DiscreteVAE, benchmark_data, handwritten_score_step, median, time_interleaved, write_table  # noqa

from pyro_discrete import TraceScoreELBO  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--validation", action="store_true", help="keep Pyro's validation on")
    args = parser.parse_args()

    pyro.enable_validation(args.validation)
    torch.manual_seed(0)
    data, source = benchmark_data(args.batch_size * 20)
    batches = itertools.cycle(data.split(args.batch_size))
    S = args.particles

    base = DiscreteVAE()
    contenders = {}

    hand = copy.deepcopy(base)
    hand_opt = torch.optim.Adam(hand.parameters(), lr=1e-3)
    contenders["hand-written PyTorch RLOO"] = lambda: handwritten_score_step(hand, hand_opt, next(batches), S)

    def svi_step(elbo, name):
        vae = copy.deepcopy(base)
        vae.name = name
        svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), loss=elbo)
        return lambda: svi.step(next(batches))

    def loop_step(elbo, name):
        # the same estimator in a plain PyTorch loop: differentiable_loss + torch.optim.Adam
        vae = copy.deepcopy(base)
        vae.name = name
        optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad()
            elbo.differentiable_loss(vae.model, vae.guide, next(batches)).backward()
            optimizer.step()

        return step

    contenders["TraceScoreELBO(loo), SVI"] = svi_step(
        TraceScoreELBO(num_particles=S, baseline="loo", max_plate_nesting=1), "score")
    contenders["pyro Trace_ELBO (no baseline), SVI"] = svi_step(
        Trace_ELBO(num_particles=S, vectorize_particles=True, max_plate_nesting=1), "trace")
    contenders["TraceScoreELBO(loo), torch loop"] = loop_step(
        TraceScoreELBO(num_particles=S, baseline="loo", max_plate_nesting=1), "score_loop")
    contenders["pyro Trace_ELBO (no baseline), torch loop"] = loop_step(
        Trace_ELBO(num_particles=S, vectorize_particles=True, max_plate_nesting=1), "trace_loop")

    times = time_interleaved(contenders, rounds=args.rounds, steps_per_round=args.steps)
    ref = median(times["hand-written PyTorch RLOO"])
    rows = []
    for name, ts in times.items():
        rows.append({
            "estimator": name,
            "particles": S,
            "batch": args.batch_size,
            "ms/step (median of rounds)": median(ts),
            "min ms/step": min(ts),
            "ratio to hand-written": median(ts) / ref,
        })
    columns = list(rows[0])
    csv_path, md_path = write_table(rows, "core_step", columns)
    print("data: {}; torch {} on {} threads; {}".format(
        source, torch.__version__, torch.get_num_threads(), platform.processor() or platform.machine()))
    print(open(md_path).read())
    print("wrote", csv_path, md_path)


if __name__ == "__main__":
    main()

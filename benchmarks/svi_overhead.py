# SPDX-License-Identifier: Apache-2.0
"""
What ``pyro.infer.SVI.step`` adds to an estimator's step, part by part, on the
tutorial VAE (2x10 latents, 10 particles): the same ELBO run

* through ``elbo.loss_and_grads`` + ``torch.optim.Adam`` (``zero_grad()`` frees
  the gradients),
* + the parameter-capturing trace SVI runs around it,
* + ``pyro.optim.Adam`` (one torch optimizer per parameter),
* + ``pyro.infer.util.zero_grads`` (a new zero tensor per gradient, which
  the next backward adds into),
* all three, and ``SVI.step`` itself, and ``SVI.step`` with ``zero_grads``
  replaced for the measurement by one that sets ``.grad = None`` (what a fix
  in Pyro would give; the package never patches Pyro),

next to the hand-written step. Interleaved rounds, median::

    python benchmarks/svi_overhead.py [--batch 64] [--elbo loo|vargrad|trace]

Writes ``benchmarks/results/svi_overhead_b<batch>[_default_malloc].{csv,md}``. Restarts itself
with the malloc tuning of ``run_benchmarks.py`` unless ``--default-malloc``.
"""

import argparse
import copy
import itertools
import os
import statistics
import sys

import pyro
import pyro.infer.util
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from pyro_discrete import TraceScoreELBO, VarGradELBO  # noqa: E402

from bench_common import (  # noqa: E402
    DiscreteVAE,
    benchmark_data,
    malloc_label,
    malloc_tuned,
    restart_with_malloc_tuning,
    time_interleaved,
    write_table,
)
from handwritten import make_step  # noqa: E402

ELBOS = {
    "loo": (lambda s: TraceScoreELBO(num_particles=s, baseline="loo", max_plate_nesting=1), "loo"),
    "vargrad": (lambda s: VarGradELBO(num_particles=s, max_plate_nesting=1), "vargrad"),
    "trace": (lambda s: Trace_ELBO(num_particles=s, vectorize_particles=True, max_plate_nesting=1), "score"),
}


def _grads_to_none(tensors):
    for p in tensors:
        p.grad = None


def contenders(base, make_elbo, hand_name, num_particles, batches):
    def variant(name, capture=False, pyro_optim=False, zeros=False):
        vae = copy.deepcopy(base)
        vae.name = name
        elbo = make_elbo(num_particles)
        params = list(vae.parameters())
        torch_optim = torch.optim.Adam(params, lr=1e-3)
        pyro_adam = Adam({"lr": 1e-3})

        def step():
            if not zeros:
                torch_optim.zero_grad()
            if capture:
                with poutine.trace(param_only=True) as param_capture:
                    elbo.loss_and_grads(vae.model, vae.guide, next(batches))
                stepped = set(site["value"].unconstrained() for site in param_capture.trace.nodes.values())
            else:
                elbo.loss_and_grads(vae.model, vae.guide, next(batches))
                stepped = params
            if pyro_optim:
                pyro_adam(stepped)
            else:
                torch_optim.step()
            if zeros:
                pyro.infer.util.zero_grads(stepped)

        return step

    def svi(name, grads_to_none=False):
        vae = copy.deepcopy(base)
        vae.name = name
        svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), loss=make_elbo(num_particles))
        if not grads_to_none:
            return lambda: svi.step(next(batches))

        def step():
            original = pyro.infer.util.zero_grads
            pyro.infer.util.zero_grads = _grads_to_none
            try:
                svi.step(next(batches))
            finally:
                pyro.infer.util.zero_grads = original

        return step

    hand = make_step(hand_name, copy.deepcopy(base))
    return {
        "hand-written": lambda: hand(next(batches), num_particles),
        "loss_and_grads + torch Adam": variant("a"),
        "+ parameter capture": variant("b", capture=True),
        "+ pyro.optim.Adam": variant("c", pyro_optim=True),
        "+ zero_grads": variant("d", zeros=True),
        "+ all three": variant("e", capture=True, pyro_optim=True, zeros=True),
        "SVI.step": svi("f"),
        "SVI.step, zero_grads setting None": svi("g", grads_to_none=True),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--elbo", default="loo", choices=sorted(ELBOS))
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--default-malloc", action="store_true")
    args = parser.parse_args()
    if not args.default_malloc:
        restart_with_malloc_tuning()
    pyro.enable_validation(False)
    data, source = benchmark_data(args.batch * 4)
    batches = itertools.cycle(list(data[: args.batch * 4].split(args.batch)))
    torch.manual_seed(0)
    make_elbo, hand_name = ELBOS[args.elbo]
    steps = contenders(DiscreteVAE(2), make_elbo, hand_name, args.particles, batches)
    per_round = max(1, 320 // args.batch)
    times = time_interleaved(steps, warmup=3, rounds=args.rounds, steps_per_round=per_round)
    hand = statistics.median(times["hand-written"])
    rows = []
    for name, ts in times.items():
        ms = statistics.median(ts)
        rows.append(
            {
                "step": name,
                "ms/step": ms,
                "ratio to hand-written": ms / hand,
                "elbo": args.elbo,
                "batch": args.batch,
                "particles": args.particles,
                "malloc": malloc_label(),
            }
        )
        print("{:<36} {:8.2f} ms  {:.3f}".format(name, ms, ms / hand), flush=True)
    name = "svi_overhead_b{}{}".format(args.batch, "" if malloc_tuned() else "_default_malloc")
    print("wrote", *write_table(rows, name, list(rows[0])))


if __name__ == "__main__":
    main()

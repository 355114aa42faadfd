# SPDX-License-Identifier: Apache-2.0
"""
Peak memory of one ``SVI`` step against the number of particles, for every
registered estimator (issue: the expensive estimators near their floor --
memory linear in the particles). Each estimator runs at 4, 8, 16 and 32
particles (``num_particles``; for the replaying ones the particles whose
replays they add) on the 2x10 tutorial VAE (batch 64) for the categorical
estimators and a 20-Bernoulli VAE (batch 64) for the Bernoulli-only ones; the
peak is the benchmark suite's tensor accounting
(:func:`run_benchmarks.memory_use`). The growth exponent is the slope of
log(peak - what the model holds without a step) against log(particles)
between 8 and 32 particles: 1 is linear, 2 quadratic.

Writes ``benchmarks/results/memory_scaling.{csv,md}``::

    python benchmarks/memory_scaling.py
    python benchmarks/memory_scaling.py --estimators rodeo,carms
"""

import argparse
import csv
import math
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI  # noqa: E402
from pyro.optim import Adam  # noqa: E402

from pyro_discrete.errors import EstimatorError  # noqa: E402
from pyro_discrete.registry import REGISTRY  # noqa: E402

from bench_common import RESULTS, BernoulliVAE, DiscreteVAE, benchmark_data, write_table  # noqa: E402
from run_benchmarks import memory_use  # noqa: E402

PARTICLES = (4, 8, 16, 32)

#: the estimators whose method works on every pair of particles, and what they do past their memory limit
QUADRATIC = {
    "rodeo": "its control network at every pair of particles (a few numbers a pair); refused past max_pair_bytes",
    "carms": "a weight for every pair of particles and latent; refused past max_pair_bytes",
}


def _peak(name, particles, data):
    entry = REGISTRY[name]
    bernoulli_only = "onehot" not in entry.site_kinds

    def build():
        torch.manual_seed(0)
        pyro.clear_param_store()
        vae = BernoulliVAE(20) if bernoulli_only else DiscreteVAE(2, 10)
        elbo = entry.make(num_particles=particles, max_plate_nesting=1)
        svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), loss=elbo)
        return lambda: svi.step(data)

    peak, step = memory_use(build, torch.device("cpu"))
    return peak / 2**20, step / 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [n for n, e in REGISTRY.items() if not e.exact]
    parser.add_argument("--estimators", default=",".join(names))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    data, source = benchmark_data()
    data = data[:64]
    rows = []
    for name in args.estimators.split(","):
        row = {"estimator": name, "model": "20-Bernoulli" if "onehot" not in REGISTRY[name].site_kinds else "2x10"}
        steps = {}
        for n in PARTICLES:
            try:
                peak, step = _peak(name, n, data)
            except EstimatorError as e:
                row["refused at {}".format(n)] = e.requirement
                peak = step = math.nan
            row["peak MB at {}".format(n)] = peak
            steps[n] = step
        a, b = steps[PARTICLES[1]], steps[PARTICLES[-1]]
        row["growth exponent"] = (
            math.log(b / a) / math.log(PARTICLES[-1] / PARTICLES[1]) if a > 0 and b > 0 else math.nan
        )
        rows.append(row)
        print(
            "{:>15}: {} MB, exponent {:.2f}".format(
                name,
                " / ".join("{:.1f}".format(row["peak MB at {}".format(n)]) for n in PARTICLES),
                row["growth exponent"],
            ),
            flush=True,
        )
    columns = ["estimator", "model"] + ["peak MB at {}".format(n) for n in PARTICLES] + ["growth exponent"]
    path = os.path.join(RESULTS, "memory_scaling.csv")
    if os.path.exists(path):  # a run for some estimators keeps the others' rows, in registry order
        with open(path) as f:
            kept = {r["estimator"]: r for r in csv.DictReader(f)}
        for r in kept.values():
            for c in columns[2:]:
                r[c] = float(r[c])
        kept.update({r["estimator"]: r for r in rows})
        rows = [kept[n] for n in REGISTRY if n in kept]
    for r in rows:
        r["quadratic by construction"] = QUADRATIC.get(r["estimator"], "")
    columns.append("quadratic by construction")
    preamble = [
        "# Peak memory against particles",
        "",
        "Data: {}, batch 64; peak tensor memory of one SVI step (MB), each estimator with its registered options "
        "and `num_particles` as in the header. Growth exponent: slope of log(memory the step adds) against "
        "log(particles) from {} to {} (1: linear; 2: quadratic). Rows of one run were measured together "
        "(`python benchmarks/memory_scaling.py`; `--estimators` re-measures some and keeps the others).".format(
            source, PARTICLES[1], PARTICLES[-1]
        ),
        "",
    ]
    _, md = write_table(rows, "memory_scaling", columns, preamble)
    print("wrote", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

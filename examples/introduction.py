# SPDX-License-Identifier: Apache-2.0
"""
The first example of the Storchastic tutorial, in Pyro: the variance of the
gradient of ``E[f]`` with respect to ``c`` for

    d = a + b,   e ~ Normal(b + c, 1),   f = d * e**2,   a = 5, b = -3, c = 0.23

under reparameterization (1 and 10 samples), the score function (1 and 45
samples, no baseline) and the score function with a leave-one-out baseline
(20 samples). The exact gradient is ``dE[f]/dc = 2 d (b + c) = -11.08``.

In Pyro the cost enters the model through ``pyro.factor("f", -f)`` and the
model's ``e`` has the guide's own density, so ``log p - log q`` vanishes for
every sample and ``-ELBO = E[f]``. The score-function rows use the same Normal
with ``has_rsample_(False)``. One difference from a bare REINFORCE: Pyro's
surrogate also differentiates the model's ``log p(e)`` directly (a term with
mean zero), which acts like a constant baseline of 1; the closed-form column
is for the estimator as Pyro computes it::

    python examples/introduction.py

Prints a table (``--out`` also writes it as Markdown).
"""

import argparse
import math
import os
import sys

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO

from pyro_discrete import TraceScoreELBO
from pyro_discrete.diagnostics import gradient_statistics

A, B, C0 = 5.0, -3.0, 0.23
D = A + B
MU = B + C0

# the Storchastic tutorial's printed variances, for comparison
TUTORIAL = {
    "reparameterization, 1": 16.73,
    "reparameterization, 10": 1.639,
    "score function, 1": 748.2,
    "score function, 45": 17.06,
    "leave-one-out, 20": 16.88,
}


def make(reparameterized):
    def mean():
        c = pyro.param("c", torch.tensor(C0))
        return torch.tensor(B) + c

    def guide():
        e = dist.Normal(mean(), 1.0)
        pyro.sample("e", e if reparameterized else e.has_rsample_(False))

    def model():
        e = pyro.sample("e", dist.Normal(mean(), 1.0))
        pyro.factor("f", -D * e**2)

    return model, guide


def closed_form_variance(kind, n):
    """Variance of the n-sample estimator, by Gauss-Hermite quadrature over e."""
    x, w = np.polynomial.hermite_e.hermegauss(60)
    w = w / w.sum()  # expectations under Normal(0, 1)
    e = MU + x
    if kind == "reparameterization":
        g = 2 * D * e  # df/de
    else:  # (e - mu) * f, and Pyro's extra d log p(e)/dc = (e - mu) with the opposite sign
        g = x * (D * e**2 - 1)
    return float((w * g**2).sum() - (w * g).sum() ** 2) / n


def main(argv=None):
    parser = argparse.ArgumentParser(description="Storchastic's introduction example in Pyro")
    parser.add_argument("--draws", type=int, default=10000)
    parser.add_argument("--out", default=None, help="directory for introduction.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pyro.set_rng_seed(args.seed)
    rows = [
        ("reparameterization", 1, Trace_ELBO(num_particles=1), True),
        ("reparameterization", 10, Trace_ELBO(num_particles=10, vectorize_particles=True), True),
        ("score function", 1, TraceScoreELBO(num_particles=1, baseline=None), False),
        ("score function", 45, TraceScoreELBO(num_particles=45, baseline=None), False),
        ("leave-one-out", 20, TraceScoreELBO(num_particles=20, baseline="loo"), False),
    ]
    exact = 2 * D * MU
    lines = [
        "| estimator | samples | mean of dE[f]/dc | variance | closed form | Storchastic tutorial |",
        "|---|---|---|---|---|---|",
    ]
    print("exact gradient dE[f]/dc = {:.4f}; {} draws per row".format(exact, args.draws))
    for name, n, elbo, reparameterized in rows:
        pyro.clear_param_store()
        model, guide = make(reparameterized)
        # 10 draws per pass: 1000 batch means for 10000 draws, variance to about 5%
        stats = gradient_statistics(
            elbo, model, guide, num_draws=args.draws, draws_per_batch=10, params=["c"], timing_repeats=0
        )
        closed = closed_form_variance(name, n) if name != "leave-one-out" else math.nan
        line = "| {} | {} | {:.3f} ± {:.3f} | {:.3f} | {} | {} |".format(
            name,
            n,
            stats.mean["c"].item(),
            math.sqrt(stats.variance["c"].item() / stats.num_draws),
            stats.variance["c"].item(),
            "–" if math.isnan(closed) else "{:.3f}".format(closed),
            TUTORIAL["{}, {}".format(name, n)],
        )
        lines.append(line)
    table = "\n".join(lines)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "introduction.md"), "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

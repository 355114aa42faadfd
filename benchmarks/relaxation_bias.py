# SPDX-License-Identifier: Apache-2.0
"""
The bias of the relaxation family -- Concrete, straight-through Gumbel-softmax,
ReinMax, Gumbel-Rao, gapped straight-through -- against the exact gradient (ExpectELBO), on small
models whose support can be enumerated, over temperatures. Per variant and
temperature: the relative bias :math:`\\|E[\\hat g] - g\\| / \\|g\\|` of the
guide's and of the model's parameters (with its standard error from the
draws), the cosine between the mean and the exact gradient, and the total
variance of one draw. Unbiased estimators are listed as a reference (their
relative bias is noise)::

    python benchmarks/relaxation_bias.py            # writes benchmarks/results/relaxation_bias.{csv,md}
"""

import argparse
import csv
import os
import sys
import time

import pyro
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from pyro_discrete import RelaxedConcreteELBO, TraceScoreELBO  # noqa: E402
from pyro_discrete.diagnostics import gradient_statistics  # noqa: E402

from common import init_params, make_family  # noqa: E402

RESULTS = os.path.join(HERE, "results")
GUIDE_PARAMS = ("encoder", "q_logits", "b_logits")

VARIANTS = {
    "concrete": lambda t: RelaxedConcreteELBO(num_particles=4, temperature=t),
    "straight-through": lambda t: RelaxedConcreteELBO(num_particles=4, temperature=t, straight_through=True),
    "reinmax": lambda t: RelaxedConcreteELBO(num_particles=4, temperature=t, straight_through="reinmax"),
    "gumbel-rao (K=10)": lambda t: RelaxedConcreteELBO(
        num_particles=4, temperature=t, straight_through="gumbel_rao", num_rao_samples=10
    ),
    "gst (gap 1)": lambda t: RelaxedConcreteELBO(num_particles=4, temperature=t, straight_through="gapped", gap=1.0),
}
TEMPERATURES = {
    "concrete": (0.1, 0.5, 1.0),
    "straight-through": (0.1, 0.5, 1.0),
    "reinmax": (1.0, 1.3, 2.0),
    "gumbel-rao (K=10)": (0.1, 0.5, 1.0),
    "gst (gap 1)": (0.1, 0.5, 1.0),
}


def _relative(mean, exact, names):
    m = torch.cat([mean[n].flatten() for n in names])
    e = torch.cat([exact[n].flatten() for n in names])
    return ((m - e).norm() / e.norm()).item(), torch.nn.functional.cosine_similarity(m, e, dim=0).item()


def measure(family_name, label, elbo, num_draws):
    family = make_family(family_name)
    init_params(family)
    pyro.set_rng_seed(0)
    stats = gradient_statistics(
        elbo, family.model, family.guide, *family.args, num_draws=num_draws, reference="exact", timing_repeats=0
    )
    names = list(stats.mean)
    guide = [n for n in names if any(k in n for k in GUIDE_PARAMS)]
    model = [n for n in names if n not in guide]
    bias, cosine = _relative(stats.mean, stats.reference, names)
    guide_bias, _ = _relative(stats.mean, stats.reference, guide)
    model_bias, _ = _relative(stats.mean, stats.reference, model) if model else (float("nan"), 0.0)
    se = torch.cat([(stats.variance[n] / stats.num_draws).sqrt().flatten() for n in names])
    exact = torch.cat([stats.reference[n].flatten() for n in names])
    return {
        "model": family_name,
        "estimator": label,
        "relative bias": bias,
        "its standard error": (se.norm() / exact.norm()).item(),
        "guide params": guide_bias,
        "model params": model_bias,
        "cosine": cosine,
        "variance": stats.total_variance,
        "bias z": stats.bias_z,
        "draws": stats.num_draws,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    start = time.time()
    rows = []
    for family_name in ("amortized_vae", "to_event_onehot", "bernoulli_vector"):
        for label, make in VARIANTS.items():
            for t in TEMPERATURES[label]:
                row = measure(family_name, "{} τ={}".format(label, t), make(t), args.draws)
                rows.append(row)
                print(
                    "{:<16} {:<28} relative bias {:.3f} (se {:.3f})  cosine {:.3f}".format(
                        family_name, row["estimator"], row["relative bias"], row["its standard error"], row["cosine"]
                    ),
                    flush=True,
                )
        row = measure(family_name, "leave-one-out (unbiased)", TraceScoreELBO(num_particles=4), args.draws)
        rows.append(row)
    os.makedirs(args.out, exist_ok=True)
    columns = list(rows[0])
    with open(os.path.join(args.out, "relaxation_bias.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Bias of the relaxations against the exact gradient",
        "",
        "Relative bias = |mean of {} draws - exact| / |exact| over every parameter (and over the guide's and the "
        "model's separately), 4 particles per draw, at the models' initial parameters (`tests/common.py`). "
        "`python benchmarks/relaxation_bias.py`, {:.0f} s.".format(args.draws, time.time() - start),
        "",
        "| model | estimator | relative bias | its standard error | guide params | model params | cosine | variance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            "| {} | {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3g} |".format(
                r["model"],
                r["estimator"],
                r["relative bias"],
                r["its standard error"],
                r["guide params"],
                r["model params"],
                r["cosine"],
                r["variance"],
            )
        )
    with open(os.path.join(args.out, "relaxation_bias.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", os.path.join(args.out, "relaxation_bias.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

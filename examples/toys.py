# SPDX-License-Identifier: Apache-2.0
"""
Toy problems with exact gradients, where estimators can be told apart:

* REBAR's toy [1]: minimize ``E[(b - t)^2]``, ``b ~ Bernoulli(sigmoid(theta))``,
  ``t = 0.499`` (and 0.45), at ``theta = 0``; the exact gradient is
  ``(1 - 2t) sigma(theta) (1 - sigma(theta))``, tiny next to the cost.
* ARSM's toy [2]: ``E[f(z)]``, ``z ~ Categorical(softmax(phi))`` over ``C = 30``
  categories, ``f(z) = 0.5 + (z + 1) / (C R)``, ``R = 30``, at ``phi = 0``; the
  rewards differ so little that plain REINFORCE is swamped.

For each estimator and a range of model (f) evaluations per gradient draw,
the variance of the gradient and its squared bias against the exact gradient
(``ExpectELBO``), measured with :func:`pyro_discrete.diagnostics.gradient_statistics`::

    python examples/toys.py            # writes results/toys/toys.{md,csv,png}

Each toy is written as a Pyro model whose prior is the guide's own
distribution with the parameter detached, plus ``pyro.factor("f", -f)``: then
``log q - log p = 0`` for every sample and ``-ELBO = E[f]``.

**References**

[1] G. Tucker, A. Mnih, C. J. Maddison, D. Lawson, J. Sohl-Dickstein,
    `REBAR: Low-variance, unbiased gradient estimates for discrete latent variable models` (NeurIPS 2017)

[2] M. Yin, Y. Yue, M. Zhou, `ARSM: Augment-REINFORCE-Swap-Merge Estimator for
    Gradient Backpropagation Through Categorical Variables` (ICML 2019)
"""

import argparse
import csv
import os
import sys

import pyro
import pyro.distributions as dist
import torch

from pyro_discrete import ARSMELBO, RelaxedConcreteELBO, TraceScoreELBO, VarGradELBO
from pyro_discrete.diagnostics import gradient_statistics


def rebar_toy(t):
    def model():
        theta = pyro.param("theta", torch.tensor(0.0)).detach()
        b = pyro.sample("b", dist.Bernoulli(logits=theta))
        pyro.factor("f", -((b - t) ** 2))

    def guide():
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("theta", torch.tensor(0.0))))

    return model, guide, 2  # 2 values, ARSM/DisARM: 2 evaluations per sample


def arsm_toy(categories=30, reward_scale=30):
    def f(z):  # z one-hot; linear in z, so also defined for relaxed samples
        return 0.5 + (z @ torch.arange(1.0, categories + 1)) / (categories * reward_scale)

    def model():
        phi = pyro.param("theta", torch.zeros(categories)).detach()
        z = pyro.sample("z", dist.OneHotCategorical(logits=phi))
        pyro.factor("f", -f(z))

    def guide():
        pyro.sample("z", dist.OneHotCategorical(logits=pyro.param("theta", torch.zeros(categories))))

    return model, guide, categories * (categories - 1) // 2 + 1


def estimators(evaluations, arsm_cost):
    """``(name, elbo)`` for the estimators that use ``evaluations`` f evaluations per draw."""
    out = []
    if evaluations >= 1:
        out.append(("score function", TraceScoreELBO(num_particles=evaluations, baseline=None)))
        out.append(("concrete (λ=0.5)", RelaxedConcreteELBO(num_particles=evaluations, temperature=0.5)))
    if evaluations >= 2:
        out.append(("leave-one-out", TraceScoreELBO(num_particles=evaluations, baseline="loo")))
        out.append(("VarGrad", VarGradELBO(num_particles=evaluations)))
    if evaluations % arsm_cost == 0:
        name = "DisARM" if arsm_cost == 2 else "ARSM"
        out.append((name, ARSMELBO(num_particles=evaluations // arsm_cost)))
        if arsm_cost == 2:
            out.append(("ARM", ARSMELBO(num_particles=evaluations // arsm_cost, binary="arm")))
    return out


def run(num_draws, grid, progress=print):
    rows = []
    toys = [("REBAR t=0.499", rebar_toy(0.499)), ("REBAR t=0.45", rebar_toy(0.45)), ("ARSM C=R=30", arsm_toy())]
    for toy, (model, guide, arsm_cost) in toys:
        counts = sorted(set(grid) | {arsm_cost, 2 * arsm_cost})
        for n in counts:
            for name, elbo in estimators(n, arsm_cost):
                pyro.clear_param_store()
                stats = gradient_statistics(
                    elbo, model, guide, num_draws=num_draws, reference="exact", timing_repeats=0
                )
                rows.append(
                    {
                        "toy": toy,
                        "estimator": name,
                        "evaluations": n,
                        "variance": stats.total_variance,
                        "squared_bias": stats.total_squared_bias,
                        "mse": stats.total_mse,
                        "bias_z": stats.bias_z,
                        "exact_gradient_norm": sum(g.pow(2).sum() for g in stats.reference.values()).sqrt().item(),
                    }
                )
                progress(
                    "{:>14} {:>17} {:5d} evals: variance {:.3g}  squared bias {:.3g}".format(
                        toy, name, n, stats.total_variance, stats.total_squared_bias
                    )
                )
    return rows


def write(rows, out):
    os.makedirs(out, exist_ok=True)
    cols = ["toy", "estimator", "evaluations", "variance", "squared_bias", "mse", "bias_z", "exact_gradient_norm"]
    with open(os.path.join(out, "toys.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out, "toys.md"), "w") as f:
        f.write("| " + " | ".join(cols[:7]) + " |\n|" + "---|" * 7 + "\n")
        for r in rows:
            f.write(
                "| {toy} | {estimator} | {evaluations} | {variance:.3g} | {squared_bias:.3g} | {mse:.3g} | "
                "{bias_z:.1f} |\n".format(**r)
            )
    files = [os.path.join(out, "toys.csv"), os.path.join(out, "toys.md")]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return files
    toys = list(dict.fromkeys(r["toy"] for r in rows))
    fig, axes = plt.subplots(1, len(toys), figsize=(5 * len(toys), 4))
    for ax, toy in zip(axes, toys):
        for name in dict.fromkeys(r["estimator"] for r in rows if r["toy"] == toy):
            rs = [r for r in rows if r["toy"] == toy and r["estimator"] == name]
            ax.plot([r["evaluations"] for r in rs], [max(r["variance"], 1e-20) for r in rs], "o-", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("f evaluations per gradient")
        ax.set_ylabel("gradient variance")
        ax.set_title("{} (|exact grad| {:.2g})".format(toy, rs[0]["exact_gradient_norm"]), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    files.append(os.path.join(out, "toys.png"))
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description="REBAR's and ARSM's toys: gradient variance vs evaluations")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--grid", default="2,8,32,128,512", help="f evaluations per gradient draw")
    parser.add_argument("--out", default="results/toys")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pyro.set_rng_seed(args.seed)
    rows = run(args.draws, [int(x) for x in args.grid.split(",")])
    files = write(rows, args.out)
    print("wrote", ", ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: Apache-2.0
"""
REBAR's toy problem (Tucker et al. 2017; Grathwohl et al. 2018):
minimize :math:`E_{b\\sim\\text{Bernoulli}(\\sigma(\\theta))}[(b - 0.499)^2]`. The two
outcomes differ by 0.002 in cost, so the gradient is small and its estimates
are noisy; the control variate has to learn to cancel the noise.

Two measurements, each against leave-one-out, VarGrad and DisARM at about
the same number of model evaluations per step (REBAR makes 3 per particle:
the hard sample and the two relaxed ones):

* **control variate learning**: at fixed :math:`\\theta = 0`, REBAR's ``eta``
  and temperature (and RELAX's network on top of them) take Adam steps on the
  variance objective; the variance of one gradient draw is measured every
  ``--every`` steps;
* **training**: every estimator trains :math:`\\theta` from 0 with Adam
  (``--lr``) through :class:`~pyro.infer.SVI` (the control variates learn at
  the same time); the variance of one draw at the current parameters and the
  expected cost are recorded along the way.

Writes ``benchmarks/results/rebar_toy/{rebar_toy.csv, rebar_toy.md,
rebar_toy.png}``::

    python benchmarks/rebar_toy.py                 # about 2 minutes on 2 cores
"""

import argparse
import csv
import os
import sys
import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete import RELAXELBO
from pyro_discrete.diagnostics import gradient_statistics
from pyro_discrete.registry import REGISTRY

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_common import control_variate_step  # noqa: E402

RESULTS = os.path.join(HERE, "results", "rebar_toy")
TARGET = 0.499

#: (label, how to build it): about 3 model evaluations per step each, except DisARM (2, its smallest) and
#: REINFORCE without a baseline (1), the reference of the REBAR and RELAX papers' figure
ESTIMATORS = {
    "rebar (1 particle)": lambda: REGISTRY["rebar"].make(num_particles=1),
    "relax (rebar + network)": lambda: RELAXELBO(control_variate="rebar", network=_network()),
    "loo (3 particles)": lambda: REGISTRY["loo"].make(num_particles=3),
    "vargrad (3 particles)": lambda: REGISTRY["vargrad"].make(num_particles=3),
    "disarm (1 pair)": lambda: REGISTRY["arsm"].make(num_particles=1),
    "score (1 particle, no baseline)": lambda: REGISTRY["score"].make(num_particles=1),
}


def _network():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def model():
    # the prior is the guide at its current value (no gradient): its KL term has no gradient there, so
    # -ELBO's gradient is exactly that of E[(b - 0.499)^2]
    theta = pyro.param("theta", torch.tensor(0.0)).detach()
    b = pyro.sample("b", dist.Bernoulli(logits=theta))
    pyro.factor("cost", -((b - TARGET) ** 2))


def guide():
    pyro.sample("b", dist.Bernoulli(logits=pyro.param("theta", torch.tensor(0.0))))


def expected_cost(theta):
    p = torch.sigmoid(torch.as_tensor(theta))
    return (p * (1 - TARGET) ** 2 + (1 - p) * TARGET**2).item()


def variance(elbo, draws):
    """Variance of one draw of d(-ELBO)/d theta at the current parameters, and the evaluations per draw."""
    theta = pyro.param("theta").unconstrained()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = gradient_statistics(elbo, model, guide, num_draws=draws, params=[theta], timing_repeats=0)
    return stats.total_variance, stats.evaluations_per_draw


def _fresh(make):
    """A new estimator from ``make`` at theta = 0, with a clean param store and seed 0."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.param("theta", torch.tensor(0.0))
    return make()


def control_variate_learning(steps, every, draws, lr):
    rows = []
    for label, make in ESTIMATORS.items():
        elbo = _fresh(make)
        learn = control_variate_step(elbo, lr)
        for step in range(steps + 1):
            if step % every == 0:
                v, evaluations = variance(elbo, draws)
                rows.append(
                    {
                        "part": "control variate",
                        "estimator": label,
                        "step": step,
                        "variance": v,
                        "evaluations": evaluations,
                        "expected_cost": expected_cost(0.0),
                    }
                )
            if learn is not None:  # otherwise nothing learns: the variance stays where it is
                learn(model, guide, ())
        print(
            "control variate: {:<24} variance {:.3g} -> {:.3g}".format(
                label, rows[-(steps // every) - 1]["variance"], rows[-1]["variance"]
            ),
            flush=True,
        )
    return rows


def training(steps, every, draws, lr):
    rows = []
    for label, make in ESTIMATORS.items():
        elbo = _fresh(make)
        svi = SVI(model, guide, Adam({"lr": lr}), loss=elbo)
        for step in range(steps + 1):
            if step % every == 0:
                v, evaluations = variance(elbo, draws)
                theta = pyro.param("theta").item()
                rows.append(
                    {
                        "part": "training",
                        "estimator": label,
                        "step": step,
                        "variance": v,
                        "evaluations": evaluations,
                        "expected_cost": expected_cost(theta),
                    }
                )
            if step < steps:
                svi.step()
        print(
            "training:        {:<24} theta {:+.3f}  expected cost {:.6f}  variance {:.3g}".format(
                label, pyro.param("theta").item(), rows[-1]["expected_cost"], rows[-1]["variance"]
            ),
            flush=True,
        )
    return rows


def write(rows, out, args):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "rebar_toy.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    optimum = expected_cost(-float("inf"))
    lines = [
        "# REBAR's toy problem: E[(b - 0.499)^2]",
        "",
        "`python benchmarks/rebar_toy.py` ({} draws per variance; control-variate steps at theta = 0 with Adam "
        "lr {}; training {} SVI steps with Adam lr {}). Variance of one draw of the gradient with respect to "
        "theta. The minimum expected cost is {:.6f} (theta -> -inf); at theta = 0 it is {:.6f}.".format(
            args.draws, args.cv_lr, args.steps, args.lr, optimum, expected_cost(0.0)
        ),
        "",
        "| estimator | evaluations per step | variance at start | variance after {} control-variate steps | "
        "variance after training | expected cost after training |".format(args.cv_steps),
        "|---|---|---|---|---|---|",
    ]
    for label in ESTIMATORS:
        cv = [r for r in rows if r["part"] == "control variate" and r["estimator"] == label]
        tr = [r for r in rows if r["part"] == "training" and r["estimator"] == label]
        lines.append(
            "| {} | {:.0f} | {:.3g} | {:.3g} | {:.3g} | {:.6f} |".format(
                label,
                cv[0]["evaluations"],
                cv[0]["variance"],
                cv[-1]["variance"],
                tr[-1]["variance"],
                tr[-1]["expected_cost"],
            )
        )
    with open(os.path.join(out, "rebar_toy.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label in ESTIMATORS:
        cv = [r for r in rows if r["part"] == "control variate" and r["estimator"] == label]
        tr = [r for r in rows if r["part"] == "training" and r["estimator"] == label]
        axes[0].plot([r["step"] for r in cv], [r["variance"] for r in cv], "o-", ms=3, label=label)
        axes[1].plot([r["step"] for r in tr], [r["variance"] for r in tr], "o-", ms=3, label=label)
        axes[2].plot([r["step"] for r in tr], [r["expected_cost"] - optimum for r in tr], "-", label=label)
    axes[0].set_title("at theta = 0, as the control variate learns")
    axes[0].set_xlabel("control-variate steps")
    axes[1].set_title("while training theta")
    axes[2].set_title("expected cost above the minimum")
    for ax in axes[:2]:
        ax.set_ylabel("variance of d(-ELBO)/d theta")
        ax.set_yscale("log")
    axes[1].set_xlabel("SVI steps")
    axes[2].set_xlabel("SVI steps")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "rebar_toy.png"), dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cv-steps", type=int, default=300, help="control-variate steps at theta = 0")
    parser.add_argument("--cv-lr", type=float, default=0.01, help="Adam's learning rate for the control variate")
    parser.add_argument("--steps", type=int, default=2000, help="SVI steps of the training part")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate for training")
    parser.add_argument("--every", type=int, default=25, help="measure every this many steps")
    parser.add_argument("--draws", type=int, default=1000, help="gradient draws per variance")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(False)
    rows = control_variate_learning(args.cv_steps, args.every, args.draws, args.cv_lr)
    rows += training(args.steps, max(args.every, args.steps // 40), args.draws, args.lr)
    write(rows, args.out, args)
    print("wrote", os.path.join(args.out, "rebar_toy.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

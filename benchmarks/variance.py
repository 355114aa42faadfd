# SPDX-License-Identifier: Apache-2.0
"""
Gradient variance at equal model evaluations, for every registered estimator
(the registry's ``make_for_evaluations``), on:

* ``vae2x10``: the Storchastic tutorial's VAE (784-512-256, 2 x 10 one-hot latents) on binarized MNIST
  (``../shared/data``; synthetic images without it), after 300 steps of leave-one-out training;
  the exact gradient (ExpectELBO, 100 joint values) gives the squared bias;
* ``vae20x10``: the same with 20 x 10 latents (the ARSM / unordered-set protocol's size; no exact gradient);
* ``bernoulli200``: 200 Bernoulli latents, 784-200-200 LeakyReLU(0.3) nets (DisARM / RODEO);
* ``rebar_toy``: E[(b - 0.499)^2], b ~ Bernoulli(sigmoid(theta)) (REBAR / RELAX), at theta = 0;
* ``arsm_toy``: E[0.5 + (z + 1) / (C R)], z ~ Categorical(softmax(theta)), C = R = 30 (ARSM), at theta = 0.

Per estimator and budget: the variance of one draw of the encoder's gradient
(the guide's, for the toys) per data point, its squared bias where the exact
gradient is known, the model evaluations per step it actually made, and ms
per step. Estimators that do not take a setting's sites are left out; those
whose cost has no knob run at their own cost (shown). Estimators with state
are warmed up at the measured parameters first: moving averages filled, and
learned control variates (RELAX, RODEO) trained for 200 steps. The sampling-without-replacement
estimators run at budgets up to ``SET_BUDGET_MAX`` values: their inclusion ratios cost a numerical
integral of ``k**2`` terms per data point (k = 46 on ``vae2x10`` took more than 10 minutes for 200
draws on 2 cores, against about a minute for the other estimators)::

    python benchmarks/variance.py                                      # every setting
    python benchmarks/variance.py --settings rebar_toy,arsm_toy --draws 5000

Writes ``benchmarks/results/variance/variance.{csv,md,png}``.
"""

import argparse
import csv
import math
import os
import sys
import time
import warnings

import pyro
import pyro.distributions as dist
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from pyro_discrete import ExpectELBO, TraceScoreELBO  # noqa: E402
from pyro_discrete.diagnostics import gradient_statistics  # noqa: E402
from pyro_discrete.registry import REGISTRY  # noqa: E402

from bench_common import BernoulliVAE, DiscreteVAE, benchmark_data, control_variate_step  # noqa: E402

RESULTS = os.path.join(HERE, "results", "variance")

#: setting -> (budgets of model evaluations per step, categories, latents, site kind)
SETTINGS = {
    "vae2x10": ((4, 20, 46), 10, 2, "onehot"),
    "vae20x10": ((4, 46), 10, 20, "onehot"),
    "bernoulli200": ((2, 4), 2, 200, "bernoulli"),
    "rebar_toy": ((2, 4, 10), 2, 1, "bernoulli"),
    "arsm_toy": ((30, 436), 30, 1, "categorical"),
}

#: the largest set size of the sampling-without-replacement estimators (see the docstring)
SET_BUDGET_MAX = 20

#: gradient draws per measurement, by default (the VAE settings' draws cost a training step each)
DRAWS = {"vae2x10": 200, "vae20x10": 100, "bernoulli200": 200, "rebar_toy": 2000, "arsm_toy": 2000}


def rebar_toy():
    def model():
        theta = pyro.param("theta", torch.tensor(0.0)).detach()
        b = pyro.sample("b", dist.Bernoulli(logits=theta))
        pyro.factor("f", -((b - 0.499) ** 2))

    def guide():
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("theta", torch.tensor(0.0))))

    return model, guide, (), ["theta"]


def arsm_toy(C=30, R=30):
    def model():
        theta = pyro.param("theta", torch.zeros(C)).detach()
        z = pyro.sample("z", dist.Categorical(logits=theta))
        pyro.factor("f", -(0.5 + (z.to(theta.dtype) + 1.0) / (C * R)))

    def guide():
        pyro.sample("z", dist.Categorical(logits=pyro.param("theta", torch.zeros(C))))

    return model, guide, (), ["theta"]


def vae_setting(name, batch=64):
    torch.manual_seed(0)
    if name == "bernoulli200":
        vae = BernoulliVAE(latents=200)
    else:
        vae = DiscreteVAE(latents=2 if name == "vae2x10" else 20)
    images, _ = benchmark_data(2048 + batch)
    # a short training with leave-one-out, so that the measurement is not at initialization
    optim = torch.optim.Adam(vae.parameters(), lr=1e-3)
    elbo = TraceScoreELBO(num_particles=4, max_plate_nesting=1)
    for step in range(300):
        optim.zero_grad()
        elbo.differentiable_loss(vae.model, vae.guide, images[(step * 64) % 2048 :][:64]).backward()
        optim.step()
    pyro.clear_param_store()
    held_out = images[2048 : 2048 + batch]
    params = list(vae.encoder.parameters())
    return vae.model, vae.guide, (held_out,), params


def warm_up(elbo, model, guide, args, steps=200):
    """
    A stateful estimator's state at these parameters: its moving averages filled, its control variates
    trained (Adam on their parameters only), before it is measured.
    """
    learn = control_variate_step(elbo, lr=1e-2)
    for _ in range(steps if learn is not None else 20):
        if learn is not None:
            learn(model, guide, args)
        else:  # moving averages only
            elbo._loss_and_surrogate(model, guide, args, {}, update=True)


def measure(setting, draws, names):
    budgets, C, K, kind = SETTINGS[setting]
    if setting == "rebar_toy":
        model, guide, args, params = rebar_toy()
    elif setting == "arsm_toy":
        model, guide, args, params = arsm_toy()
    else:
        model, guide, args, params = vae_setting(setting)
    exact = setting in ("vae2x10", "rebar_toy", "arsm_toy")
    reference = None
    if exact:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        probe = gradient_statistics(
            ExpectELBO(budget=200), model, guide, *args, num_draws=2, params=params, timing_repeats=0
        )
        reference = probe.mean
    scale = args[0].shape[0] ** 2 if args else 1  # per data point
    rows = []
    for budget in budgets:
        for name in names:
            entry = REGISTRY[name]
            if kind not in entry.site_kinds or entry.exact or entry.objective != "elbo":
                continue
            if entry.cost == "set" and budget > SET_BUDGET_MAX:
                continue
            elbo = entry.make_for_evaluations(budget, C, K)
            evaluations = entry.evaluations(elbo.num_particles, C, K)
            if entry.for_evaluations is None or evaluations > 1.5 * budget or evaluations < budget / 1.5:
                if budget != budgets[-1] or evaluations < budget:
                    continue  # no knob, or not near this budget: shown once, at its own cost
            pyro.clear_param_store()
            pyro.set_rng_seed(1)
            start = time.time()
            if entry.stateful:
                warm_up(elbo, model, guide, args)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stats = gradient_statistics(
                    elbo,
                    model,
                    guide,
                    *args,
                    num_draws=draws,
                    reference=reference,
                    params=params,
                    timing_repeats=3,
                )
            rows.append(
                {
                    "setting": setting,
                    "budget": budget,
                    "estimator": name,
                    "draws": draws,
                    "evaluations": stats.evaluations_per_draw,
                    "variance": stats.total_variance / scale,
                    "squared bias": stats.total_squared_bias / scale if exact else math.nan,
                    "bias z": stats.bias_z if exact else math.nan,
                    "ms per step": 1000 * stats.seconds_per_step,
                    "seconds": time.time() - start,
                }
            )
            r = rows[-1]
            print(
                "{:<13} {:>4} {:<16} evals {:>6.0f}  variance {:10.4g}  squared bias {:10.3g}  {:7.1f} ms".format(
                    setting, budget, name, r["evaluations"], r["variance"], r["squared bias"], r["ms per step"]
                ),
                flush=True,
            )
    return rows


def write(rows, out):
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "variance.csv")
    if os.path.exists(path):  # keep the (setting, estimator) rows not measured now
        measured = {(row["setting"], row["estimator"]) for row in rows}
        with open(path) as f:
            old = [r for r in csv.DictReader(f) if (r["setting"], r["estimator"]) not in measured]
        rows = [{k: _number(v) for k, v in r.items()} for r in old] + rows
        order = {name: i for i, name in enumerate(REGISTRY)}
        settings = {s: i for i, s in enumerate(SETTINGS)}
        rows.sort(key=lambda r: (settings.get(r["setting"], 99), order.get(r["estimator"], 99), float(r["budget"])))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Gradient variance at equal model evaluations",
        "",
        "Variance of one draw of the encoder's gradient (the guide parameter's for the toys), per data point; "
        "squared bias against the exact gradient where it is known (an unbiased estimator's is noise of order "
        "variance / draws). `python benchmarks/variance.py`; see its docstring for the settings. The "
        "sampling-without-replacement estimators (unordered, sum_and_sample) run at budgets up to {} only "
        "(their step's time grows faster than k's: `benchmarks/results/profile_estimators.md` has it per k).".format(
            SET_BUDGET_MAX
        ),
        "",
        "*ms per step* is one timing of three unbatched steps in the measuring process, and other jobs may have "
        "shared the cores: it is not a comparison of speed (`benchmarks/run_benchmarks.py` and "
        "`benchmarks/leaderboard.py` measure time per step). The variances and biases come from fixed seeds and "
        "one process per setting: rows of one setting are at the same parameters.",
    ]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        lines += [
            "",
            "### {} ({} draws per measurement)".format(
                setting, int(float(next(r for r in rows if r["setting"] == setting).get("draws") or 0))
            ),
            "",
            "| budget | estimator | evaluations per step | variance | squared bias | ms per step |",
            "|---|---|---|---|---|---|",
        ]
        for r in [r for r in rows if r["setting"] == setting]:
            lines.append(
                "| {} | {} | {:.0f} | {:.4g} | {} | {:.1f} |".format(
                    int(r["budget"]),
                    r["estimator"],
                    float(r["evaluations"]),
                    float(r["variance"]),
                    "–" if r["squared bias"] != r["squared bias"] else "{:.3g}".format(float(r["squared bias"])),
                    float(r["ms per step"]),
                )
            )
    with open(os.path.join(out, "variance.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(rows, os.path.join(out, "variance.png"))


def _number(value):
    try:
        return float(value)
    except ValueError:
        return value


def _plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    names = [n for n in REGISTRY if any(r["estimator"] == n for r in rows)]
    colors = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xhp<>"
    style = {n: dict(color=colors[i % 20], marker=markers[i % len(markers)]) for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(settings), figsize=(3.6 * len(settings) + 1.8, 3.6), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        zeros = []
        for name in names:
            here = [r for r in rows if r["setting"] == setting and r["estimator"] == name]
            pts = sorted((float(r["evaluations"]), float(r["variance"])) for r in here if float(r["variance"]) > 0)
            if here and not pts:
                zeros.append(name)
            if pts:
                ax.plot(*zip(*pts), linewidth=1, markersize=5, **style[name])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted({int(float(r["budget"])) for r in rows if r["setting"] == setting})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(setting + ("\n(variance 0: " + ", ".join(zeros) + ")" if zeros else ""), fontsize=9)
        ax.set_xlabel("model evaluations per step")
    axes[0][0].set_ylabel("gradient variance (per data point)")
    handles = [plt.Line2D([], [], linewidth=1, **style[n]) for n in names]
    fig.legend(handles, names, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.7 / (3.6 * len(settings) + 1.8), 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: " + ", ".join(SETTINGS))
    parser.add_argument("--estimators", default=",".join(REGISTRY), help="comma-separated registry names")
    parser.add_argument("--draws", type=int, default=0, help="gradient draws per measurement (default: per setting)")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--replot", action="store_true", help="only redraw variance.png from variance.csv")
    args = parser.parse_args(argv)
    if args.replot:
        with open(os.path.join(args.out, "variance.csv")) as f:
            _plot(
                [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)],
                os.path.join(args.out, "variance.png"),
            )
        return 0
    torch.set_default_dtype(torch.float32)
    pyro.enable_validation(False)
    for setting in args.settings.split(","):
        draws = args.draws or DRAWS[setting]
        rows = measure(setting, draws, args.estimators.split(","))
        write(rows, args.out)  # after every setting: the rows of other settings and estimators are kept
        print("wrote", os.path.join(args.out, "variance.md"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: Apache-2.0
"""
A sequence of discrete choices: each 8x8 digit (scikit-learn's bundled digits,
binarized; no download) is coded by ``T = 8`` four-way choices, one site each,
drawn in order. The guide's choice ``t`` depends on the image and on choice
``t - 1`` (an autoregressive code); the prior is a Markov chain over the
choices with a learned transition matrix; the decoder maps the eight one-hot
choices to the image's 64 pixels. The joint support is ``4**8 = 65536``
codes per image, so no estimator can enumerate it, and the sites depend on
each other, which rules out the replaying estimators (ARSM, IndeCateR, RELAX)
and the coupled ones (ARMS, CARMS).

Compared at equal model evaluations per step (``--evaluations``, default 4):
the unordered set estimator drawing ``k`` distinct joint codes by a stochastic
beam search across the eight sites, sum-and-sample (one site only: refused,
shown), leave-one-out, VarGrad and VIMCO (which trains the K-sample bound).
Per estimator: the variance of the encoder's gradient at a common point (after
a short leave-one-out warm-up), test -ELBO after ``--steps`` steps, and seconds::

    python examples/sequence.py                 # writes benchmarks/results/examples/sequence.{csv,md,png}
    python examples/sequence.py --steps 100     # a quick run
"""

import argparse
import csv
import os
import sys
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI
from pyro.optim import Adam
from torch import nn

from pyro_discrete import VIMCOELBO, SumAndSampleELBO, TraceScoreELBO, UnorderedSetELBO, VarGradELBO
from pyro_discrete.diagnostics import gradient_statistics
from pyro_discrete.errors import EstimatorError

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, os.pardir, "benchmarks", "results", "examples")
T, C, HIDDEN = 8, 4, 64


def load_digits():
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0 > 0.5).astype(np.float32)
    x = x[np.random.RandomState(0).permutation(len(x))]
    return torch.from_numpy(x[:1500]), torch.from_numpy(x[1500:])


class SequenceCode(nn.Module):
    """The model and guide (see the module's docstring); every network broadcasts over leading dims."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, HIDDEN), nn.Tanh())
        self.step = nn.Linear(HIDDEN, T * C)  # the image's part of each choice's logits
        self.previous = nn.Parameter(torch.zeros(T, C, C))  # the previous choice's part
        self.decoder = nn.Sequential(nn.Linear(T * C, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 64))
        self.transition = nn.Parameter(torch.zeros(C, C))

    def model(self, x):
        pyro.module("sequence", self)
        codes = []
        with pyro.plate("data", x.shape[0]):
            z = None
            for t in range(T):
                logits = x.new_zeros(C) if z is None else F.one_hot(z, C).to(x.dtype) @ self.transition
                z = pyro.sample("z_{}".format(t), dist.Categorical(logits=logits))
                codes.append(F.one_hot(z, C).to(x.dtype))
            pixels = self.decoder(torch.cat(codes, -1))
            pyro.sample("x", dist.Bernoulli(logits=pixels).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("sequence", self)
        own = self.step(self.encoder(x)).unflatten(-1, (T, C))
        with pyro.plate("data", x.shape[0]):
            z = None
            for t in range(T):
                logits = own[:, t]
                if z is not None:
                    logits = logits + F.one_hot(z, C).to(x.dtype) @ self.previous[t]
                z = pyro.sample("z_{}".format(t), dist.Categorical(logits=logits))


def estimators(evaluations):
    k = evaluations
    return {
        "unordered": lambda: UnorderedSetELBO(num_samples=k, max_plate_nesting=1),
        "sum_and_sample": lambda: SumAndSampleELBO(num_summed=k // 2, num_samples=k - k // 2, max_plate_nesting=1),
        "loo": lambda: TraceScoreELBO(num_particles=k, max_plate_nesting=1),
        "vargrad": lambda: VarGradELBO(num_particles=k, max_plate_nesting=1),
        "vimco": lambda: VIMCOELBO(num_particles=k, max_plate_nesting=1),
    }


def test_elbo(code, x, draws=20):
    """-ELBO per image on ``x``, ``draws`` independent samples each (Trace_ELBO's estimate)."""
    elbo = TraceScoreELBO(num_particles=draws, max_plate_nesting=1)
    with torch.no_grad():
        return elbo.loss(code.model, code.guide, x) / x.shape[0]


def run(name, make, train, test, args):
    pyro.clear_param_store()
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    code = SequenceCode()
    warm = SVI(code.model, code.guide, Adam({"lr": 3e-3}), TraceScoreELBO(num_particles=4, max_plate_nesting=1))
    for step in range(args.warmup):  # a common point for the variance: leave-one-out for every estimator
        warm.step(train[(step * args.batch) % 1400 :][: args.batch])
    row = {"estimator": name, "evaluations": args.evaluations}
    try:
        elbo = make()
        batch = test[: args.batch]
        params = list(code.encoder.parameters()) + list(code.step.parameters()) + [code.previous]
        pyro.set_rng_seed(1)
        stats = gradient_statistics(
            elbo, code.model, code.guide, batch, num_draws=args.draws, params=params, timing_repeats=0
        )
        row["encoder variance"] = stats.total_variance / batch.shape[0] ** 2
    except EstimatorError as e:
        row["refused with"] = str(e).split(". ")[0]
        return row
    svi = SVI(code.model, code.guide, Adam({"lr": 3e-3}), make())
    start = time.time()
    progress = _progress(args.steps, name, args.quiet)
    for step in range(args.steps):
        svi.step(train[(step * args.batch) % 1400 :][: args.batch])
        progress.update(1)
    progress.close()
    row["seconds"] = time.time() - start
    row["test -ELBO"] = test_elbo(code, test)
    return row


def interleaved_timing(rows, chosen, train, args, steps=10, rounds=5):
    """ms per step of each estimator, timed in turns in one process (so that every one sees the same machine)."""
    svis = {}
    for row in rows:
        pyro.clear_param_store()
        code = SequenceCode()
        svis[row["estimator"]] = SVI(code.model, code.guide, Adam({"lr": 3e-3}), chosen[row["estimator"]]())
    x = train[: args.batch]
    for svi in svis.values():
        for _ in range(2):
            svi.step(x)
    times = {name: [] for name in svis}
    for _ in range(rounds):
        for name, svi in svis.items():
            start = time.perf_counter()
            for _ in range(steps):
                svi.step(x)
            times[name].append(1000 * (time.perf_counter() - start) / steps)
    for row in rows:
        row["ms per step"] = sorted(times[row["estimator"]])[rounds // 2]


def _progress(total, name, quiet):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=name, disable=quiet, leave=False)
    except ImportError:  # pragma: no cover

        class _Silent:
            def update(self, n):
                pass

            def close(self):
                pass

        return _Silent()


def write(rows, args):
    os.makedirs(args.out, exist_ok=True)
    fields = ["estimator", "evaluations", "encoder variance", "test -ELBO", "seconds", "ms per step", "refused with"]
    with open(os.path.join(args.out, "sequence.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# A sequence of eight four-way choices (bundled digits)",
        "",
        "`python examples/sequence.py --steps {} --evaluations {}` (see its docstring): {} model evaluations "
        "per step for every estimator; encoder gradient variance per image ({} draws, after {} leave-one-out "
        "steps), test -ELBO per image (Trace_ELBO's estimate, 20 samples) after {} steps of batch {}, Adam "
        "3e-3. *seconds*: the training run's wall time (other jobs may have shared the cores); *ms per step*: "
        "the median of 5 rounds of 10 steps, the estimators timed in turns in one process after training, and its "
        "ratio to leave-one-out's.".format(
            args.steps, args.evaluations, args.evaluations, args.draws, args.warmup, args.steps, args.batch
        ),
        "",
        "| estimator | encoder variance | test -ELBO | seconds | ms per step | ratio to leave-one-out | refused with |",
        "|---|---|---|---|---|---|---|",
    ]
    loo = next((r["ms per step"] for r in rows if r["estimator"] == "loo" and "ms per step" in r), None)
    for r in rows:
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} |".format(
                r["estimator"],
                "{:.4g}".format(r["encoder variance"]) if "encoder variance" in r else "",
                "{:.2f}".format(r["test -ELBO"]) if "test -ELBO" in r else "",
                "{:.1f}".format(r["seconds"]) if "seconds" in r else "",
                "{:.1f}".format(r["ms per step"]) if "ms per step" in r else "",
                "{:.2f}".format(r["ms per step"] / loo) if "ms per step" in r and loo else "",
                r.get("refused with", ""),
            )
        )
    with open(os.path.join(args.out, "sequence.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(rows, os.path.join(args.out, "sequence.png"))


def _plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    done = [r for r in rows if "test -ELBO" in r]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    names = [r["estimator"] for r in done]
    axes[0].bar(names, [r["encoder variance"] for r in done], color="tab:blue")
    axes[0].set_yscale("log")
    axes[0].set_title("encoder gradient variance (per image)", fontsize=9)
    axes[1].bar(names, [r["test -ELBO"] for r in done], color="tab:orange")
    low = min(r["test -ELBO"] for r in done)
    axes[1].set_ylim(low - 2, max(r["test -ELBO"] for r in done) + 1)
    axes[1].set_title("test -ELBO per image", fontsize=9)
    axes[2].bar(names, [r.get("ms per step", 0) for r in done], color="tab:green")
    axes[2].set_title("ms per step (in turns, one process)", fontsize=9)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8, rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluations", type=int, default=4, help="model evaluations per step (k, particles)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--draws", type=int, default=200, help="gradient draws for the variance")
    parser.add_argument("--estimators", default="", help="comma-separated subset")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    pyro.enable_validation(False)
    train, test = load_digits()
    rows = []
    chosen = estimators(args.evaluations)
    names = [n for n in chosen if not args.estimators or n in args.estimators.split(",")]
    for name in names:
        row = run(name, chosen[name], train, test, args)
        print(row, flush=True)
        rows.append(row)
    interleaved_timing([r for r in rows if "seconds" in r], chosen, train, args)
    write(rows, args)
    print("wrote", os.path.join(args.out, "sequence.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

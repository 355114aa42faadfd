# SPDX-License-Identifier: Apache-2.0
"""
Train the Storchastic tutorial's discrete VAE with each estimator and measure,
at checkpoints, what the tutorial's ``evaluate`` measures: the exact -ELBO on a
held-out batch, and the variance and bias (against the exact gradient) of the
encoder's gradient; plus milliseconds per training step and, at the end, the
held-out negative log-likelihood (exact for 2 latents, by
:func:`~pyro_discrete.likelihood.log_likelihood` with ``--nll-samples``
importance samples otherwise).

Pyro's own ELBOs are rows too: ``trace`` (Trace_ELBO, no baseline),
``tracegraph`` (TraceGraph_ELBO with its decaying-average baseline) and
``enum`` (TraceEnum_ELBO on the same model written with one site per latent)::

    python benchmarks/compare_estimators.py                       # digits, 300 steps
    python benchmarks/compare_estimators.py --data mnist --data-dir ../shared/data/mnist --epochs 1

Writes ``compare.csv`` (every checkpoint), ``compare.md`` (the last checkpoint
of every estimator) and ``compare.png`` to ``--out``.
"""

import argparse
import csv
import math
import os
import sys
import time

import pyro
import torch
from pyro.optim import Adam

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

from discrete_vae import ESTIMATORS, DataError, DiscreteVAE, load_data, make_elbo, prepare_model  # noqa: E402

from pyro_discrete import ExpectELBO, TraceScoreELBO  # noqa: E402
from pyro_discrete.diagnostics import gradient_statistics  # noqa: E402
from pyro_discrete.likelihood import exact_log_likelihood, log_likelihood  # noqa: E402
from pyro_discrete.registry import REGISTRY  # noqa: E402


def default_particles(name):
    """
    The tutorial's settings: 10 samples for the estimators that need several
    (leave-one-out, VarGrad, ...), one for the others (score function, relaxations,
    ARSM, enumeration, Pyro's ELBOs).
    """
    entry = REGISTRY.get(name)
    return 10 if entry is not None and entry.min_particles >= 2 else 1


#: every registered estimator, then Pyro's
DEFAULT = [name for name in ESTIMATORS if name != "moving_average"]
COLUMNS = [
    "estimator",
    "particles",
    "step",
    "epoch",
    "heldout_neg_elbo",
    "heldout_nll",
    "heldout_nll_se",
    "train_neg_elbo",
    "encoder_variance",
    "encoder_squared_bias",
    "encoder_mse",
    "bias_z",
    "ms_per_step",
    "evaluations",
]


def checkpoint(name, vae, model, guide, elbo, grad_batch, heldout, num_draws, exact):
    """One row of measurements at the current parameters (no parameter changes)."""
    # the exact gradient is the ELBO's: no reference for estimators of another objective (VIMCO's bound)
    entry = REGISTRY.get(name)
    reference = ExpectELBO() if exact and (entry is None or entry.objective == "elbo") else None
    stats = gradient_statistics(
        elbo,
        model,
        guide,
        grad_batch,
        num_draws=num_draws,
        reference=reference,
        params=list(vae.encoder.parameters()),
        timing_repeats=0,
    )
    if exact:
        heldout_loss = ExpectELBO().loss(vae.model, vae.guide, heldout) / len(heldout)
    else:
        heldout_loss = TraceScoreELBO(num_particles=100, baseline=None).loss(vae.model, vae.guide, heldout) / len(
            heldout
        )
    return {
        "heldout_neg_elbo": heldout_loss,
        # per data point, like the loss
        "encoder_variance": stats.total_variance / len(grad_batch) ** 2,
        "encoder_squared_bias": stats.total_squared_bias / len(grad_batch) ** 2,
        "encoder_mse": stats.total_mse / len(grad_batch) ** 2,
        "bias_z": stats.bias_z,
        "evaluations": stats.evaluations_per_draw,
    }


def heldout_nll(vae, heldout, exact, num_samples):
    """``-log p(x)`` per held-out image: exact (enumerated) or importance-sampled with its standard error."""
    n = len(heldout)
    if exact:
        return {"heldout_nll": -exact_log_likelihood(vae.model, heldout).sum().item() / n, "heldout_nll_se": 0.0}
    estimate = log_likelihood(vae.model, vae.guide, heldout, num_samples=num_samples, batch_size=100)
    return {"heldout_nll": -estimate.total / n, "heldout_nll_se": estimate.total_se / n}


def run_estimator(name, particles, args, train_x, heldout, grad_batch, device, bar_factory):
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    vae = DiscreteVAE(train_x.shape[1], args.latents).to(device)
    model, guide = prepare_model(vae, name)
    elbo = make_elbo(name, particles)
    optim = Adam({"lr": args.lr})
    svi = pyro.infer.SVI(model, guide, optim, loss=elbo)
    batches_per_epoch = len(train_x) // args.batch_size
    total_steps = args.steps or args.epochs * batches_per_epoch
    marks = sorted({round(i * total_steps / args.checkpoints) for i in range(args.checkpoints + 1)})
    exact = args.latents <= 3
    rows, step, busy, losses = [], 0, 0.0, []
    bar = bar_factory(total=total_steps, desc="{:>11}".format(name))
    order = torch.randperm(len(train_x))
    while True:
        if step in marks:
            row = checkpoint(name, vae, model, guide, elbo, grad_batch, heldout, args.draws, exact)
            steps_since = step - (rows[-1]["step"] if rows else 0)
            row.update(
                estimator=name,
                particles=particles,
                step=step,
                epoch=step / batches_per_epoch,
                train_neg_elbo=sum(losses) / len(losses) if losses else math.nan,
                ms_per_step=1000 * busy / steps_since if steps_since else math.nan,
            )
            rows.append(row)
            busy, losses = 0.0, []
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(heldout="{:.2f}".format(row["heldout_neg_elbo"]))
        if step == total_steps:
            rows[-1].update(heldout_nll(vae, heldout, exact, args.nll_samples))
            break
        i = step % batches_per_epoch
        if i == 0 and step > 0:
            order = torch.randperm(len(train_x))
        batch = train_x[order[i * args.batch_size : (i + 1) * args.batch_size]].to(device)
        start = time.perf_counter()
        loss = svi.step(batch)
        busy += time.perf_counter() - start
        losses.append(loss / len(batch))
        step += 1
        bar.update(1)
    bar.close()
    return rows


def write_outputs(rows, out):
    os.makedirs(out, exist_ok=True)
    csv_path = os.path.join(out, "compare.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    last = {}
    for row in rows:
        last[row["estimator"]] = row
    md_path = os.path.join(out, "compare.md")
    md_cols = [
        "estimator",
        "particles",
        "step",
        "heldout_neg_elbo",
        "heldout_nll",
        "train_neg_elbo",
        "encoder_variance",
        "encoder_squared_bias",
        "ms_per_step",
        "evaluations",
    ]
    with open(md_path, "w") as f:
        f.write("| " + " | ".join(md_cols) + " |\n|" + "---|" * len(md_cols) + "\n")
        for row in last.values():
            f.write("| " + " | ".join(_fmt(row[c]) for c in md_cols) + " |\n")
    files = [csv_path, md_path]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[examples]')")
        return files
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))

    def positive(values):  # zero (exact estimators) and estimates below zero are not drawn on a log axis
        return [v if v > 0 else float("nan") for v in values]

    later = []
    for name in last:
        rs = [r for r in rows if r["estimator"] == name]
        steps = [r["step"] for r in rs]
        axes[0].plot(steps, [r["heldout_neg_elbo"] for r in rs], "o-", label=name)
        later += [r["heldout_neg_elbo"] for r in rs if r["step"] > 0]
        axes[1].plot(steps, positive([r["encoder_variance"] for r in rs]), "o-", label=name)
        axes[2].plot(steps, positive([r["encoder_squared_bias"] for r in rs]), "o-", label=name)
    if later:  # the first checkpoint (untrained) would squash the rest
        axes[0].set_ylim(min(later) - 5, max(later) + 10)
    axes[0].set_ylabel("held-out -ELBO (exact)")
    axes[1].set_ylabel("encoder gradient variance (exact: 0, not drawn)")
    axes[2].set_ylabel("encoder gradient squared bias (where > 0)")
    for ax in axes:
        ax.set_xlabel("step")
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    files.append(os.path.join(out, "compare.png"))
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


def _fmt(value):
    if isinstance(value, float):
        if value != value:
            return "–"
        return "{:.3g}".format(value) if abs(value) < 1000 else "{:.1f}".format(value)
    return str(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--estimators", default=",".join(DEFAULT), help="comma-separated, from: " + ", ".join(ESTIMATORS)
    )
    parser.add_argument("--particles", default="", help="overrides, e.g. loo=4,vargrad=4")
    parser.add_argument("--latents", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: --epochs)")
    parser.add_argument("--epochs", type=int, default=None, help="default 1 for MNIST; 300 steps for digits")
    parser.add_argument("--checkpoints", type=int, default=4, help="measurements after step 0 (evenly spaced)")
    parser.add_argument("--draws", type=int, default=100, help="gradient draws per measurement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--heldout-size", type=int, default=500)
    parser.add_argument("--nll-samples", type=int, default=1000, help="importance samples for log p(x) (latents > 3)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--data", choices=["digits", "mnist", "binarized-mnist"], default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "compare"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replot", default=None, help="only redraw the outputs from an earlier compare.csv")
    args = parser.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            rows = [
                {k: (v if k == "estimator" else float(v) if v != "" else math.nan) for k, v in r.items()}
                for r in csv.DictReader(f)
            ]
        print("wrote", ", ".join(write_outputs(rows, os.path.dirname(os.path.abspath(args.replot)))))
        return 0
    names = [n.strip() for n in args.estimators.split(",") if n.strip()]
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        parser.error("unknown estimator(s) {}; choose from {}".format(unknown, ESTIMATORS))
    particles = {name: default_particles(name) for name in ESTIMATORS}
    for item in filter(None, args.particles.split(",")):
        key, value = item.split("=")
        particles[key.strip()] = int(value)
    if args.steps is None and args.epochs is None:
        if args.data == "digits":
            args.steps = 300
        else:
            args.epochs = 1
    if "enum" in names and args.latents > 3:
        parser.error("enum enumerates 10**latents configurations; use --latents 2")
    try:
        train_x, test_x, _ = load_data(args.data, args.data_dir)
    except DataError as e:
        print("error: {}".format(e), file=sys.stderr)
        return 2
    try:
        from tqdm import tqdm as bar_factory
    except ImportError:

        class bar_factory:  # noqa: N801 - a stand-in for tqdm
            def __init__(self, total, desc):
                self.desc, self.total, self.n = desc, total, 0

            def update(self, k):
                self.n += k
                if self.n % max(1, self.total // 10) == 0:
                    print("{}: {}/{}".format(self.desc, self.n, self.total), flush=True)

            def close(self):
                pass

    device = torch.device(args.device)
    # the gradient is measured on a fixed batch, the held-out -ELBO on other test images
    grad_batch = test_x[: args.batch_size].to(device)
    heldout = test_x[args.batch_size : args.batch_size + args.heldout_size].to(device)
    print(
        "data: {} ({} train); latents {}x10; batch {}; {} checkpoints; {} draws each".format(
            args.data, len(train_x), args.latents, args.batch_size, args.checkpoints + 1, args.draws
        )
    )
    rows = []
    for name in names:
        rows.extend(run_estimator(name, particles[name], args, train_x, heldout, grad_batch, device, bar_factory))
        files = write_outputs(rows, args.out)  # after each estimator: a later failure keeps what was measured
        last = rows[-1]
        print(
            "{:>11}: held-out -ELBO {:.2f}  -log p(x) {:.2f}  encoder variance {:.4g}  squared bias {:.3g}  "
            "{:.1f} ms/step".format(
                name,
                last["heldout_neg_elbo"],
                last["heldout_nll"],
                last["encoder_variance"],
                last["encoder_squared_bias"],
                last["ms_per_step"],
            ),
            flush=True,
        )
    print("wrote", ", ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())

# SPDX-License-Identifier: Apache-2.0
"""
A leaderboard on two protocols of the literature, every registered estimator
and Pyro's ``Trace_ELBO`` / ``TraceGraph_ELBO`` at equal model evaluations per
step (where the estimator has a knob; the others at their own cost, shown):

``arsm20x10``
    The categorical VAE of the ARSM paper's official code: MNIST thresholded
    at 0.5, the first 5000 training images held out for validation, 20
    latents x 10 categories (uniform prior, fixed), encoder 784-512-256 with
    LeakyReLU(0.2) whose logits for category 1 are fixed at 0, mirrored
    decoder, Glorot-uniform weights and zero biases, batch 200, Adam 3e-4;
    4 model evaluations per step.
``bernoulli200``
    The 200-Bernoulli VAE of the DisARM / RODEO papers: MNIST binarized
    dynamically (each training batch drawn anew from the grey levels; the
    validation and test sets binarized once), 200 Bernoulli latents with a
    uniform prior, nonlinear 784-200-200 nets with LeakyReLU(0.3), batch 100,
    Adam 1e-3 (RODEO's setting); 2 model evaluations per step.

Per estimator and seed: validation -ELBO after every epoch (one sample per
image, all 5000 images), test -ELBO (10000 images) and test NLL
(:func:`~pyro_discrete.likelihood.log_likelihood`, ``--nll-samples``
importance samples on the first ``--nll-images`` test images) at the end,
the variance of the encoder's gradient (one draw, per data point, on a fixed
validation batch) after the first and the last epoch, ms per training step and
model evaluations per step. One JSON file per protocol, estimator and seed in
``benchmarks/results/leaderboard/runs/``: a finished run is skipped when the
script runs again (``--force`` redoes it). The tables and plots are written
from those files (``--report`` alone rewrites them)::

    python benchmarks/leaderboard.py --protocol arsm20x10 --epochs 10
    python benchmarks/leaderboard.py --protocol bernoulli200 --epochs 5
    python benchmarks/leaderboard.py --protocol arsm20x10 --estimators loo,arsm --seeds 1,2 --epochs 10
    python benchmarks/leaderboard.py --report

Writes ``benchmarks/results/leaderboard/leaderboard.{csv,md}`` and
``leaderboard_{protocol}.png`` (validation -ELBO against steps and seconds).
"""

import argparse
import csv
import gzip
import json
import math
import os
import sys
import time
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI
from pyro.optim import Adam
from torch import nn

from pyro_discrete import TraceScoreELBO
from pyro_discrete.diagnostics import gradient_statistics
from pyro_discrete.likelihood import log_likelihood
from pyro_discrete.registry import PYRO_ELBOS, REGISTRY

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "leaderboard")
DATA = os.path.join(HERE, os.pardir, os.pardir, "shared", "data", "mnist")

#: protocol -> settings
PROTOCOLS = {
    "arsm20x10": dict(
        latents=20,
        categories=10,
        hidden=(512, 256),
        slope=0.2,
        batch=200,
        lr=3e-4,
        budget=4,
        binarize="threshold",
        glorot=True,
        fixed_first_logit=True,
    ),
    "bernoulli200": dict(
        latents=200,
        categories=2,
        hidden=(200, 200),
        slope=0.3,
        batch=100,
        lr=1e-3,
        budget=2,
        binarize="dynamic",
        glorot=False,
        fixed_first_logit=False,
    ),
}

#: what the papers report on the same protocol: (protocol, estimator) -> (value, metric, epochs, source)
PAPERS = {
    ("arsm20x10", "arsm"): (
        122.1,
        "validation -ELBO",
        10,
        "the training log of the ARSM authors' official code, epoch index 9; 87 after 1000 epochs",
    ),
}

#: the ARSM authors' official training log on arsm20x10 (their ARSM estimator): epoch -> validation -ELBO
ARSM_LOG = {10: 122.1, 50: 104.2, 100: 99.7}

PYRO_ROWS = ["trace", "tracegraph"]


# ----------------------------------------------------------------------
# data
# ----------------------------------------------------------------------
def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(-1, 784)


def _find(data_dir, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise SystemExit("no {}[.gz] in {!r}: pass --data-dir (the MNIST IDX files)".format(stem, data_dir))


def load(protocol, data_dir, smoke=False):
    """``(train, validation, test)`` grey levels in [0, 1] (``dynamic``) or binary images."""
    if smoke:  # a tiny synthetic stand-in, for the tests of this script
        g = torch.Generator().manual_seed(0)
        grey = torch.rand(1200, 784, generator=g)
        train, test = grey[:1000], grey[1000:]
    else:
        train = torch.from_numpy(_read_idx(_find(data_dir, "train-images-idx3-ubyte")).astype(np.float32) / 255)
        test = torch.from_numpy(_read_idx(_find(data_dir, "t10k-images-idx3-ubyte")).astype(np.float32) / 255)
    held = min(5000, len(train) // 5)
    validation, train = train[:held], train[held:]
    if PROTOCOLS[protocol]["binarize"] == "threshold":
        return (train > 0.5).float(), (validation > 0.5).float(), (test > 0.5).float()
    g = torch.Generator().manual_seed(1234)  # validation and test binarized once, the same in every run
    return train, torch.bernoulli(validation, generator=g), torch.bernoulli(test, generator=g)


# ----------------------------------------------------------------------
# model
# ----------------------------------------------------------------------
def _mlp(sizes, slope):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(slope))
    return nn.Sequential(*layers)


class ProtocolVAE(nn.Module):
    """``latents`` one-hot ``categories``-way latents (``categories == 2``: Bernoulli latents)."""

    def __init__(self, latents, categories, hidden, slope, glorot, fixed_first_logit, **_):
        super().__init__()
        self.latents, self.categories = latents, categories
        self.bernoulli = categories == 2
        self.fixed_first_logit = fixed_first_logit and not self.bernoulli
        code = latents if self.bernoulli else latents * categories
        outputs = latents * (categories - 1) if self.fixed_first_logit else code
        self.encoder = _mlp((784,) + tuple(hidden) + (outputs,), slope)
        self.decoder = _mlp((code,) + tuple(reversed(hidden)) + (784,), slope)
        if glorot:
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
        self.z_infer = {}

    def logits(self, x):
        out = self.encoder(x)
        if self.bernoulli:
            return out
        out = out.unflatten(-1, (self.latents, -1))
        if self.fixed_first_logit:
            out = torch.cat([out.new_zeros(out.shape[:-1] + (1,)), out], -1)
        return out

    def prior(self, x):
        if self.bernoulli:
            return dist.Bernoulli(logits=x.new_zeros(self.latents)).to_event(1)
        return dist.OneHotCategorical(logits=x.new_zeros(self.latents, self.categories)).to_event(1)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            code = z if self.bernoulli else z.flatten(-2)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(code)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        logits = self.logits(x)
        with pyro.plate("data", x.shape[0]):
            fn = dist.Bernoulli(logits=logits) if self.bernoulli else dist.OneHotCategorical(logits=logits)
            pyro.sample("z", fn.to_event(1), infer=dict(self.z_infer))


# ----------------------------------------------------------------------
# estimators
# ----------------------------------------------------------------------
def contenders(protocol):
    """``{name: (make, evaluations per step)}``: the registered estimators that take the protocol's site."""
    p = PROTOCOLS[protocol]
    kind = "bernoulli" if p["categories"] == 2 else "onehot"
    C, K, budget = p["categories"], p["latents"], p["budget"]
    out = {}
    for name, entry in REGISTRY.items():
        if kind not in entry.site_kinds or entry.exact:
            continue  # exact enumeration: 10**20 or 2**200 joint values
        if name == "arm" and kind != "bernoulli":
            continue  # ARM differs from ARSM on binary sites only
        elbo = entry.make_for_evaluations(budget, C, K, max_plate_nesting=1)
        out[name] = (
            lambda entry=entry: entry.make_for_evaluations(budget, C, K, max_plate_nesting=1),
            entry.evaluations(elbo.num_particles, C, K),
        )
    for name in PYRO_ROWS:
        out[name] = (lambda name=name: PYRO_ELBOS[name](budget), budget)
    return out


# ----------------------------------------------------------------------
# one run
# ----------------------------------------------------------------------
def neg_elbo(vae, images, batch=1000):
    """-ELBO per image, one sample per image (the guide's), over all ``images``."""
    elbo = TraceScoreELBO(num_particles=1, baseline=None, max_plate_nesting=1)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            total += elbo.loss(vae.model, vae.guide, images[i : i + batch])
    return total / len(images)


def encoder_variance(vae, elbo, batch, draws):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = gradient_statistics(
            elbo, vae.model, vae.guide, batch, num_draws=draws, params=list(vae.encoder.parameters()), timing_repeats=0
        )
    return stats.total_variance / len(batch) ** 2


def run(protocol, name, seed, args, data, path, bar_factory):
    p = PROTOCOLS[protocol]
    train, validation, test = data
    make, evaluations = contenders(protocol)[name]
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = ProtocolVAE(**p)
    if name == "tracegraph":
        vae.z_infer = {"baseline": {"use_decaying_avg_baseline": True}}
    elbo = make()
    svi = SVI(vae.model, vae.guide, Adam({"lr": p["lr"]}), loss=elbo)
    steps_per_epoch = len(train) // p["batch"]
    probe = validation[: p["batch"]]
    record = {
        "protocol": protocol,
        "estimator": name,
        "seed": seed,
        "epochs": args.epochs,
        "evaluations_per_step": evaluations,
        "steps_per_epoch": steps_per_epoch,
        "curve": [],
        "variance": [],
        "settings": {k: v for k, v in p.items()},
        "threads": torch.get_num_threads(),
        "finished": False,
    }
    busy, first = 0.0, 0
    checkpoint = path[: -len(".json")] + ".partial.pt"
    if os.path.exists(checkpoint) and not args.force:
        first, busy = _resume(checkpoint, vae, svi, elbo, record)
    bar = bar_factory(total=args.epochs * steps_per_epoch, desc="{} {} seed {}".format(protocol, name, seed))
    bar.update(first * steps_per_epoch)
    # short runs are validated four times per epoch, so that their curves have more than one point
    checks = 4 if args.epochs <= 2 else 1
    for epoch in range(first, args.epochs):
        order = torch.randperm(len(train))
        for i in range(steps_per_epoch):
            x = train[order[i * p["batch"] : (i + 1) * p["batch"]]]
            if p["binarize"] == "dynamic":
                x = torch.bernoulli(x)
            start = time.perf_counter()
            svi.step(x)
            busy += time.perf_counter() - start
            bar.update(1)
            part = (i + 1) * checks // steps_per_epoch  # the last step of an epoch always starts a new part
            if part != i * checks // steps_per_epoch:
                value = neg_elbo(vae, validation)
                record["curve"].append(
                    {
                        "epoch": epoch + part / checks if part < checks else epoch + 1,
                        "step": epoch * steps_per_epoch + i + 1,
                        "seconds": busy,
                        "validation_neg_elbo": value,
                    }
                )
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(validation="{:.2f}".format(value))
        if epoch == 0 or epoch == args.epochs - 1:
            record["variance"].append(
                {"epoch": epoch + 1, "encoder_variance": encoder_variance(vae, elbo, probe, args.draws)}
            )
        if epoch < args.epochs - 1:
            _save(checkpoint, epoch + 1, busy, vae, svi, elbo, record)
    bar.close()
    record["ms_per_step"] = 1000 * busy / (args.epochs * steps_per_epoch)
    record["test_neg_elbo"] = neg_elbo(vae, test)
    nll = log_likelihood(
        vae.model,
        vae.guide,
        test[: args.nll_images],
        num_samples=args.nll_samples,
        batch_size=min(100, args.nll_samples),
    )
    record["test_nll"] = -nll.total / args.nll_images
    record["test_nll_se"] = nll.total_se / args.nll_images
    record["nll_images"], record["nll_samples"] = args.nll_images, args.nll_samples
    record["finished"] = True
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    if os.path.exists(checkpoint):
        os.remove(checkpoint)
    return record


def _save(checkpoint, epochs_done, busy, vae, svi, elbo, record):
    """Everything a run needs to go on after ``epochs_done`` epochs, in another process or session."""
    state = {
        "epochs_done": epochs_done,
        "busy": busy,
        "vae": vae.state_dict(),
        "optim": svi.optim.get_state(),
        "elbo": elbo.state_dict() if hasattr(elbo, "state_dict") else None,
        "rng": pyro.util.get_rng_state(),
        "record": record,
    }
    os.makedirs(os.path.dirname(checkpoint), exist_ok=True)
    torch.save(state, checkpoint + ".tmp")
    os.replace(checkpoint + ".tmp", checkpoint)  # a run killed while saving keeps the previous checkpoint


def _resume(checkpoint, vae, svi, elbo, record):
    state = torch.load(checkpoint, weights_only=False)
    vae.load_state_dict(state["vae"])
    svi.optim.set_state(state["optim"])
    if state["elbo"] is not None:
        elbo.load_state_dict(state["elbo"])
    pyro.util.set_rng_state(state["rng"])
    record.update({k: v for k, v in state["record"].items() if k in ("curve", "variance")})
    print("resumed {} after epoch {}".format(os.path.basename(checkpoint), state["epochs_done"]), flush=True)
    return state["epochs_done"], state["busy"]


# ----------------------------------------------------------------------
# report
# ----------------------------------------------------------------------
def load_runs(out):
    runs = []
    root = os.path.join(out, "runs")
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if f.endswith(".json"):
                with open(os.path.join(dirpath, f)) as fh:
                    r = json.load(fh)
                if r.get("finished"):
                    runs.append(r)
    return runs


def _mean_spread(values):
    """``(median, (min, max))`` over seeds; the range is ``None`` for one seed."""
    values = sorted(v for v in values if v is not None and v == v)
    if not values:
        return math.nan, None
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return median, ((values[0], values[-1]) if n > 1 else None)


def _at_epoch(run, epoch):
    """Validation -ELBO after ``epoch`` epochs (``None`` where the run has no such point)."""
    for c in run["curve"]:
        if abs(c["epoch"] - epoch) < 1e-9:
            return c["validation_neg_elbo"]
    return None


def report(out):
    runs = load_runs(out)
    if not runs:
        print("no finished runs in", os.path.join(out, "runs"))
        return
    rows = []
    groups = sorted({(r["protocol"], r["epochs"]) for r in runs}, key=lambda g: (list(PROTOCOLS).index(g[0]), g[1]))
    for protocol, epochs in groups:
        names = list(dict.fromkeys(r["estimator"] for r in runs if r["protocol"] == protocol))
        for name in names:
            rs = [r for r in runs if r["protocol"] == protocol and r["estimator"] == name and r["epochs"] == epochs]
            if not rs:
                continue
            val, val_spread = _mean_spread([r["curve"][-1]["validation_neg_elbo"] for r in rs])
            test, _ = _mean_spread([r["test_neg_elbo"] for r in rs])
            nll, nll_spread = _mean_spread([r["test_nll"] for r in rs])
            first_var, _ = _mean_spread([r["variance"][0]["encoder_variance"] for r in rs])
            last_var, _ = _mean_spread([r["variance"][-1]["encoder_variance"] for r in rs])
            ms, _ = _mean_spread([r["ms_per_step"] for r in rs])
            early = epochs // 5 if epochs >= 10 else None
            at_early, early_spread = _mean_spread([_at_epoch(r, early) for r in rs]) if early else (math.nan, None)
            paper = PAPERS.get((protocol, name))
            if paper is not None and paper[2] != epochs:
                paper = None  # only at matched epochs
            rows.append(
                {
                    "protocol": protocol,
                    "estimator": name,
                    "seeds": len(rs),
                    "epochs": epochs,
                    "evaluations_per_step": rs[0]["evaluations_per_step"],
                    "validation_neg_elbo": val,
                    "validation_spread": val_spread,
                    "early_epoch": early,
                    "validation_at_early_epoch": at_early,
                    "early_spread": early_spread,
                    "test_neg_elbo": test,
                    "test_nll": nll,
                    "test_nll_spread": nll_spread,
                    "test_nll_se": rs[0]["test_nll_se"],
                    "encoder_variance_first_epoch": first_var,
                    "encoder_variance_last_epoch": last_var,
                    "ms_per_step": ms,
                    "seconds": sum(r["curve"][-1]["seconds"] for r in rs) / len(rs),
                    "threads": max(r.get("threads", 2) for r in rs),
                    "paper": "" if paper is None else "{} ({}, {} epochs; {})".format(*paper),
                    "nll_images": rs[0]["nll_images"],
                    "nll_samples": rs[0]["nll_samples"],
                }
            )
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "leaderboard.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Leaderboard",
        "",
        "`python benchmarks/leaderboard.py` (see its docstring for the protocols). Sorted by validation "
        "-ELBO after the last epoch; with several seeds, the median and [the range] over them. Test NLL: "
        "importance-weighted, first {} test images, {} samples each (its standard error is about {:.2g}). "
        "Encoder variance: one gradient draw, per data point, on a fixed validation batch.".format(
            rows[0]["nll_images"], rows[0]["nll_samples"], rows[0]["test_nll_se"]
        ),
    ]
    for protocol, epochs in groups:
        rs = [r for r in rows if r["protocol"] == protocol and r["epochs"] == epochs]
        rs = sorted(rs, key=lambda r: r["validation_neg_elbo"])
        p = PROTOCOLS[protocol]
        lines += [
            "",
            "## {}: {} x {} latents, batch {}, Adam {:g}, {} epoch{}".format(
                protocol,
                p["latents"],
                p["categories"] if p["categories"] > 2 else "Bernoulli",
                p["batch"],
                p["lr"],
                rs[0]["epochs"],
                "s" if rs[0]["epochs"] > 1 else "",
            ),
            "",
            "`python benchmarks/leaderboard.py --protocol {} --epochs {}` (runs with `--estimators ...` and "
            "`--seeds ...` for subsets); training time of these rows: {:.0f} minutes in all, on {} torch "
            "thread(s) of a 2-core machine{}.".format(
                protocol,
                epochs,
                sum(r["seconds"] * r["seeds"] for r in rs) / 60,
                "/".join(sorted({str(r["threads"]) for r in rs})),
                " (one thread while other work shared the machine: ms / step is not comparable with the "
                "two-thread tables)"
                if any(r["threads"] == 1 for r in rs)
                else "",
            ),
        ]
        early = rs[0]["early_epoch"]
        logged = [(e, v) for e, v in sorted(ARSM_LOG.items()) if e <= epochs]
        if protocol == "arsm20x10" and epochs >= 10 and logged:
            lines += [
                "",
                "The ARSM authors' official training log on this protocol (their ARSM estimator, 46 evaluations "
                "per step) reads validation -ELBO {}{}.".format(
                    ", ".join("{} after {} epochs ({} steps)".format(v, e, e * 275) for e, v in logged),
                    "; the column 'at epoch {}' is at the same step count as its first".format(early)
                    if early in ARSM_LOG
                    else "",
                ),
            ]
        early_header = "validation -ELBO at epoch {} | ".format(early) if early else ""
        lines += [
            "",
            "| estimator | seeds | evaluations / step | {}validation -ELBO | test -ELBO | test NLL | "
            "encoder variance (epoch 1) | encoder variance (last) | ms / step | training s | paper |".format(
                early_header
            ),
            "|---|---|---|" + ("---|" if early else "") + "---|---|---|---|---|---|---|---|",
        ]
        for r in rs:
            early_cell = _pm(r["validation_at_early_epoch"], r["early_spread"]) + " | " if early else ""
            lines.append(
                "| {} | {} | {:.0f} | {}{} | {:.2f} | {} | {:.3g} | {:.3g} | {:.1f} | {:.0f} | {} |".format(
                    r["estimator"],
                    r["seeds"],
                    r["evaluations_per_step"],
                    early_cell,
                    _pm(r["validation_neg_elbo"], r["validation_spread"]),
                    r["test_neg_elbo"],
                    _pm(r["test_nll"], r["test_nll_spread"]),
                    r["encoder_variance_first_epoch"],
                    r["encoder_variance_last_epoch"],
                    r["ms_per_step"],
                    r["seconds"],
                    r["paper"] or "–",
                )
            )
    with open(os.path.join(out, "leaderboard.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(runs, out)
    print("wrote", os.path.join(out, "leaderboard.md"))


def _pm(median, spread):
    if median != median:
        return "–"
    return "{:.2f}".format(median) if spread is None else "{:.2f} [{:.2f}, {:.2f}]".format(median, *spread)


def _plot(runs, out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return
    for protocol in PROTOCOLS:
        here = [r for r in runs if r["protocol"] == protocol]
        if not here:
            continue
        groups = sorted({r["epochs"] for r in here})  # one row of panels per number of epochs
        fig, rows = plt.subplots(len(groups), 2, figsize=(13, 4.6 * len(groups)), squeeze=False)
        cmap = plt.get_cmap("tab20")
        order = list(dict.fromkeys(r["estimator"] for r in sorted(here, key=lambda r: r["estimator"])))
        for epochs, axes in zip(groups, rows):
            rs = [r for r in here if r["epochs"] == epochs]
            names = [n for n in order if any(r["estimator"] == n for r in rs)]
            finals = []
            for name in names:
                for j, r in enumerate(r for r in rs if r["estimator"] == name):
                    steps = [c["step"] for c in r["curve"]]
                    seconds = [c["seconds"] for c in r["curve"]]
                    values = [c["validation_neg_elbo"] for c in r["curve"]]
                    finals.append(values[-1])
                    style = dict(
                        color=cmap(order.index(name) % 20),
                        marker="o",
                        ms=3,
                        label=name if j == 0 else None,
                        ls="-" if name not in PYRO_ROWS else "--",
                    )
                    axes[0].plot(steps, values, **style)
                    axes[1].plot(seconds, values, **style)
            if protocol == "arsm20x10" and epochs >= 10:
                points = [(e, v) for e, v in ARSM_LOG.items() if e <= epochs]
                axes[0].plot(
                    [e * 275 for e, _ in points],
                    [v for _, v in points],
                    "kx",
                    ms=9,
                    mew=2,
                    label="ARSM authors' official log",
                )
                finals.append(min(v for _, v in points))
            low = min(finals)
            top = max(c["validation_neg_elbo"] for r in rs for c in r["curve"])
            for ax in axes:
                ax.set_ylabel("validation -ELBO")
                ax.set_ylim(low - 3, min(top + 3, sorted(finals)[len(finals) // 2] + 60))
            axes[0].set_xlabel("training steps")
            axes[1].set_xlabel("seconds of training (CPU; threads as in the table)")
            axes[1].set_xscale("log")
            axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: no crowded labels
            title = "{}, {} epoch{}".format(protocol, epochs, "s" if epochs > 1 else "")
            axes[0].set_title(title + ": against steps")
            axes[1].set_title(title + ": against time")
            axes[0].legend(fontsize=7, loc="upper right")
            axes[1].legend(fontsize=7, ncol=2, loc="upper right")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "leaderboard_{}.png".format(protocol)), dpi=100)
        plt.close(fig)


# ----------------------------------------------------------------------
def _bar_factory(quiet):
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None and not quiet:
        return lambda total, desc: tqdm(total=total, desc=desc, mininterval=2.0)

    class Plain:
        def __init__(self, total, desc):
            self.total, self.desc, self.n = total, desc, 0

        def update(self, k):
            self.n += k
            if not quiet and self.n % max(1, self.total // 10) == 0:
                print("{}: {}/{}".format(self.desc, self.n, self.total), flush=True)

        def close(self):
            pass

    return Plain


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--protocol", choices=list(PROTOCOLS), action="append", help="which protocol (repeatable; default both)"
    )
    parser.add_argument("--estimators", default="", help="comma-separated names (default: every contender)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per run")
    parser.add_argument("--draws", type=int, default=50, help="gradient draws per encoder-variance measurement")
    parser.add_argument("--nll-images", type=int, default=1000, help="test images for the NLL")
    parser.add_argument("--nll-samples", type=int, default=200, help="importance samples per image for the NLL")
    parser.add_argument("--data-dir", default=DATA, help="MNIST IDX files (default ../shared/data/mnist)")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--force", action="store_true", help="redo finished runs")
    parser.add_argument("--report", action="store_true", help="only rewrite the tables and plots")
    parser.add_argument("--smoke", action="store_true", help="synthetic data, for a quick check of the script")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.report:
        report(args.out)
        return 0
    torch.set_default_dtype(torch.float32)
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    bar_factory = _bar_factory(args.quiet)
    for protocol in args.protocol or list(PROTOCOLS):
        data = load(protocol, args.data_dir, args.smoke)
        if args.smoke:
            args.nll_images = min(args.nll_images, len(data[2]))
        available = contenders(protocol)
        names = [n.strip() for n in args.estimators.split(",") if n.strip()] or list(available)
        for name in names:
            if name not in available:
                print("{}: {} does not take this protocol's site; skipped".format(protocol, name))
                continue
            for seed in [int(s) for s in args.seeds.split(",")]:
                path = os.path.join(
                    args.out, "runs", protocol, "{}-seed{}-epochs{}.json".format(name, seed, args.epochs)
                )
                if os.path.exists(path) and not args.force:
                    with open(path) as f:
                        done = json.load(f)
                    if done.get("finished") and done.get("epochs") == args.epochs:
                        continue
                record = run(protocol, name, seed, args, data, path, bar_factory)
                print(
                    "{} {:<15} seed {}: validation -ELBO {:.2f}, test NLL {:.2f}, {:.1f} ms/step".format(
                        protocol,
                        name,
                        seed,
                        record["curve"][-1]["validation_neg_elbo"],
                        record["test_nll"],
                        record["ms_per_step"],
                    ),
                    flush=True,
                )
    report(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

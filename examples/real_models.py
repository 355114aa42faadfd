# SPDX-License-Identifier: Apache-2.0
"""
Three models users write, each trained with every registered estimator that
takes it, next to Pyro's ``TraceEnum_ELBO`` and ``TraceGraph_ELBO``:

* **gmm** -- the Gaussian mixture of Pyro's GMM tutorial, as written there
  (``locs[assignment]``, which does not broadcast over vectorized particles),
  with MAP estimates of the globals (``AutoDelta``) and a categorical guide
  per data point; its data are the tutorial's five points. Reported: the
  exact ``-ELBO`` (the assignments summed) and the exact ``-log p(x, globals)``.
* **ssvae** -- the semi-supervised VAE "M2" (Kingma et al. 2014): the label is
  observed in labelled batches and a latent site in the others, the guide's
  continuous code depends on it; on scikit-learn's 8x8 digits, 10% labelled;
  each step takes one unlabelled and one labelled batch.
  Reported: test ``-ELBO`` with the labels latent (exact over the label,
  sampled over the code) and the classifier's test accuracy.
* **sbn** -- a two-layer sigmoid belief network (16 and 8 binary units) on the
  digits, with a guide whose top layer depends on the bottom one. Reported:
  test ``-ELBO`` (1000 samples).

Next to them, ``auto`` (every discrete guide site annotated
``config_estimator(guide, "auto")``) and ``mix`` (a hand-chosen method per site,
:data:`MIXES`), at the model evaluations per step of leave-one-out (ssvae: of
exact enumeration). Reported too: the variance of one step's gradient at the
initial parameters (30 draws, summed over parameters) and the model
evaluations per step.

Every estimator gets the same steps and learning rate; estimators that refuse
a model say why, and the table says so::

    python examples/real_models.py                      # all three, every estimator
    python examples/real_models.py --models gmm --steps 200

Writes ``benchmarks/results/real_models/{real_models.csv, real_models.md}``.
"""

import argparse
import csv
import os
import sys
import time
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO, TraceGraph_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta
from pyro.optim import Adam
from torch import nn

from pyro_discrete import ExpectELBO, TraceScoreELBO, config_estimator, registry

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "..", "benchmarks", "results", "real_models")


# ----------------------------------------------------------------------
# the Gaussian mixture of Pyro's GMM tutorial
# ----------------------------------------------------------------------
GMM_K = 2


def gmm_data():
    """The tutorial's five data points (in the default dtype)."""
    return torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])


def gmm_model(data):
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(GMM_K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", GMM_K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def make_gmm():
    """``(model, guide, global_guide)``: MAP globals, and a categorical guide per data point."""
    global_guide = AutoDelta(
        poutine.block(gmm_model, expose=["weights", "scale", "locs"]),
        init_loc_fn=lambda site: {
            "weights": torch.ones(GMM_K) / GMM_K,
            "scale": torch.tensor(5.0),
            "locs": gmm_data()[torch.tensor([0, 2])],
        }[site["name"]],
    )

    def guide(data):
        global_guide(data)
        logits = pyro.param("assignment_logits", torch.zeros(len(data), GMM_K))
        with pyro.plate("data", len(data)):
            pyro.sample("assignment", dist.Categorical(logits=logits))

    return gmm_model, guide, global_guide


def gmm_metrics(model, guide, global_guide, data):
    # the assignments summed exactly: -ELBO, and -log p(x, globals) with the globals at their MAP value
    neg_elbo = ExpectELBO().loss(model, guide, data)
    marginal = TraceEnum_ELBO(max_plate_nesting=1).loss(config_enumerate(model, "parallel"), global_guide, data)
    return {"-ELBO (exact)": neg_elbo, "-log p(x, globals)": marginal}


# ----------------------------------------------------------------------
# the semi-supervised VAE M2
# ----------------------------------------------------------------------
class _MLP(nn.Module):
    """Softplus layers; several inputs are concatenated after broadcasting their batch dims."""

    def __init__(self, sizes):
        super().__init__()
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.Softplus()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, *inputs):
        shape = torch.broadcast_shapes(*[t.shape[:-1] for t in inputs])
        return self.net(torch.cat([t.expand(shape + t.shape[-1:]) for t in inputs], -1))


class SSVAE(nn.Module):
    """M2: p(y) p(z) p(x | y, z); guide q(y | x) q(z | x, y); y observed when the batch is labelled."""

    def __init__(self, x_dim=64, y_dim=10, z_dim=8, hidden=64, aux_loss_multiplier=20.0):
        super().__init__()
        self.y_dim, self.z_dim, self.alpha = y_dim, z_dim, aux_loss_multiplier
        self.decoder = _MLP([z_dim + y_dim, hidden, x_dim])
        self.encoder_y = _MLP([x_dim, hidden, y_dim])
        self.encoder_z = _MLP([x_dim + y_dim, hidden, 2 * z_dim])

    def model(self, xs, ys=None):
        pyro.module("ssvae", self)
        labelled = ys is not None
        with pyro.plate("data", xs.shape[0]):
            z = pyro.sample("z", dist.Normal(xs.new_zeros(self.z_dim), 1.0).to_event(1))
            y = pyro.sample("y", dist.OneHotCategorical(logits=xs.new_zeros(self.y_dim)), obs=ys)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z, y)).to_event(1), obs=xs)
            if labelled and self.alpha:  # the classifier learns from the labels, as in Kingma et al.
                with poutine.scale(scale=self.alpha):
                    pyro.sample("y_aux", dist.OneHotCategorical(logits=self.encoder_y(xs)), obs=ys)

    def guide(self, xs, ys=None):
        pyro.module("ssvae", self)
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            loc, log_scale = self.encoder_z(xs, ys).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.clamp(-5, 3).exp()).to_event(1))


def load_digits_binary(seed=0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.data / 16.0 > 0.5).astype(np.float32)).to(torch.get_default_dtype())
    y = torch.nn.functional.one_hot(torch.from_numpy(digits.target), 10).to(x.dtype)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:1500]], y[order[:1500]], x[order[1500:]], y[order[1500:]]


def ssvae_metrics(vae, test_x, test_y):
    with torch.no_grad():
        accuracy = (vae.encoder_y(test_x).argmax(-1) == test_y.argmax(-1)).double().mean().item()
    # labels latent: exact over the label, 20 draws of the code per label
    neg_elbo = ExpectELBO(num_particles=20).loss(vae.model, vae.guide, test_x) / len(test_x)
    return {"test -ELBO (labels latent)": neg_elbo, "test accuracy": accuracy}


# ----------------------------------------------------------------------
# a two-layer sigmoid belief network
# ----------------------------------------------------------------------
class SBN(nn.Module):
    """p(h2) p(h1 | h2) p(x | h1), guide q(h1 | x) q(h2 | h1); sigmoid (logistic) layers."""

    def __init__(self, x_dim=64, h1=16, h2=8):
        super().__init__()
        self.h2_dim = h2
        self.prior_h2 = nn.Parameter(torch.zeros(h2))
        self.p_h1 = nn.Linear(h2, h1)
        self.p_x = nn.Linear(h1, x_dim)
        self.q_h1 = nn.Linear(x_dim, h1)
        self.q_h2 = nn.Linear(h1, h2)

    def model(self, xs):
        pyro.module("sbn", self)
        with pyro.plate("data", xs.shape[0]):
            h2 = pyro.sample("h2", dist.Bernoulli(logits=self.prior_h2).to_event(1))
            h1 = pyro.sample("h1", dist.Bernoulli(logits=self.p_h1(h2)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.p_x(h1)).to_event(1), obs=xs)

    def guide(self, xs):
        pyro.module("sbn", self)
        with pyro.plate("data", xs.shape[0]):
            h1 = pyro.sample("h1", dist.Bernoulli(logits=self.q_h1(xs)).to_event(1))
            pyro.sample("h2", dist.Bernoulli(logits=self.q_h2(h1)).to_event(1))


class SBNWithBaselines(SBN):
    """The same guide with TraceGraph_ELBO's per-site neural baselines (its users' usual setup)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.baseline_h1 = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 1))
        self.baseline_h2 = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 1))

    def guide(self, xs):
        pyro.module("sbn", self)
        with pyro.plate("data", xs.shape[0]):
            b1 = {"nn_baseline": lambda x: self.baseline_h1(x).squeeze(-1), "nn_baseline_input": xs}
            h1 = pyro.sample("h1", dist.Bernoulli(logits=self.q_h1(xs)).to_event(1), infer={"baseline": dict(b1)})
            b2 = {"nn_baseline": lambda x: self.baseline_h2(x).squeeze(-1), "nn_baseline_input": xs}
            pyro.sample("h2", dist.Bernoulli(logits=self.q_h2(h1)).to_event(1), infer={"baseline": dict(b2)})


def sbn_metrics(sbn, test_x):
    neg_elbo = TraceScoreELBO(num_particles=1000, baseline=None).loss(sbn.model, sbn.guide, test_x) / len(test_x)
    return {"test -ELBO (1000 samples)": neg_elbo}


# ----------------------------------------------------------------------
# training
# ----------------------------------------------------------------------
#: per-site mixes (``"mix"``): the site annotations, and the ELBO the other sites get
MIXES = {
    "gmm": ({"assignment": "expect"}, "loo"),  # the assignment summed exactly, as TraceEnum_ELBO does
    "ssvae": ({"y": "expect"}, "moving_average"),  # the label summed, the code pathwise (one particle)
    "sbn": ({"h2": "arsm"}, "loo"),  # DisARM for the top layer (nothing depends on it), leave-one-out for h1
}

#: the ELBO under which "auto" chooses (ssvae: one particle, as ExpectELBO and TraceEnum_ELBO run it)
AUTO_UNDER = {"gmm": "loo", "ssvae": "moving_average", "sbn": "loo"}

#: particles of the per-site runs, for the model evaluations per step of leave-one-out's 4 (an enumerated
#: two-way assignment, DisARM's pair) or, on ssvae, of ExpectELBO's 10 (the enumerated label)
PER_SITE_PARTICLES = {("gmm", "mix"): 2, ("sbn", "mix"): 2, ("ssvae", "auto"): 1}
PER_SITE_PARTICLES[("ssvae", "mix")] = 1


def estimators(model_name):
    """Registry names, then the per-site ones, then Pyro's: what runs on each model."""
    names = list(registry.REGISTRY) + ["auto", "mix"]
    if model_name == "gmm":
        return names + ["enum"]
    if model_name == "sbn":
        return names + ["tracegraph"]
    return names + ["enum"]


def annotate(name, model_name, guide):
    """The guide as the estimator ``name`` runs it: annotated per site for ``"auto"`` and ``"mix"``."""
    if name == "auto":
        return config_estimator(guide, "auto")
    if name == "mix":
        return config_estimator(guide, MIXES[model_name][0])
    return guide


def make_elbo(name, model_name):
    if name == "enum":
        return TraceEnum_ELBO(max_plate_nesting=1)
    if name == "tracegraph":
        return TraceGraph_ELBO()
    if name in ("auto", "mix"):
        particles = {"num_particles": PER_SITE_PARTICLES.get((model_name, name), 4)}
        name = AUTO_UNDER[model_name] if name == "auto" else MIXES[model_name][1]
        return make_elbo_entry(registry.REGISTRY[name], model_name, particles)
    return make_elbo_entry(registry.REGISTRY[name], model_name)


def make_elbo_entry(entry, model_name, options=None):
    options = dict(options or {})
    particles = options.get("num_particles", entry.particles)
    if model_name == "gmm" and entry.cost == "particles" and particles > 1:
        options["vectorize_particles"] = False  # the tutorial's model indexes with the assignment
    return entry.make(**options)


def train(model_name, name, steps, seed=0, lr=None, progress=None):
    """Trains one model with one estimator; returns its metrics (or the error that refused it)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    torch.manual_seed(seed)
    row = {"model": model_name, "estimator": name, "steps": steps}
    try:
        elbo = make_elbo(name, model_name)
        if model_name == "gmm":
            model, guide, global_guide = make_gmm()
            guide = annotate(name, model_name, guide)
            if name == "enum":  # Pyro's way: the assignment summed in the model, the globals MAP
                model, guide = config_enumerate(gmm_model, "parallel"), global_guide
            svi = SVI(model, guide, Adam({"lr": lr or 0.1, "betas": (0.8, 0.99)}), loss=elbo)
            batches = [(gmm_data(),)]
        elif model_name == "ssvae":
            train_x, train_y, test_x, test_y = load_digits_binary(seed)
            vae = SSVAE()
            model, guide = vae.model, annotate(name, model_name, vae.guide)
            if name == "enum":
                model, guide = vae.model, config_enumerate(vae.guide, "parallel")
            svi = SVI(model, guide, Adam({"lr": lr or 3e-3}), loss=elbo)
            labelled = len(train_x) // 10
            # every step: an unlabelled batch and a labelled one (as Pyro's SS-VAE example interleaves them)
            supervised = [(x, y) for x, y in zip(train_x[:labelled].split(50), train_y[:labelled].split(50))]
            unsupervised = [(x,) for x in train_x[labelled:].split(50)]
            batches = [
                (unsupervised[i % len(unsupervised)], supervised[i % len(supervised)])
                for i in range(len(unsupervised) * len(supervised))
            ]
        else:
            train_x, _, test_x, _ = load_digits_binary(seed)
            sbn = SBNWithBaselines() if name == "tracegraph" else SBN()
            model, guide = sbn.model, annotate(name, model_name, sbn.guide)
            svi = SVI(model, guide, Adam({"lr": lr or 3e-3}), loss=elbo)
            batches = [(x,) for x in train_x.split(50)]
        first = batches[0] if model_name != "ssvae" else batches[0][0]
        if name != "tracegraph":
            row.update(gradient_variance(elbo, model, guide, first))
        start = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for step in range(steps):
                batch = batches[step % len(batches)]
                for args in batch if model_name == "ssvae" else (batch,):
                    svi.step(*args)
                if progress is not None:
                    progress(step)
        row["seconds"] = time.time() - start
        if hasattr(elbo, "num_evaluations"):
            row["evaluations per step"] = float(elbo.num_evaluations)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if model_name == "gmm":
                metrics = gmm_metrics(gmm_model, make_gmm()[1], global_guide, gmm_data())
                if name == "enum":  # no assignment guide: its ELBO is log p itself
                    del metrics["-ELBO (exact)"]
                row.update(metrics)
            elif model_name == "ssvae":
                row.update(ssvae_metrics(vae, test_x, test_y))
            else:
                row.update(sbn_metrics(sbn, test_x))
    except (ValueError, NotImplementedError) as e:
        row["refused"] = str(e).split("\n")[0]
    return row


def gradient_variance(elbo, model, guide, args, draws=30):
    """
    The variance of one step's gradient at the initial parameters, summed over
    the guide's and model's parameters (``draws`` draws), before training.
    """
    grads = []
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(draws):
            pyro.set_rng_seed(10_000 + i)
            loss = elbo.differentiable_loss(model, guide, *args)
            params = [p.unconstrained() for _, p in sorted(pyro.get_param_store().items())]
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            grads.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, gs)]))
    torch.set_rng_state(state)
    return {"gradient variance at init": torch.stack(grads).var(0).sum().item()}


def write_table(rows, out):
    """Writes the rows, keeping the earlier results of the models not run now."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "real_models.csv")
    if os.path.exists(path):
        run = {r["model"] for r in rows}
        with open(path) as f:
            kept = [_parse(r) for r in csv.DictReader(f) if r["model"] not in run]
        rows = kept + rows
    columns = ["model", "estimator", "steps", "seconds"]
    for row in rows:
        columns += [k for k in row if k not in columns and k != "refused"]
    columns.append("refused")
    with open(os.path.join(out, "real_models.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = []
    for model_name in dict.fromkeys(r["model"] for r in rows):
        mrows = [r for r in rows if r["model"] == model_name]
        metric_columns = [c for c in columns if c not in ("model", "estimator", "steps", "refused")]
        metric_columns = [c for c in metric_columns if any(c in r for r in mrows)]
        lines += ["### {}".format(model_name), ""]
        lines.append("| estimator | " + " | ".join(metric_columns) + " | refused with |")
        lines.append("|---|" + "---|" * (len(metric_columns) + 1))
        for r in mrows:
            cells = [
                "{:.3f}".format(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in metric_columns
            ]
            refused = r.get("refused", "")
            lines.append("| {} | {} | {} |".format(r["estimator"], " | ".join(cells), refused[:140]))
        lines.append("")
    with open(os.path.join(out, "real_models.md"), "w") as f:
        f.write("\n".join(lines))
    return os.path.join(out, "real_models.md")


def _parse(row):
    parsed = {}
    for key, value in row.items():
        if value in ("", None):
            continue
        try:
            parsed[key] = float(value) if key not in ("model", "estimator", "refused", "steps") else value
        except ValueError:
            parsed[key] = value
    return parsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="gmm,ssvae,sbn", help="comma-separated: gmm, ssvae, sbn")
    parser.add_argument("--estimators", default=None, help="comma-separated registry names (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: gmm 300, others 1500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    try:
        from tqdm import tqdm
    except ImportError:  # progress is optional
        tqdm = None
    rows = []
    for model_name in args.models.split(","):
        steps = args.steps or (300 if model_name == "gmm" else 1500)
        names = args.estimators.split(",") if args.estimators else estimators(model_name)
        for name in names:
            bar = tqdm(total=steps, desc="{}/{}".format(model_name, name), leave=False) if tqdm else None
            row = train(model_name, name, steps, args.seed, progress=(lambda s: bar.update(1)) if bar else None)
            if bar:
                bar.close()
            rows.append(row)
            summary = row.get("refused") or ", ".join(
                "{} {:.3f}".format(k, v) for k, v in row.items() if isinstance(v, float) and k != "seconds"
            )
            print("{:>6} {:>15}: {}".format(model_name, name, summary[:160]), flush=True)
    path = write_table(rows, args.out)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

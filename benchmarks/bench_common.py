# SPDX-License-Identifier: Apache-2.0
"""
Shared pieces of the benchmarks: the Storchastic tutorial's discrete VAE as a
Pyro model/guide and as plain PyTorch, the data, a timer that interleaves the
contenders so that they see the same machine, and table writing. The
hand-written training steps are in ``handwritten.py``.
"""

import csv
import os
import statistics
import sys
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
SHARED_DATA = os.path.join(HERE, "..", "..", "shared", "data")


def load_binarized_mnist(split="train", data_dir=None):
    """The fixed binarization of MNIST from ``../shared/data`` when present, else ``None``."""
    path = os.path.join(data_dir or SHARED_DATA, "binarized_mnist", "binarized_mnist.npz")
    if not os.path.exists(path):
        return None
    with np.load(path) as data:
        return torch.from_numpy(data[split].astype(np.float32))


def synthetic_binary_images(num, seed=0):
    """Stand-in data when MNIST is not available: sparse random binary 28x28 images."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(num, 784, generator=gen) < 0.13).float()


#: glibc malloc tunables for the timings: keep freed memory in the process
#: instead of returning it to the system after every step (see
#: ``run_benchmarks.py``'s docstring for why)
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def malloc_tuned():
    """Whether this process started with :data:`MALLOC_TUNING`."""
    return all(os.environ.get(k) == v for k, v in MALLOC_TUNING.items())


def malloc_label():
    """``"tuned"`` or ``"default"``, recorded with every timing."""
    return "tuned" if malloc_tuned() else "default"


def restart_with_malloc_tuning():
    """
    Start this script again with :data:`MALLOC_TUNING` set, unless it already
    is: glibc reads its tunables when the process starts.
    """
    if not malloc_tuned():
        os.environ.update(MALLOC_TUNING)
        os.execv(sys.executable, [sys.executable] + sys.argv)


def benchmark_data(num=64 * 50):
    data = load_binarized_mnist()
    source = "binarized MNIST (../shared/data)"
    if data is None:
        data, source = synthetic_binary_images(num), "synthetic binary images"
    return data[:num], source


class DiscreteVAE(nn.Module):
    """Encoder 784-512-256-(K*C), mirrored decoder, as in the Storchastic tutorial."""

    def __init__(self, latents=2, categories=10, name="vae"):
        super().__init__()
        self.latents, self.categories, self.name = latents, categories, name
        self.encoder = nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, latents * categories)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latents * categories, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 784)
        )

    def encode(self, x):
        return self.encoder(x).reshape(x.shape[:-1] + (self.latents, self.categories))

    def decode(self, z):
        return self.decoder(z.reshape(z.shape[:-2] + (-1,)))

    # --- as a Pyro model and guide -------------------------------------
    def model(self, x):
        pyro.module(self.name + ".decoder", self.decoder)
        prior = x.new_zeros(self.latents, self.categories)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.OneHotCategorical(logits=prior).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decode(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module(self.name + ".encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.OneHotCategorical(logits=self.encode(x)).to_event(1))


class BernoulliVAE(nn.Module):
    """
    ``latents`` Bernoulli latents, nonlinear 784-200-200 nets with LeakyReLU(0.3): the DisARM / RODEO
    protocol's VAE (200 latents there).
    """

    def __init__(self, latents=200, hidden=200, name="bvae"):
        super().__init__()
        self.latents, self.name = latents, name
        self.encoder = nn.Sequential(
            nn.Linear(784, hidden),
            nn.LeakyReLU(0.3),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.3),
            nn.Linear(hidden, latents),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latents, hidden),
            nn.LeakyReLU(0.3),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.3),
            nn.Linear(hidden, 784),
        )

    def model(self, x):
        pyro.module(self.name + ".decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(logits=x.new_zeros(self.latents)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module(self.name + ".encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=self.encoder(x)).to_event(1))


def control_variate_step(elbo, lr):
    """
    A function ``step(model, guide, args)`` that takes one Adam step (at ``lr``) of the estimator's own
    auxiliary parameters only (learned control variates, neural baselines), on the variance objective its
    surrogate carries, leaving the model's and guide's parameters as they are; ``None`` when the estimator
    has no such parameters.
    """
    params = [p for m in elbo.surrogate.auxiliary_modules().values() for p in m.parameters() if p.requires_grad]
    if not params:
        return None
    optim = torch.optim.Adam(params, lr=lr)

    def step(model, guide, args):
        _, surrogate = elbo._loss_and_surrogate(model, guide, args, {}, update=True)
        optim.zero_grad()
        for p, g in zip(params, torch.autograd.grad(surrogate, params, allow_unused=True)):
            p.grad = g
        optim.step()

    return step


def time_interleaved(contenders, warmup=5, rounds=5, steps_per_round=10, sync=None):
    """
    ``contenders``: dict name -> zero-argument step function. Runs them in
    interleaved rounds and returns name -> list of per-round ms/step.
    ``sync`` (e.g. ``torch.cuda.synchronize``) is called around every round.
    """
    sync = sync or (lambda: None)
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            sync()
            start = time.perf_counter()
            for _ in range(steps_per_round):
                fn()
            sync()
            times[name].append(1000 * (time.perf_counter() - start) / steps_per_round)
    return times


def median(values):
    return statistics.median(values)


def write_table(rows, name, columns, preamble=()):
    """``RESULTS/name.{csv,md}`` from ``rows`` (dicts); the Markdown opens with the lines of ``preamble``."""
    os.makedirs(RESULTS, exist_ok=True)
    csv_path = os.path.join(RESULTS, name + ".csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    md_path = os.path.join(RESULTS, name + ".md")
    with open(md_path, "w") as f:
        f.writelines(line + "\n" for line in preamble)
        f.write("| " + " | ".join(columns) + " |\n")
        f.write("|" + "---|" * len(columns) + "\n")
        for row in rows:
            f.write("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |\n")
    return csv_path, md_path


def _fmt(value):
    if isinstance(value, float):
        return "{:.3g}".format(value) if abs(value) < 100 else "{:.1f}".format(value)
    return str(value)

# SPDX-License-Identifier: Apache-2.0
"""
The Storchastic tutorial's discrete VAE, in Pyro, trained with a choice of
gradient estimator.

Encoder 784-512-256-(K*10), mirrored decoder, K one-hot latents of 10 categories
declared as one ``OneHotCategorical(...).to_event(1)`` site, Bernoulli
likelihood. The default data set is scikit-learn's bundled 8x8 digits,
binarized (no download), so this runs offline in a few minutes on 2 CPU cores::

    python examples/discrete_vae.py                      # leave-one-out, digits
    python examples/discrete_vae.py --estimator vargrad --particles 8
    python examples/discrete_vae.py --data mnist --data-dir ../shared/data/mnist --epochs 5

Writes ``metrics.json``, ``loss_curve.png``, ``reconstructions.png`` and
``latent_codes.png`` to ``--out``.
"""

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, config_enumerate
from pyro.optim import Adam
from torch import nn

from pyro_discrete import ExpectELBO, TraceScoreELBO, registry

#: the registered estimators that take this VAE's one-hot sites, then Pyro's own for comparison
ESTIMATORS = [name for name, entry in registry.REGISTRY.items() if "onehot" in entry.site_kinds] + list(
    registry.PYRO_ELBOS
)


# ----------------------------------------------------------------------
# data
# ----------------------------------------------------------------------
class DataError(RuntimeError):
    pass


def load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0 > 0.5).astype(np.float32)  # 8x8, binarized
    rng = np.random.RandomState(0)
    order = rng.permutation(len(x))
    x = x[order]
    return torch.from_numpy(x[:1500]), torch.from_numpy(x[1500:]), (8, 8)


def _read_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != 2051:
        raise DataError("{} is not an IDX image file (magic {})".format(path, magic))
    n, rows, cols = (int.from_bytes(data[4 * i : 4 * i + 4], "big") for i in (1, 2, 3))
    images = np.frombuffer(data, dtype=np.uint8, offset=16)
    if images.size != n * rows * cols:
        raise DataError("{} is truncated: {} pixels for {} images".format(path, images.size, n))
    return images.reshape(n, rows * cols)


def _find(data_dir, stem):
    for sub in ("", "raw", os.path.join("MNIST", "raw")):
        for suffix in (".gz", ""):
            path = os.path.join(data_dir, sub, stem + suffix)
            if os.path.exists(path):
                return path
    return None


def load_mnist(data_dir, binarize=True):
    """
    MNIST from IDX files in ``data_dir`` (plain names or torchvision's raw/ layout):
    pixels thresholded at 127 (``binarize=True``) or grey levels in [0, 1], which
    the Bernoulli likelihood then scores as cross-entropy targets (as the
    Storchastic tutorial does).
    """
    paths = [_find(data_dir, stem) for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")]
    if None in paths:
        try:  # optional: torchvision's download, when it imports and the network allows
            from torchvision.datasets import MNIST

            MNIST(data_dir, train=True, download=True)
            MNIST(data_dir, train=False, download=True)
            paths = [_find(data_dir, stem) for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")]
        except Exception as e:  # noqa: BLE001 - any failure means "not available"
            raise DataError(
                "no MNIST IDX files (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz]) in {!r}, "
                "and torchvision could not download them ({}: {}). Pass --data-dir DIR with those files, "
                "or use --data digits.".format(data_dir, type(e).__name__, e)
            ) from None
    try:
        train, test = (_read_idx(p) for p in paths)
    except (OSError, EOFError, ValueError) as e:
        raise DataError("could not read MNIST from {!r}: {}".format(data_dir, e)) from None
    if not binarize:
        return torch.from_numpy(train / np.float32(255)), torch.from_numpy(test / np.float32(255)), (28, 28)
    # dynamic binarization is common; a fixed threshold keeps runs comparable
    return (
        torch.from_numpy((train > 127).astype(np.float32)),
        torch.from_numpy((test > 127).astype(np.float32)),
        (28, 28),
    )


def load_binarized_mnist(data_dir):
    """The fixed binarization of Larochelle & Murray (.npz with train/valid/test, or .amat files)."""
    npz = [
        os.path.join(data_dir, f)
        for f in ("binarized_mnist.npz", os.path.join("binarized_mnist", "binarized_mnist.npz"))
    ]
    npz = [p for p in npz if os.path.exists(p)]
    try:
        if npz:
            with np.load(npz[0]) as d:
                return (
                    torch.from_numpy(d["train"].astype(np.float32)),
                    torch.from_numpy(d["test"].astype(np.float32)),
                    (28, 28),
                )
        amat = [os.path.join(data_dir, "binarized_mnist_{}.amat".format(s)) for s in ("train", "test")]
        if all(os.path.exists(p) for p in amat):
            train, test = (np.loadtxt(p, dtype=np.float32) for p in amat)
            return torch.from_numpy(train), torch.from_numpy(test), (28, 28)
    except (OSError, KeyError, ValueError) as e:
        raise DataError("could not read binarized MNIST from {!r}: {}".format(data_dir, e)) from None
    raise DataError(
        "no binarized_mnist.npz or binarized_mnist_{{train,test}}.amat in {!r}; pass --data-dir".format(data_dir)
    )


def load_data(name, data_dir, binarize=True):
    if name == "digits":
        return load_digits()
    if data_dir is None or not os.path.isdir(data_dir):
        raise DataError(
            "--data {} needs --data-dir pointing to an existing directory (got {!r})".format(name, data_dir)
        )
    return load_mnist(data_dir, binarize) if name == "mnist" else load_binarized_mnist(data_dir)


# ----------------------------------------------------------------------
# model
# ----------------------------------------------------------------------
class DiscreteVAE(nn.Module):
    def __init__(self, input_dim, latents=2, categories=10):
        super().__init__()
        self.latents, self.categories = latents, categories
        # extra infer options of the latent site, e.g. TraceGraph_ELBO's decaying-average baseline
        self.z_infer = {}
        # grey-level targets are outside the Bernoulli's support: skip that check
        self.validate_obs = None
        self.encoder = nn.Sequential(
            nn.Linear(input_dim, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, latents * categories)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latents * categories, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, input_dim)
        )

    def decode(self, z):
        return self.decoder(z.reshape(z.shape[:-2] + (-1,)))

    def likelihood(self, logits):
        v = self.validate_obs
        return dist.Independent(dist.Bernoulli(logits=logits, validate_args=v), 1, validate_args=v)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        prior = x.new_zeros(self.latents, self.categories)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.OneHotCategorical(logits=prior).to_event(1))
            pyro.sample("x", self.likelihood(self.decode(z)), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        logits = self.encoder(x).reshape(x.shape[:-1] + (self.latents, self.categories))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.OneHotCategorical(logits=logits).to_event(1), infer=self.z_infer)

    # the same model with one site per latent, for Pyro's TraceEnum_ELBO
    def model_separate(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            zs = [
                pyro.sample("z{}".format(k), dist.OneHotCategorical(logits=x.new_zeros(self.categories)))
                for k in range(self.latents)
            ]
            z = torch.stack(torch.broadcast_tensors(*zs), -2)
            pyro.sample("x", self.likelihood(self.decode(z)), obs=x)

    def guide_separate(self, x):
        pyro.module("encoder", self.encoder)
        logits = self.encoder(x).reshape(x.shape[:-1] + (self.latents, self.categories))
        with pyro.plate("data", x.shape[0]):
            for k in range(self.latents):
                pyro.sample("z{}".format(k), dist.OneHotCategorical(logits=logits[..., k, :]))


def prepare_model(vae, name):
    """``(model, guide)`` of ``vae`` as estimator ``name`` needs them."""
    if name == "enum":  # Pyro's TraceEnum_ELBO enumerates one site per latent
        return vae.model_separate, config_enumerate(vae.guide_separate, "parallel")
    if name == "tracegraph":  # with Pyro's decaying-average baseline
        vae.z_infer = {"baseline": {"use_decaying_avg_baseline": True}}
    return vae.model, vae.guide


def make_elbo(name, particles):
    """The estimator's ELBO from the registry (or Pyro's, for comparison)."""
    return registry.make(name, particles)


# ----------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------
def save_plots(out, history, vae, test_x, shape, device):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -e '.[examples]')")
        return []
    files = []
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (estimate)")
    ax.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("-ELBO per data point")
    ax.legend()
    fig.tight_layout()
    files.append(os.path.join(out, "loss_curve.png"))
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)

    with torch.no_grad():
        x = test_x[:10].to(device)
        logits = vae.encoder(x).reshape(10, vae.latents, vae.categories)
        z = nn.functional.one_hot(logits.argmax(-1), vae.categories).to(x.dtype)
        recon = torch.sigmoid(vae.decode(z)).cpu()
        # decoded latent codes: first latent varies along rows, second along columns, others fixed at 0
        codes = torch.zeros(vae.categories, vae.categories, vae.latents, vae.categories)
        for i in range(vae.categories):
            for j in range(vae.categories):
                codes[i, j, 0, i] = 1.0
                codes[i, j, 1 % vae.latents, j] = 1.0
                for k in range(2, vae.latents):
                    codes[i, j, k, 0] = 1.0
        decoded = torch.sigmoid(vae.decode(codes.to(device, x.dtype))).cpu()
    fig, axes = plt.subplots(2, 10, figsize=(10, 2.2))
    for i in range(10):
        axes[0, i].imshow(x[i].cpu().reshape(shape), cmap="gray")
        axes[1, i].imshow(recon[i].reshape(shape), cmap="gray")
        axes[0, i].axis("off")
        axes[1, i].axis("off")
    axes[0, 0].set_title("data", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction (mode of q)", fontsize=8, loc="left")
    files.append(os.path.join(out, "reconstructions.png"))
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(vae.categories, vae.categories, figsize=(6, 6))
    for i in range(vae.categories):
        for j in range(vae.categories):
            axes[i, j].imshow(decoded[i, j].reshape(shape), cmap="gray")
            axes[i, j].axis("off")
    fig.suptitle("decoded codes: latent 1 (rows) x latent 2 (columns)", fontsize=9)
    files.append(os.path.join(out, "latent_codes.png"))
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


# ----------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description="Discrete VAE (Storchastic tutorial) in Pyro")
    parser.add_argument("--latents", type=int, default=2, help="number of 10-way latents (2 or 20)")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="loo")
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--data", choices=["digits", "mnist", "binarized-mnist"], default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--binarize",
        choices=["threshold", "none"],
        default="threshold",
        help="--data mnist: threshold pixels at 127, or keep grey levels as cross-entropy targets "
        "(the Storchastic tutorial's choice)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="results/discrete_vae")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        train_x, test_x, shape = load_data(args.data, args.data_dir, args.binarize == "threshold")
    except DataError as e:
        print("error: {}".format(e), file=sys.stderr)
        return 2
    if args.estimator == "enum" and args.latents > 3:
        print("error: --estimator enum enumerates 10**latents configurations; use --latents 2", file=sys.stderr)
        return 2
    try:
        from tqdm import tqdm
    except ImportError:  # progress bar is optional

        def tqdm(iterable, **kwargs):
            return iterable

    os.makedirs(args.out, exist_ok=True)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    device = torch.device(args.device)
    vae = DiscreteVAE(train_x.shape[1], args.latents).to(device)
    if args.binarize == "none":
        vae.validate_obs = False
    elbo = make_elbo(args.estimator, args.particles)
    model, guide = prepare_model(vae, args.estimator)
    svi = SVI(model, guide, Adam({"lr": args.lr}), loss=elbo)
    # the test -ELBO: exact (enumeration) for few latents, else a 100-particle estimate
    if args.latents <= 3:
        test_elbo, test_model, test_guide = ExpectELBO(), vae.model, vae.guide
    else:
        test_elbo, test_model, test_guide = TraceScoreELBO(num_particles=100, baseline=None), vae.model, vae.guide

    print(
        "data: {} ({} train, {} test, {} pixels); estimator: {}; particles: {}; latents: {}x10".format(
            args.data, len(train_x), len(test_x), train_x.shape[1], args.estimator, args.particles, args.latents
        )
    )
    history = []
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(train_x))
        # equal batches: the last partial batch is dropped (TraceGraph_ELBO's
        # decaying-average baseline is shaped like the batch)
        batches = train_x[order[: len(order) - len(order) % args.batch_size or None]].split(args.batch_size)
        seen = sum(len(b) for b in batches)
        total = 0.0
        bar = tqdm(batches, desc="epoch {}/{}".format(epoch, args.epochs), leave=False)
        for batch in bar:
            loss = svi.step(batch.to(device)) / len(batch)
            total += loss * len(batch)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss="{:.2f}".format(loss))
        test_loss = sum(test_elbo.loss(test_model, test_guide, b.to(device)) for b in test_x.split(500)) / len(test_x)
        history.append(
            {"epoch": epoch, "train_loss": total / seen, "test_loss": test_loss, "seconds": time.time() - start}
        )
        print(
            "epoch {:3d}  train -ELBO {:8.3f}  test -ELBO {:8.3f}  ({:.0f}s)".format(
                epoch, history[-1]["train_loss"], test_loss, history[-1]["seconds"]
            )
        )

    files = save_plots(args.out, history, vae, test_x, shape, device)
    metrics = {"args": vars(args), "history": history, "final_test_loss": history[-1]["test_loss"]}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print("wrote", ", ".join(files + [os.path.join(args.out, "metrics.json")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

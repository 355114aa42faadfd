# SPDX-License-Identifier: Apache-2.0
"""
The Concrete (Gumbel-softmax) VAE on a data set whose factors are discrete:
3 shapes (square, circle, triangle) x 3 colours (red, green, blue), drawn in
code as 16x16 RGB images. A discrete VAE with two 3-way latents trained with
:class:`~pyro_discrete.RelaxedConcreteELBO` (posterior temperature
λ1 = 2/3, prior temperature λ2 = 2, as Maddison et al. recommend trying
different temperatures for the two) is set next to a Gaussian VAE with a
3-dimensional latent trained with Pyro's ``Trace_ELBO``::

    python examples/concrete_shapes.py            # writes results/concrete_shapes/*.png

Writes ``reconstructions.png`` (data, discrete VAE, Gaussian VAE) and
``traversal.png`` (every code of the discrete VAE; each latent dimension of the
Gaussian VAE moved from -2 to 2), and ``metrics.json``. The discrete VAE's
exact -ELBO (:class:`~pyro_discrete.ExpectELBO`) is printed next to its relaxed
training objective: the relaxation is a different, biased objective.

**References**

[1] C. J. Maddison, A. Mnih, Y. W. Teh, `The Concrete Distribution: A Continuous
    Relaxation of Discrete Random Variables` (ICLR 2017)

[2] E. Jang, S. Gu, B. Poole, `Categorical Reparameterization with Gumbel-Softmax` (ICLR 2017)
"""

import argparse
import json
import os
import sys

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn

from pyro_discrete import ExpectELBO, RelaxedConcreteELBO

SIZE = 16
SHAPES = ["square", "circle", "triangle"]
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def draw(shape, colour):
    """A (3, SIZE, SIZE) image in {0, 1}: the shape in the colour's channels on black."""
    y, x = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    c = SIZE / 2
    if shape == "square":
        mask = ((x - c).abs() < 5) & ((y - c).abs() < 5)
    elif shape == "circle":
        mask = (x - c) ** 2 + (y - c) ** 2 < 36
    else:  # triangle, apex up
        mask = (y > 2.5) & (y < 13.5) & ((x - c).abs() < (y - 2.5) / 11 * 6)
    rgb = torch.tensor(COLOURS[colour]).reshape(3, 1, 1)
    return (mask.float() * rgb).reshape(-1)


def make_data(copies=200, seed=0):
    images = torch.stack([draw(s, c) for s in SHAPES for c in COLOURS])  # 9 distinct images
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(9 * copies, generator=gen) % 9
    return images[order], images


def mlp(d_in, d_out, hidden=256):
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, d_out)
    )


class ConcreteVAE(nn.Module):
    """Two 3-way one-hot latents in one ``.to_event(1)`` site; Bernoulli pixels."""

    def __init__(self, latents=2, categories=3):
        super().__init__()
        self.latents, self.categories = latents, categories
        self.encoder = mlp(3 * SIZE * SIZE, latents * categories)
        self.decoder = mlp(latents * categories, 3 * SIZE * SIZE)

    def decode(self, z):
        return self.decoder(z.reshape(z.shape[:-2] + (-1,)))

    def model(self, x):
        pyro.module("concrete_decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.OneHotCategorical(logits=x.new_zeros(self.latents, self.categories)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decode(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("concrete_encoder", self.encoder)
        logits = self.encoder(x).reshape(x.shape[:-1] + (self.latents, self.categories))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.OneHotCategorical(logits=logits).to_event(1))


class GaussianVAE(nn.Module):
    def __init__(self, latent_dim=3):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = mlp(3 * SIZE * SIZE, 2 * latent_dim)
        self.decoder = mlp(latent_dim, 3 * SIZE * SIZE)

    def model(self, x):
        pyro.module("gauss_decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("gauss_encoder", self.encoder)
        loc, log_scale = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def train(model, guide, elbo, data, steps, batch_size, lr, desc):
    svi = SVI(model, guide, Adam({"lr": lr}), loss=elbo)
    try:
        from tqdm import trange
    except ImportError:
        trange = None
    steps_iter = trange(steps, desc=desc, leave=False) if trange else range(steps)
    losses = []
    for step in steps_iter:
        idx = torch.randint(0, len(data), (batch_size,))
        losses.append(svi.step(data[idx]) / batch_size)
        if trange is None and (step + 1) % max(1, steps // 5) == 0:
            print("{} step {}/{}: loss {:.3f}".format(desc, step + 1, steps, losses[-1]), flush=True)
    return losses


def save_plots(out, images, cvae, gvae):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def show(ax, img):
        ax.imshow(img.reshape(3, SIZE, SIZE).permute(1, 2, 0).clamp(0, 1).numpy())
        ax.axis("off")

    files = []
    with torch.no_grad():
        logits = cvae.encoder(images).reshape(9, cvae.latents, cvae.categories)
        codes = nn.functional.one_hot(logits.argmax(-1), cvae.categories).float()
        recon_c = torch.sigmoid(cvae.decode(codes))
        loc, _ = gvae.encoder(images).chunk(2, -1)
        recon_g = torch.sigmoid(gvae.decoder(loc))
    fig, axes = plt.subplots(3, 9, figsize=(9, 3.3))
    for i in range(9):
        for row, img in enumerate((images[i], recon_c[i], recon_g[i])):
            show(axes[row, i], img)
    for row, label in enumerate(["data", "Concrete VAE (mode of q)", "Gaussian VAE (mean of q)"]):
        axes[row, 0].set_title(label, fontsize=8, loc="left")
    fig.tight_layout()
    files.append(os.path.join(out, "reconstructions.png"))
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)

    steps = torch.linspace(-2, 2, 7)
    fig, axes = plt.subplots(3 + gvae.latent_dim, 7, figsize=(7, 1.1 * (3 + gvae.latent_dim)))
    with torch.no_grad():
        for i in range(3):  # discrete: latent 1 = row, latent 2 = column (3 of the 7 columns)
            for j in range(7):
                axes[i, j].axis("off")
            for j in range(3):
                z = torch.zeros(2, 3)
                z[0, i] = z[1, j] = 1.0
                show(axes[i, j], torch.sigmoid(cvae.decode(z)))
        axes[0, 0].set_title("Concrete VAE: every code (latent 1 rows, latent 2 columns)", fontsize=8, loc="left")
        for d in range(gvae.latent_dim):
            for j, s in enumerate(steps):
                z = torch.zeros(gvae.latent_dim)
                z[d] = s
                show(axes[3 + d, j], torch.sigmoid(gvae.decoder(z)))
        axes[3, 0].set_title("Gaussian VAE: each latent dim from -2 to 2", fontsize=8, loc="left")
    fig.tight_layout()
    files.append(os.path.join(out, "traversal.png"))
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description="Concrete VAE vs Gaussian VAE on shapes x colours")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=2.0 / 3.0, help="posterior temperature λ1")
    parser.add_argument("--prior-temperature", type=float, default=2.0, help="prior temperature λ2")
    parser.add_argument("--out", default="results/concrete_shapes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    data, images = make_data()
    cvae, gvae = ConcreteVAE(), GaussianVAE()
    relaxed = RelaxedConcreteELBO(temperature=args.temperature, prior_temperature=args.prior_temperature)
    c_losses = train(cvae.model, cvae.guide, relaxed, data, args.steps, args.batch_size, args.lr, "Concrete VAE")
    train(gvae.model, gvae.guide, Trace_ELBO(), data, args.steps, args.batch_size, args.lr, "Gaussian VAE")
    exact = ExpectELBO().loss(cvae.model, cvae.guide, images) / 9
    with torch.no_grad():
        codes = cvae.encoder(images).reshape(9, 2, 3).argmax(-1).tolist()
    gauss = (
        sum(
            Trace_ELBO(num_particles=100, vectorize_particles=True).loss(gvae.model, gvae.guide, images)
            for _ in range(5)
        )
        / 5
        / 9
    )
    metrics = {
        "concrete_relaxed_loss_last100": sum(c_losses[-100:]) / 100,
        "concrete_exact_neg_elbo": exact,
        "gaussian_neg_elbo": gauss,
        "codes": {"{} {}".format(s, c): code for (s, c), code in zip([(s, c) for s in SHAPES for c in COLOURS], codes)},
        "distinct_codes": len({tuple(c) for c in codes}),
        "args": vars(args),
    }
    print(
        "Concrete VAE: relaxed -ELBO {:.3f} (training objective), exact -ELBO {:.3f}; Gaussian VAE -ELBO {:.3f}".format(
            metrics["concrete_relaxed_loss_last100"], exact, gauss
        )
    )
    print("codes (mode of q) per image:", metrics["codes"], "->", metrics["distinct_codes"], "distinct of 9")
    try:
        files = save_plots(args.out, images, cvae, gvae)
    except ImportError:
        files = []
        print("matplotlib is not installed: no plots (pip install -e '.[examples]')")
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print("wrote", ", ".join(files + [os.path.join(args.out, "metrics.json")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

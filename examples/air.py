# SPDX-License-Identifier: Apache-2.0
"""
Attend-Infer-Repeat (Eslami et al. 2016) as Pyro's AIR example writes it,
trained with this package's score-function estimator: a guide written for
:class:`~pyro.infer.TraceGraph_ELBO` (a decaying average and a baseline network
per presence site, passed as ``infer={"baseline": {"baseline_value": ...}}``)
runs unchanged with :class:`~pyro_discrete.TraceScoreELBO`, which gives it
TraceGraph_ELBO's gradient and trains the baseline network the same way.

The model draws up to ``T`` objects per image: at step ``t`` a presence bit
``z_pres_t`` (Bernoulli, zero forever after the first zero), a position and
scale ``z_where_t`` and an appearance code ``z_what_t`` (Normal, *masked* by
``z_pres_t``), and adds a decoded 8x8 glimpse, placed by a spatial transformer,
to the canvas. The guide is recurrent: a state updated from the image and the
previous step's latents gives each step's distributions, so every later guide
site depends on the earlier presence bits -- the structure that makes AIR hard
for most estimators.

Data: scikit-learn's bundled 8x8 digits (no download) placed at random on a
larger canvas, 0 to ``max_digits`` per image. Writes ``results/air/``:
``metrics.json`` (loss curve, count accuracy, baseline network's squared
error), ``loss.png`` and ``reconstructions.png``::

    python examples/air.py                    # about a minute on 2 CPU cores
    python examples/air.py --steps 5000 --elbo tracegraph
    python examples/air.py --steps 300 --particles 4

**References**

[1] `Attend, Infer, Repeat: Fast Scene Understanding with Generative Models`,
S. M. Ali Eslami, Nicolas Heess, Theophane Weber, et al. (NeurIPS 2016)
"""

import argparse
import json
import os
import time

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_discrete import broadcastable

GLIMPSE = 8


def multi_digit_canvases(num_images, canvas=20, max_digits=2, seed=0):
    """
    ``(images, counts)``: ``num_images`` canvases of ``canvas x canvas``
    pixels in [0, 1], each holding 0 to ``max_digits`` of scikit-learn's 8x8
    digits at random places (overlaps add, clipped at 1), flattened.
    """
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().images, dtype=torch.get_default_dtype()) / 16.0
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(num_images, canvas, canvas)
    counts = torch.randint(0, max_digits + 1, (num_images,), generator=generator)
    for i in range(num_images):
        for _ in range(int(counts[i])):
            digit = digits[torch.randint(len(digits), (), generator=generator)]
            x, y = torch.randint(0, canvas - GLIMPSE + 1, (2,), generator=generator).tolist()
            images[i, y : y + GLIMPSE, x : x + GLIMPSE] += digit
    return images.clamp(max=1.0).reshape(num_images, -1), counts


def _place(glimpse, z_where, canvas):
    """The 8x8 ``glimpse`` placed on a ``canvas x canvas`` image by ``z_where = (scale, x, y)``; any leading dims."""
    lead = glimpse.shape[:-1]
    glimpse = glimpse.reshape(-1, 1, GLIMPSE, GLIMPSE)
    s, x, y = z_where.reshape(-1, 3).unbind(-1)
    scale = F.softplus(s) * GLIMPSE / canvas + 1e-3
    # the inverse of the object's transform: canvas coordinates -> glimpse coordinates
    theta = torch.stack(
        [
            torch.stack([1 / scale, torch.zeros_like(s), -x / scale], -1),
            torch.stack([torch.zeros_like(s), 1 / scale, -y / scale], -1),
        ],
        -2,
    )
    grid = F.affine_grid(theta, (glimpse.shape[0], 1, canvas, canvas), align_corners=False)
    image = F.grid_sample(glimpse, grid, align_corners=False)
    return image.reshape(lead + (canvas * canvas,))


class AIR(nn.Module):
    """
    The model, the guide and the baseline network.

    :param int canvas: image side.
    :param int steps: ``T``, the most objects per image.
    :param int what: size of ``z_what``.
    :param int hidden: size of the guide's recurrent state.
    :param float beta: the decaying average's ``baseline_beta``.
    """

    def __init__(self, canvas=20, steps=3, what=4, hidden=32, beta=0.9, prior_presence=0.5, cell="linear"):
        super().__init__()
        self.canvas, self.steps, self.what, self.hidden, self.beta = canvas, steps, what, hidden, beta
        self.prior_presence = prior_presence
        pixels = canvas * canvas
        self.decoder = nn.Sequential(nn.Linear(what, 64), nn.ReLU(), nn.Linear(64, GLIMPSE * GLIMPSE))
        #: the guide's recurrent cell: "linear" (a tanh layer, broadcasts over leading dims), "lstm" (Pyro's
        #: AIR uses an LSTM cell, which takes one batch dim: vectorized particles fail), "lstm-broadcastable"
        #: (the same cell wrapped by pyro_discrete.broadcastable)
        self.cell = cell
        if cell == "linear":
            self.rnn = nn.Linear(pixels + 3 + what + hidden, hidden)
        else:
            lstm = nn.LSTMCell(pixels + 3 + what, hidden)
            self.rnn = broadcastable(lstm) if cell == "lstm-broadcastable" else lstm
        self.pres = nn.Linear(hidden, 1)
        self.where = nn.Linear(hidden, 6)
        self.what_net = nn.Linear(hidden, 2 * what)
        self.baseline = nn.Sequential(nn.Linear(pixels + hidden, 32), nn.ReLU(), nn.Linear(32, 1))

    def model(self, data):
        pyro.module("air_decoder", self.decoder)
        with pyro.plate("data", data.shape[0]):
            canvas = data.new_zeros(data.shape)
            present = data.new_ones(data.shape[:1])
            for t in range(self.steps):
                present = pyro.sample("z_pres_{}".format(t), dist.Bernoulli(self.prior_presence * present))
                z_where = pyro.sample(
                    "z_where_{}".format(t),
                    dist.Normal(data.new_tensor([0.0, 0.0, 0.0]), 1.0).mask(present.bool().unsqueeze(-1)).to_event(1),
                )
                z_what = pyro.sample(
                    "z_what_{}".format(t),
                    dist.Normal(data.new_zeros(self.what), 1.0).mask(present.bool().unsqueeze(-1)).to_event(1),
                )
                glimpse = torch.sigmoid(self.decoder(z_what))
                canvas = canvas + present.unsqueeze(-1) * _place(glimpse, z_where, self.canvas)
            pyro.sample("obs", dist.Normal(canvas, 0.3).to_event(1), obs=data)

    def guide(self, data):
        pyro.module("air_encoder", nn.ModuleList([self.rnn, self.pres, self.where, self.what_net]))
        pyro.module("air_baseline", self.baseline)
        with pyro.plate("data", data.shape[0]):
            state = data.new_zeros(data.shape[:1] + (self.hidden,))
            memory = state  # the LSTM cell's c
            z_where = data.new_zeros(data.shape[:1] + (3,))
            z_what = data.new_zeros(data.shape[:1] + (self.what,))
            present = data.new_ones(data.shape[:1])
            for t in range(self.steps):
                lead = torch.broadcast_shapes(state.shape[:-1], z_where.shape[:-1], present.shape)
                image = data.expand(lead + data.shape[-1:])
                inputs = [image, z_where.expand(lead + (3,)), z_what.expand(lead + (self.what,))]
                if self.cell == "linear":
                    state = torch.tanh(self.rnn(torch.cat(inputs + [state.expand(lead + (self.hidden,))], -1)))
                else:
                    state, memory = self.rnn(torch.cat(inputs, -1), (state, memory))
                probs = torch.sigmoid(self.pres(state)).squeeze(-1) * present
                # AIR's baseline: a network of the image and the (detached) recurrent state, passed as a value
                value = self.baseline(torch.cat([image, state.detach()], -1)).squeeze(-1)
                present = pyro.sample(
                    "z_pres_{}".format(t),
                    dist.Bernoulli(probs),
                    infer={
                        "baseline": {
                            "baseline_value": value,
                            "use_decaying_avg_baseline": True,
                            "baseline_beta": self.beta,
                        }
                    },
                )
                mask = present.bool().unsqueeze(-1)
                loc, scale = self.where(state).chunk(2, -1)
                z_where = pyro.sample(
                    "z_where_{}".format(t), dist.Normal(loc, F.softplus(scale) + 1e-3).mask(mask).to_event(1)
                )
                loc, scale = self.what_net(state).chunk(2, -1)
                z_what = pyro.sample(
                    "z_what_{}".format(t), dist.Normal(loc, F.softplus(scale) + 1e-3).mask(mask).to_event(1)
                )

    def count(self, data):
        """The number of objects the guide finds in each image (one draw)."""
        trace = pyro.poutine.trace(self.guide).get_trace(data)
        return sum(trace.nodes["z_pres_{}".format(t)]["value"] for t in range(self.steps))


def train(args):
    from tqdm import tqdm

    from pyro_discrete import TraceScoreELBO

    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    images, counts = multi_digit_canvases(args.images, args.canvas, args.max_digits, args.seed)
    test_images, test_counts = multi_digit_canvases(200, args.canvas, args.max_digits, args.seed + 1)
    air = AIR(canvas=args.canvas, steps=args.max_digits + 1, prior_presence=args.prior_presence)
    if args.elbo == "tracegraph":  # Pyro's own, for comparison: the same gradient, draw for draw
        elbo = pyro.infer.TraceGraph_ELBO(num_particles=args.particles)
    else:
        elbo = TraceScoreELBO(num_particles=args.particles, vectorize_particles=False)
    svi = pyro.infer.SVI(air.model, air.guide, pyro.optim.Adam({"lr": args.lr}), loss=elbo)
    losses, baseline_errors = [], []
    start = time.perf_counter()
    progress = tqdm(range(args.steps), desc="AIR", unit="step")
    for _ in progress:
        batch = images[torch.randint(len(images), (args.batch,))]
        losses.append(svi.step(batch) / args.batch)
        with torch.no_grad():  # how well the baseline network predicts the first presence site's cost
            baseline_errors.append(_baseline_error(air, batch))
        progress.set_postfix(loss="{:.1f}".format(losses[-1]))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        found = torch.stack([air.count(test_images) for _ in range(10)]).mean(0).round()
    accuracy = (found == test_counts.to(found)).float().mean().item()
    os.makedirs(args.out, exist_ok=True)
    metrics = {
        "steps": args.steps,
        "particles": args.particles,
        "elbo": args.elbo,
        "prior_presence": args.prior_presence,
        "seconds": seconds,
        "final_loss_per_image": sum(losses[-20:]) / len(losses[-20:]),
        "count_accuracy": accuracy,
        "baseline_error_first_20": sum(baseline_errors[:20]) / 20,
        "baseline_error_last_20": sum(baseline_errors[-20:]) / 20,
        "losses": losses,
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    _plots(args, air, losses, baseline_errors, test_images)
    print(
        "-ELBO per image {:.1f}, count accuracy {:.2f}, baseline squared error {:.1f} -> {:.1f}, {:.1f} s".format(
            metrics["final_loss_per_image"],
            accuracy,
            metrics["baseline_error_first_20"],
            metrics["baseline_error_last_20"],
            seconds,
        )
    )
    return metrics


def _baseline_error(air, batch):
    # the squared error of the baseline network against the first presence site's cost (this package's sign), one draw
    from pyro_discrete.costs import site_costs

    guide_trace = pyro.poutine.trace(air.guide).get_trace(batch)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(air.model, guide_trace)).get_trace(batch)
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    cost = site_costs(model_trace, guide_trace, ["z_pres_0"])["z_pres_0"]
    value = guide_trace.nodes["z_pres_0"]["infer"]["baseline"]["baseline_value"]
    return ((cost + value) ** 2).mean().item()


def _plots(args, air, losses, baseline_errors, test_images):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(losses, lw=0.6)
    axes[0].set(
        xlabel="step",
        ylabel="-ELBO per image",
        title="AIR with " + ("TraceGraph_ELBO" if args.elbo == "tracegraph" else "TraceScoreELBO"),
    )
    axes[1].plot(baseline_errors, lw=0.6, color="C1")
    axes[1].set(xlabel="step", ylabel="squared error", title="baseline network (first presence site)", yscale="log")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "loss.png"), dpi=110)
    plt.close(fig)
    with torch.no_grad():
        trace = pyro.poutine.trace(air.guide).get_trace(test_images[:8])
        replay = pyro.poutine.trace(pyro.poutine.replay(air.model, trace)).get_trace(test_images[:8])
        mean = replay.nodes["obs"]["fn"].base_dist.loc
        counts = sum(trace.nodes["z_pres_{}".format(t)]["value"] for t in range(air.steps))
    fig, axes = plt.subplots(2, 8, figsize=(10, 2.8))
    for i in range(8):
        axes[0, i].imshow(test_images[i].reshape(args.canvas, args.canvas), cmap="gray_r", vmin=0, vmax=1)
        axes[1, i].imshow(mean[i].reshape(args.canvas, args.canvas), cmap="gray_r", vmin=0, vmax=1)
        axes[1, i].set_title("{} found".format(int(counts[i])), fontsize=8)
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle("test images (top) and reconstructions (bottom)", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "reconstructions.png"), dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--particles", type=int, default=1)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--canvas", type=int, default=20)
    parser.add_argument("--max-digits", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prior-presence", type=float, default=0.05, help="the prior's probability that the next object is present"
    )
    parser.add_argument(
        "--elbo",
        choices=["tracescore", "tracegraph"],
        default="tracescore",
        help="TraceScoreELBO (this package), or Pyro's TraceGraph_ELBO for comparison",
    )
    parser.add_argument("--out", default=os.path.join("results", "air"))
    return train(parser.parse_args(argv))


if __name__ == "__main__":
    main()

# SPDX-License-Identifier: Apache-2.0
"""
The discrete VAE of ``examples/discrete_vae.py``, trained with any registered
estimator by PyTorch Lightning on several processes (DDP: gloo on CPUs, NCCL
on GPUs), the data sharded by a distributed sampler::

    pip install -e ".[lightning,examples]"
    python examples/lightning_ddp.py --devices 2                          # two CPU processes
    python examples/lightning_ddp.py --devices 2 --estimator vargrad --particles 8
    python examples/lightning_ddp.py --accelerator gpu --devices 4       # four GPUs, NCCL

**Scaling.** The model's plate is the whole data set,
``pyro.plate("data", N, subsample=index)``, and each process gets a shard of
every batch: each process's ``-ELBO`` estimate is of the full data (its terms
scaled by ``N / shard size``), so the gradient that DDP averages is the
single-process gradient of the whole batch (exactly so for ``ExpectELBO``;
in expectation for sampling estimators).

**Estimator state.** Learned control variates and baselines (RELAX, RODEO,
``NeuralBaseline``) are parameters of the module ``elbo(model, guide)``
returns, so DDP keeps them synchronized like the networks. Moving-average
baselines are per process: each averages the costs of its own shards (they
stay unbiased; they are not synchronized). A checkpoint holds the estimator's
``state_dict`` and the random state, so training resumes to the same next
step (``--resume``).

Writes ``metrics.json`` (ms per step, examples per second, final and test
``-ELBO``) and ``loss_curve.png`` to ``--out``.
"""

import argparse
import json
import os
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from discrete_vae import DataError, load_data  # noqa: E402

from pyro_discrete import ExpectELBO, registry  # noqa: E402

try:
    import lightning as L
except ImportError:  # the package itself never imports Lightning
    L = None


class IndexedImages(Dataset):
    """Images with their index in the data set (the plate's subsample)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i


class ShardedVAE(nn.Module):
    """The tutorial VAE, its plate the whole data set and subsampled by the batch's indices."""

    def __init__(self, input_dim, num_data, latents=2, categories=10):
        super().__init__()
        self.num_data, self.latents, self.categories = num_data, latents, categories
        self.encoder = nn.Sequential(
            nn.Linear(input_dim, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, latents * categories)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latents * categories, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, input_dim)
        )

    def model(self, x, index):
        with pyro.plate("data", self.num_data, subsample=index):
            z = pyro.sample("z", dist.OneHotCategorical(logits=x.new_zeros(self.latents, self.categories)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z.flatten(-2))).to_event(1), obs=x)

    def guide(self, x, index):
        logits = self.encoder(x).unflatten(-1, (self.latents, self.categories))
        with pyro.plate("data", self.num_data, subsample=index):
            pyro.sample("z", dist.OneHotCategorical(logits=logits).to_event(1))


def make_module(estimator, particles, images, latents, lr, batch_size, seed=0):
    """
    The LightningModule: the VAE, ``elbo(model, guide)`` as its loss, and the
    sharded data loader (``batch_size`` per process).
    """
    if L is None:
        raise SystemExit('this example needs Lightning: pip install -e ".[lightning]"')

    class VAEModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.vae = ShardedVAE(images.shape[1], len(images), latents)
            self.elbo = registry.make(estimator, particles)
            self.loss = self.elbo(self.vae.model, self.vae.guide)  # the estimator's learned parameters too
            self.lr, self.num_data = lr, len(images)
            self.history = []
            self.clock = []  # time at the start of every step
            self._rng = None

        def train_dataloader(self):
            # each process its shard; the order depends on (seed, epoch) only, which Lightning's
            # set_epoch advances, so a resumed run sees the batches an uninterrupted one sees
            dataset = IndexedImages(images)
            sampler = DistributedSampler(
                dataset, self.trainer.world_size, self.global_rank, shuffle=True, seed=seed, drop_last=True
            )
            return DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=sampler,
                drop_last=True,
                generator=torch.Generator().manual_seed(seed),  # its seed draw leaves the global RNG alone
            )

        def training_step(self, batch, batch_idx):
            self.clock.append(time.perf_counter())
            x, index = batch
            loss = self.loss(x, index) / self.num_data  # -ELBO per data point, of the whole data set
            self.log("loss", loss, prog_bar=True, sync_dist=False)
            self.history.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.lr)

        def on_save_checkpoint(self, checkpoint):
            # the estimator's state (moving averages, step count) and this process's random state
            checkpoint["pyro_discrete"] = {"elbo": self.elbo.state_dict(), "rng": torch.get_rng_state()}

        def on_load_checkpoint(self, checkpoint):
            state = checkpoint["pyro_discrete"]
            self.elbo.load_state_dict(state["elbo"])
            self._rng = state["rng"]

        def on_train_start(self):
            if self._rng is not None:  # resumed: the samples an uninterrupted run would draw
                torch.set_rng_state(self._rng)
            else:  # every process its own samples (the weights are rank 0's: DDP broadcasts them)
                torch.manual_seed(seed + 1_000_003 * self.global_rank)

    return VAEModule()


def trainer(args, **overrides):
    options = dict(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy if args.devices > 1 else "auto",
        max_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps else -1,
        logger=False,
        enable_checkpointing=bool(args.checkpoint),
        enable_progress_bar=not args.quiet,
        enable_model_summary=False,
        default_root_dir=args.out,
        use_distributed_sampler=False,  # the module shards the data itself
    )
    options.update(overrides)
    return L.Trainer(**options)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--estimator",
        choices=list(registry.REGISTRY),
        default="loo",
        help="a registered estimator (default: leave-one-out)",
    )
    parser.add_argument("--particles", type=int, default=4, help="particles, for estimators whose cost is particles")
    parser.add_argument("--latents", type=int, default=2, help="number of 10-way latents")
    parser.add_argument("--devices", type=int, default=2, help="processes (CPU) or GPUs")
    parser.add_argument("--accelerator", default="cpu", help="cpu (gloo) or gpu (NCCL)")
    parser.add_argument("--strategy", default="ddp", help="ddp (launches processes) or ddp_spawn")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: the epochs)")
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--data", choices=["digits", "mnist", "binarized-mnist"], default="digits")
    parser.add_argument("--data-dir", default=None, help="for --data mnist / binarized-mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default="", help="write a checkpoint to this path at the end")
    parser.add_argument("--resume", default="", help="resume from this checkpoint")
    parser.add_argument("--out", default="results/lightning_ddp", help="where metrics.json and the plot go")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if L is None:
        raise SystemExit('this example needs Lightning: pip install -e ".[lightning]"')
    try:
        train_x, test_x, _ = load_data(args.data, args.data_dir)
    except DataError as e:
        raise SystemExit(str(e))
    L.seed_everything(args.seed, workers=True)
    module = make_module(args.estimator, args.particles, train_x, args.latents, args.lr, args.batch_size, args.seed)
    fit = trainer(args)
    start = time.time()
    fit.fit(module, ckpt_path=args.resume or None)
    seconds = time.time() - start
    if args.checkpoint:
        fit.save_checkpoint(args.checkpoint)
    if fit.global_rank != 0:
        return 0
    steps = max(1, len(module.history))
    # steady state: the median step after the first five (process start-up and the first steps excluded)
    gaps = sorted(b - a for a, b in zip(module.clock[5:], module.clock[6:]))
    step_seconds = gaps[len(gaps) // 2] if gaps else seconds / steps
    with torch.no_grad():
        test = ShardedVAE(train_x.shape[1], len(test_x), args.latents)
        test.load_state_dict(module.vae.state_dict())
        index = torch.arange(len(test_x))
        test_loss = (
            ExpectELBO().loss(test.model, test.guide, test_x, index) / len(test_x) if args.latents <= 3 else None
        )
    metrics = {
        "estimator": args.estimator,
        "devices": args.devices,
        "strategy": args.strategy,
        "steps": steps,
        "batch_per_process": args.batch_size,
        "ms_per_step": 1000 * step_seconds,
        "examples_per_second": args.batch_size * args.devices / step_seconds,
        "wall_seconds": seconds,
        "final_loss": sum(module.history[-10:]) / len(module.history[-10:]) if module.history else None,
        "test_neg_elbo": test_loss,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    _plot(module.history, os.path.join(args.out, "loss_curve.png"), args)
    print(
        "{} on {} process(es): {} steps, {:.1f} ms/step, {:.0f} examples/s, final -ELBO {:.2f}{}".format(
            args.estimator,
            args.devices,
            steps,
            metrics["ms_per_step"],
            metrics["examples_per_second"],
            metrics["final_loss"] or float("nan"),
            "" if test_loss is None else ", test -ELBO {:.2f}".format(test_loss),
        )
    )
    return 0


def _plot(history, path, args):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(history)
    ax.set_xlabel("step (rank 0)")
    ax.set_ylabel("-ELBO per data point")
    ax.set_title("{} on {} process(es)".format(args.estimator, args.devices))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

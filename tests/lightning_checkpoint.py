# SPDX-License-Identifier: Apache-2.0
"""
Trains ``examples/lightning_ddp.py``'s LightningModule for a few epochs on a
small data set, optionally stopping with a checkpoint or resuming from one;
returns the final weights (``test_distributed.py``).
"""

import importlib.util
import os
import warnings

import lightning as L
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, os.pardir, "examples", "lightning_ddp.py")


def _example():
    spec = importlib.util.spec_from_file_location("lightning_ddp_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(root, epochs, save=None, resume=None, seed=0, estimator="moving_average"):
    example = _example()
    L.seed_everything(seed, verbose=False)
    x = torch.bernoulli(torch.full((16, 8), 0.3), generator=torch.Generator().manual_seed(0))
    module = example.make_module(estimator, 2, x, latents=1, lr=0.05, batch_size=8, seed=seed)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        use_distributed_sampler=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers and logging
        trainer.fit(module, ckpt_path=str(resume) if resume else None)
    if save is not None:
        trainer.save_checkpoint(str(save))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}

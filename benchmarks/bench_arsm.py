# SPDX-License-Identifier: Apache-2.0
"""
ms per SVI step of ARSMELBO on the Storchastic tutorial's discrete VAE (2x10 and
20x10 latents, batch 64), next to TraceScoreELBO(loo) with as many particles as
ARSM evaluates the model (C(C-1)/2 + 1 = 46 for 10 categories, whatever the
number of latents), timed in one run.

    python benchmarks/bench_arsm.py

Writes benchmarks/results/arsm_step.{csv,md}.
"""

import copy
import itertools
import os
import sys

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyro_discrete import ARSMELBO, TraceScoreELBO  # noqa: E402

from bench_common import DiscreteVAE, benchmark_data, median, time_interleaved, write_table  # noqa: E402


def main(rounds=5, steps=4, batch_size=64):
    pyro.enable_validation(False)
    torch.manual_seed(0)
    data, source = benchmark_data(batch_size * 20)
    batches = itertools.cycle(data.split(batch_size))
    rows = []
    for latents in (2, 20):
        base = DiscreteVAE(latents=latents)
        arsm = ARSMELBO(max_plate_nesting=1)
        contenders, elbos = {}, {}

        def svi_step(elbo, name):
            vae = copy.deepcopy(base)
            vae.name = name
            svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), loss=elbo)
            return lambda: svi.step(next(batches))

        contenders["ARSMELBO"] = svi_step(arsm, "arsm{}".format(latents))
        contenders["ARSMELBO"]()
        evaluations = arsm.num_evaluations
        elbos["ARSMELBO"] = evaluations
        contenders["TraceScoreELBO(loo), same evaluations"] = svi_step(
            TraceScoreELBO(num_particles=evaluations, baseline="loo", max_plate_nesting=1), "loo{}".format(latents)
        )
        elbos["TraceScoreELBO(loo), same evaluations"] = evaluations
        contenders["TraceScoreELBO(loo), 10 particles"] = svi_step(
            TraceScoreELBO(num_particles=10, baseline="loo", max_plate_nesting=1), "loo10_{}".format(latents)
        )
        elbos["TraceScoreELBO(loo), 10 particles"] = 10
        times = time_interleaved(contenders, warmup=2, rounds=rounds, steps_per_round=steps)
        ref = median(times["TraceScoreELBO(loo), same evaluations"])
        for name, ts in times.items():
            rows.append(
                {
                    "latents": "{}x10".format(latents),
                    "estimator": name,
                    "model evaluations per step": elbos[name],
                    "ms/step": median(ts),
                    "ratio to loo at same evaluations": median(ts) / ref,
                }
            )
    columns = list(rows[0])
    csv_path, md_path = write_table(rows, "arsm_step", columns)
    print(
        "data: {}; batch {}; torch {} on {} threads".format(
            source, batch_size, torch.__version__, torch.get_num_threads()
        )
    )
    print(open(md_path).read())
    print("wrote", csv_path, md_path)


if __name__ == "__main__":
    main()

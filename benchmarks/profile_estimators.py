# SPDX-License-Identifier: Apache-2.0
"""
Where an estimator's ``SVI`` step goes (issue: the expensive estimators near
their floor). For each estimator on the benchmark grid's models -- the 2x10
tutorial VAE (batch 64) for the categorical ones, the 200-Bernoulli VAE
(batch 100) for the Bernoulli ones -- next to leave-one-out on the same model:

* ms per step, timed without a profiler (median of rounds, interleaved with
  leave-one-out), and the model evaluations per step;
* from a ``cProfile`` run of the same steps, the share of the step spent in
  the model and guide functions (every run of them: draws, replays,
  enumerations; their networks included), in the backward pass, in the
  optimizer, and the rest -- the estimator's own arithmetic and the tracing
  machinery (Pyro's handlers, this package's bookkeeping). The profiler slows
  Python more than tensor code, so the shares lean towards "the rest".

Writes ``benchmarks/results/profile_estimators.{csv,md}``::

    python benchmarks/profile_estimators.py
    python benchmarks/profile_estimators.py --estimators rodeo,unordered --rounds 3
"""

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI  # noqa: E402
from pyro.optim import Adam  # noqa: E402

from pyro_discrete.registry import REGISTRY  # noqa: E402

from bench_common import RESULTS, BernoulliVAE, DiscreteVAE, benchmark_data  # noqa: E402

#: estimator -> model ("categorical": the 2x10 tutorial VAE; "bernoulli": the 200-Bernoulli VAE)
EXPENSIVE = {
    "loo": "categorical",
    "rodeo": "bernoulli",
    "double_cv": "bernoulli",
    "arsm": "categorical",
    "indecater": "categorical",
    "rebar": "categorical",
    "gumbel_rao": "categorical",
    "unordered": "categorical",
    "sum_and_sample": "categorical",
}


def _model(kind):
    return DiscreteVAE(2, 10) if kind == "categorical" else BernoulliVAE(200)


def _svi(name, kind, data):
    torch.manual_seed(0)
    pyro.clear_param_store()
    vae = _model(kind)
    elbo = REGISTRY[name].make(max_plate_nesting=1)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), loss=elbo)
    return vae, elbo, svi


def _cum(stats, predicate):
    return sum(cum for (filename, _, func), (_, _, _, cum, _) in stats.stats.items() if predicate(filename, func))


def profile(name, kind, data, steps, rounds):
    vae, elbo, svi = _svi(name, kind, data)
    _, loo_elbo, loo_svi = _svi("loo", kind, data)
    for _ in range(3):
        svi.step(data)
        loo_svi.step(data)
    times, loo_times = [], []
    for _ in range(rounds):  # interleaved with leave-one-out on the same model
        for target, out in ((svi, times), (loo_svi, loo_times)):
            start = time.perf_counter()
            for _ in range(steps):
                target.step(data)
            out.append(1000 * (time.perf_counter() - start) / steps)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        svi.step(data)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = _cum(stats, lambda f, func: func == "step" and f.endswith(os.path.join("infer", "svi.py")))
    models = _cum(stats, lambda f, func: func in ("model", "guide") and f.endswith("bench_common.py"))
    backward = _cum(stats, lambda f, func: func == "backward" and f.endswith(os.path.join("torch", "_tensor.py")))
    optim = _cum(stats, lambda f, func: func == "__call__" and f.endswith(os.path.join("optim", "optim.py")))
    ms = statistics.median(times)
    return {
        "estimator": name,
        "model": "2x10 VAE, batch 64" if kind == "categorical" else "200-Bernoulli VAE, batch 100",
        "ms per step": ms,
        "leave-one-out ms": statistics.median(loo_times),
        "ratio to leave-one-out": ms / statistics.median(loo_times),
        "evaluations per step": elbo.num_evaluations,
        "leave-one-out evaluations": loo_elbo.num_evaluations,
        "model and guide %": 100 * models / total,
        "backward %": 100 * backward / total,
        "optimizer %": 100 * optim / total,
        "the rest %": 100 * (total - models - backward - optim) / total,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimators", default=",".join(EXPENSIVE))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    data, source = benchmark_data()
    rows = []
    for name in args.estimators.split(","):
        kind = EXPENSIVE.get(name, "categorical")
        batch = data[:64] if kind == "categorical" else data[:100]
        row = profile(name, kind, batch, args.steps, args.rounds)
        rows.append(row)
        print(
            "{:>15}: {:.1f} ms ({:.2f}x loo), model/guide {:.0f}%, backward {:.0f}%, rest {:.0f}%".format(
                name,
                row["ms per step"],
                row["ratio to leave-one-out"],
                row["model and guide %"],
                row["backward %"],
                row["the rest %"],
            ),
            flush=True,
        )
    columns = list(rows[0])
    os.makedirs(RESULTS, exist_ok=True)
    import csv

    with open(os.path.join(RESULTS, "profile_estimators.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Where the step of the expensive estimators goes",
        "",
        "Data: {}. Each estimator with its registered options (particles, samples), next to leave-one-out "
        "(4 particles, as registered) on the same model, timed interleaved in one run on 2 CPU threads; the "
        "shares come from a cProfile run of the same steps, which slows Python more than tensor code (see the "
        "script's docstring). `python benchmarks/profile_estimators.py`.".format(source),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in rows:
        lines.append(
            "| " + " | ".join("{:.2f}".format(r[c]) if isinstance(r[c], float) else str(r[c]) for c in columns) + " |"
        )
    with open(os.path.join(RESULTS, "profile_estimators.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", os.path.join(RESULTS, "profile_estimators.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""
Where an estimator's ``SVI`` step goes, and how far it is from its floor
(issue: the expensive estimators near their floor). For each estimator on the
benchmark grid's models -- the 2x10 tutorial VAE (batch 64) for the
categorical ones, the 200-Bernoulli VAE (batch 100) for the Bernoulli ones --
next to leave-one-out **at the same number of model evaluations** on the same
model and data:

* ms per step, timed without a profiler (median of rounds, interleaved with
  leave-one-out in one process), and the ratio to leave-one-out's: leave-one-
  out at equal evaluations is the floor every estimator shares (its model
  evaluations, one backward pass, the optimizer step); the ``extra`` column
  says what the method itself needs on top of it;
* peak tensor memory of one step (the benchmark suite's accounting,
  :func:`run_benchmarks.memory_use`) and its ratio to leave-one-out's;
* from a ``cProfile`` run of the same steps, the share of the step spent in
  the model and guide functions (every run of them: draws, replays,
  enumerations; their networks included), in the backward pass, in the
  optimizer, and the rest -- the estimator's own arithmetic and the tracing
  machinery. The profiler slows Python more than tensor code, so the shares
  lean towards "the rest";
* the issue's target for the ratio, and whether it is met.

The unordered set estimator is also measured at k = 4, 8, 12 and 20 samples
(leave-one-out with as many particles), for the growth of its step with k.

Writes ``benchmarks/results/profile_estimators.{csv,md}``::

    python benchmarks/profile_estimators.py
    python benchmarks/profile_estimators.py --estimators rodeo,unordered --rounds 3 --threads 1
    python benchmarks/profile_estimators.py --estimators rodeo,double_cv,rebar,unordered,sum_and_sample --batch 1024
"""

import argparse
import cProfile
import math
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

from bench_common import RESULTS, BernoulliVAE, DiscreteVAE, benchmark_data, write_table  # noqa: E402
from run_benchmarks import memory_use  # noqa: E402

#: estimator -> (model, registry options; "categorical": the 2x10 tutorial VAE, "bernoulli": the 200-Bernoulli VAE)
EXPENSIVE = {
    "rodeo": ("bernoulli", {}),
    "double_cv": ("bernoulli", {}),
    "arsm": ("categorical", {}),
    "indecater": ("categorical", {}),
    "rebar": ("categorical", {}),
    "gumbel_rao": ("categorical", {}),
    "unordered": ("categorical", {}),
    "sum_and_sample": ("categorical", {}),
}

#: estimator -> backward passes its method needs beyond leave-one-out's one (RODEO / double CV: the cost's gradient
#: in the values; REBAR: the gradient of its variance objective, through the first backward pass)
EXTRA_BACKWARDS = {"rodeo": 1, "double_cv": 1, "rebar": 1}


def _inclusion_ratio_ms(elbo, data):
    """The unordered set estimator's own arithmetic: its inclusion ratios (both orders) at the step's shapes."""
    from pyro_discrete.gumbel import inclusion_log_ratios

    k = elbo.num_particles
    log_p = torch.randn(k, data.shape[0]).clamp(max=-0.5) - 2
    log_rest = torch.full((data.shape[0],), -0.7)
    inclusion_log_ratios(log_p, log_rest)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        inclusion_log_ratios(log_p, log_rest)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


#: estimator -> f(elbo, data): ms of arithmetic its method needs that leave-one-out's step does not have
EXTRA_ARITHMETIC = {"unordered": _inclusion_ratio_ms}

#: the k of the unordered set estimator's growth rows
SET_SIZES = (8, 12, 20)

#: estimator -> (the issue's target for the time ratio to leave-one-out at equal evaluations, what it needs on top)
TARGETS = {
    "rodeo": (2.5, "one backward pass for the cost's gradient in the values; its network at K(K-1)(1+D) points"),
    "double_cv": (2.5, "one backward pass for the cost's gradient in the values"),
    "arsm": (1.0, "none: a replay is a model evaluation (target: no dearer than a particle's)"),
    "indecater": (1.0, "none: a replay is a model evaluation (target: no dearer than a particle's)"),
    "rebar": (2.0, "the relaxed evaluations' backward pass, the control variate's variance gradient"),
    "gumbel_rao": (None, "biased; 1 evaluation and 10 Rao samples of the relaxation"),
    "unordered": (2.0, "the inclusion ratios: an integral on a 360-point grid per sample and pair (in the floor)"),
    "sum_and_sample": (1.5, "the top-k of the joint and one draw outside it"),
}


def _model(kind):
    return DiscreteVAE(2, 10) if kind == "categorical" else BernoulliVAE(200)


def _svi(name, kind, options):
    torch.manual_seed(0)
    pyro.clear_param_store()
    vae = _model(kind)
    elbo = REGISTRY[name].make(max_plate_nesting=1, **options)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), loss=elbo)
    return vae, elbo, svi


def _cum(stats, predicate):
    return sum(cum for (filename, _, func), (_, _, _, cum, _) in stats.stats.items() if predicate(filename, func))


def _peak_mb(name, kind, options, data):
    def build():
        _, _, svi = _svi(name, kind, options)
        return lambda: svi.step(data)

    peak, _ = memory_use(build, torch.device("cpu"))
    return peak / 2**20


def profile(name, kind, options, data, steps, rounds):
    vae, elbo, svi = _svi(name, kind, options)
    svi.step(data)
    evaluations = elbo.num_evaluations
    loo_options = {"num_particles": max(2, evaluations)}
    _, loo_elbo, loo_svi = _svi("loo", kind, loo_options)
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
        loo_svi.step(data)
    profiler.disable()
    stats = pstats.Stats(profiler)
    loo_total = _cum(stats, lambda f, func: func == "step" and f.endswith(os.path.join("infer", "svi.py")))
    loo_backward = _cum(stats, lambda f, func: func == "backward" and f.endswith(os.path.join("torch", "_tensor.py")))
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
    ms, loo_ms = statistics.median(times), statistics.median(loo_times)
    peak, loo_peak = _peak_mb(name, kind, options, data), _peak_mb("loo", kind, loo_options, data)
    target, extra = TARGETS.get(name, (None, ""))
    ratio = ms / loo_ms
    # the floor: leave-one-out's step at the same evaluations, plus the backward passes the method adds (each
    # priced at leave-one-out's, its share of the profiled step times the timed step)
    floor = loo_ms * (1 + EXTRA_BACKWARDS.get(name, 0) * loo_backward / loo_total)
    if name in EXTRA_ARITHMETIC:
        floor += EXTRA_ARITHMETIC[name](elbo, data)
    label = name if not options else "{} ({})".format(name, ", ".join("{}={}".format(*kv) for kv in options.items()))
    return {
        "estimator": label,
        "model": "2x10 VAE, batch 64" if kind == "categorical" else "200-Bernoulli VAE, batch 100",
        "evaluations per step": evaluations,
        "ms per step": ms,
        "leave-one-out ms (same evaluations)": loo_ms,
        "ratio": ratio,
        "floor ms": floor,
        "ratio to floor": ms / floor,
        "target": "≤ {:g}".format(target) if target else "–",
        "met": "–" if not target else ("yes" if ratio <= target else "no"),
        "peak MB": peak,
        "leave-one-out peak MB": loo_peak,
        "memory ratio": peak / loo_peak,
        "model and guide %": 100 * models / total,
        "backward %": 100 * backward / total,
        "optimizer %": 100 * optim / total,
        "the rest %": 100 * (total - models - backward - optim) / total,
        "extra the method needs": extra,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimators", default=",".join(EXPENSIVE))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--before",
        action="store_true",
        help="write profile_estimators_before.csv (run with PYTHONPATH at the code before a change); the "
        "main run puts its ms per step and ratio next to its own",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="one batch size for both models (default: 64 for the 2x10 VAE, 100 for the 200-Bernoulli VAE); the "
        "results go to profile_estimators_b<batch>.{csv,md}",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    data, source = benchmark_data()
    jobs = []
    for name in args.estimators.split(","):
        kind, options = EXPENSIVE.get(name, ("categorical", {}))
        jobs.append((name, kind, options))
        if name == "unordered":
            jobs += [(name, kind, {"num_particles": k}) for k in SET_SIZES]
    rows = []
    for name, kind, options in jobs:
        size = args.batch or (64 if kind == "categorical" else 100)
        row = profile(name, kind, options, data[:size], args.steps, args.rounds)
        if args.batch:
            row["model"] = row["model"].rsplit(",", 1)[0] + ", batch {}".format(size)
        rows.append(row)
        print(
            "{:>28}: {:.1f} ms ({:.2f}x loo at {} evaluations), {:.0f} MB ({:.2f}x), model/guide {:.0f}%, "
            "backward {:.0f}%, rest {:.0f}%".format(
                row["estimator"],
                row["ms per step"],
                row["ratio"],
                row["evaluations per step"],
                row["peak MB"],
                row["memory ratio"],
                row["model and guide %"],
                row["backward %"],
                row["the rest %"],
            ),
            flush=True,
        )
    import csv

    os.makedirs(RESULTS, exist_ok=True)
    before_path = os.path.join(RESULTS, "profile_estimators_before.csv")
    if args.before:
        with open(before_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print("wrote", before_path)
        return 0
    if os.path.exists(before_path) and not args.batch:
        with open(before_path) as f:
            before = {r["estimator"]: r for r in csv.DictReader(f)}
        for row in rows:
            old = before.get(row["estimator"])
            row["before: ms per step"] = float(old["ms per step"]) if old else math.nan
            row["before: ratio"] = float(old["ratio"]) if old else math.nan
            row["before: peak MB"] = float(old["peak MB"]) if old else math.nan
    columns = list(rows[0])
    if "before: ms per step" in columns:  # each before column next to its after
        for column, after in (
            ("before: ms per step", "ms per step"),
            ("before: ratio", "ratio"),
            ("before: peak MB", "peak MB"),
        ):
            columns.remove(column)
            columns.insert(columns.index(after), column)
    preamble = [
        "# Where the step of the expensive estimators goes",
        "",
        "Data: {}. Each estimator with its registered options, next to leave-one-out with as many particles as "
        "the estimator's model evaluations per step (what every estimator shares: those evaluations, one "
        "backward pass, the optimizer step); the floor adds what the method itself needs: its backward passes, "
        "each priced at leave-one-out's (its profiled share of the step), and for the unordered set estimator "
        "its inclusion ratios, timed alone at the step's shapes; timed interleaved in one process on "
        "{} CPU thread(s); peak MB: "
        "the largest tensor memory of one step. The shares come from a cProfile run of the same steps, which "
        "slows Python more than tensor code.{} `python benchmarks/profile_estimators.py` (see its "
        "docstring).".format(
            source,
            args.threads,
            ""
            if args.batch
            else " The before columns: the same script in the same session on the code before the optimizations "
            "(`--before`, PYTHONPATH at that commit).",
        ),
        "",
    ]
    name = "profile_estimators" if not args.batch else "profile_estimators_b{}".format(args.batch)
    if args.batch:
        preamble[0] += " (batch {})".format(args.batch)
    _, md = write_table(rows, name, columns, preamble)
    print("wrote", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

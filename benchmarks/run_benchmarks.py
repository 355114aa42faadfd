# SPDX-License-Identifier: Apache-2.0
"""
The benchmark suite: ms per SVI step and peak memory of every estimator on the
Storchastic tutorial's VAE (784-512-256 encoder, mirrored decoder), each next
to a hand-written PyTorch step of the same estimator (``handwritten.py``) timed
in the same run, interleaved. One thing varies at a time from the base point
(2x10 latents, batch 64, 10 particles): particles 1/4/16/64, batch 64/256/1024,
latents 2x10/20x10::

    python benchmarks/run_benchmarks.py                 # the whole grid, CPU
    python benchmarks/run_benchmarks.py --quick         # base point only
    python benchmarks/run_benchmarks.py --device cuda   # on a GPU

Writes ``benchmarks/results/grid[_<device>].{csv,md}``. Columns: ms/step of the
Pyro estimator (``pyro_discrete`` or Pyro's own, through ``pyro.infer.SVI``),
of its hand-written step, their ratio; peak memory of one step (CPU: tensor
memory allocated during the step, from ``torch.profiler``; CUDA:
``torch.cuda.max_memory_allocated``) and its ratio. Pyro's validation is off
(as in production runs); the hand-written steps validate nothing either.
"""

import argparse
import copy
import itertools
import os
import platform
import statistics
import sys
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import DiscreteVAE, benchmark_data, write_table  # noqa: E402
from handwritten import make_step  # noqa: E402

from pyro_discrete import ARSMELBO, ExpectELBO, RelaxedConcreteELBO, TraceScoreELBO, VarGradELBO  # noqa: E402

# estimator -> (make ELBO from particles, hand-written loss, uses particles, needs enumeration)
ESTIMATORS = {
    "TraceScoreELBO(loo)": (lambda s: TraceScoreELBO(num_particles=s, baseline="loo", max_plate_nesting=1), "loo", True, False),
    "VarGradELBO": (lambda s: VarGradELBO(num_particles=s, max_plate_nesting=1), "vargrad", True, False),
    "ARSMELBO": (lambda s: ARSMELBO(max_plate_nesting=1), "arsm", False, False),
    "RelaxedConcreteELBO": (lambda s: RelaxedConcreteELBO(num_particles=s, temperature=0.5, max_plate_nesting=1),
                            "concrete", True, False),
    "ExpectELBO": (lambda s: ExpectELBO(max_plate_nesting=1), "expect", False, True),
    "pyro Trace_ELBO": (lambda s: Trace_ELBO(num_particles=s, vectorize_particles=True, max_plate_nesting=1),
                        "score", True, False),
    "pyro TraceEnum_ELBO": (lambda s: TraceEnum_ELBO(max_plate_nesting=1), "expect", False, True),
}


def grid(quick):
    base = {"latents": 2, "batch": 64, "particles": 10}
    if quick:
        return [dict(base, varied="base")]
    points = [dict(base, varied="base")]
    points += [dict(base, particles=p, varied="particles") for p in (1, 4, 16, 64)]
    points += [dict(base, batch=b, varied="batch") for b in (256, 1024)]
    points += [dict(base, latents=20, varied="latents")]
    return points


def peak_memory(step, device):
    """Peak memory allocated during one call of ``step`` (bytes)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    import gc

    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # every allocation and free of the step, in order (frees of blocks allocated
    # before the step are not reported by the profiler)
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def time_pair(steps, device, warmup, rounds, per_round):
    """Interleaved rounds: name -> median ms/step."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            sync()
            start = time.perf_counter()
            for _ in range(per_round):
                fn()
            sync()
            times[name].append(1000 * (time.perf_counter() - start) / per_round)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run_point(point, names, data, device, args, progress):
    K, B, S = point["latents"], point["batch"], point["particles"]
    torch.manual_seed(0)
    base = DiscreteVAE(latents=K).to(device)
    batches = itertools.cycle([b.to(device) for b in data[: B * 4].split(B)])
    rows = []
    for name in names:
        make_elbo, hand_name, uses_particles, enumerates = ESTIMATORS[name]
        if enumerates and K > 3:
            continue  # 10**20 configurations
        if not uses_particles and point["varied"] == "particles":
            continue  # particles do not apply
        if hand_name in ("loo", "vargrad") and S < 2:
            continue  # leave-one-out needs 2 particles
        s = S if uses_particles else 1
        vae_pyro = copy.deepcopy(base)
        vae_pyro.name = "bench"
        pyro.clear_param_store()
        model, guide = vae_pyro.model, vae_pyro.guide
        if name == "pyro TraceEnum_ELBO":
            model, guide = separate_model_guide(vae_pyro)
        svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=make_elbo(s))
        vae_hand = copy.deepcopy(base)
        hand = make_step(hand_name, vae_hand)
        steps = {"pyro": lambda: svi.step(next(batches)), "hand": lambda: hand(next(batches), s)}
        per_round = max(1, args.steps // max(1, (B * s) // 640))
        ms = time_pair(steps, device, args.warmup, args.rounds, per_round)
        mem = {k: peak_memory(fn, device) for k, fn in steps.items()}
        row = {
            "estimator": name, "varied": point["varied"], "latents": "{}x10".format(K), "batch": B,
            "particles": s if uses_particles else "-",
            "ms/step": ms["pyro"], "hand-written ms/step": ms["hand"], "time ratio": ms["pyro"] / ms["hand"],
            "peak MB": mem["pyro"] / 2**20, "hand-written peak MB": mem["hand"] / 2**20,
            "memory ratio": mem["pyro"] / max(mem["hand"], 1),
        }
        rows.append(row)
        progress("{:>20} K={:<2} B={:<4} S={:<3} {:8.2f} ms vs {:8.2f} ms ({:.2f}x)  {:7.1f} MB vs {:7.1f} MB ({:.2f}x)".format(
            name, K, B, s, ms["pyro"], ms["hand"], row["time ratio"], row["peak MB"], row["hand-written peak MB"],
            row["memory ratio"]))
    return rows


def separate_model_guide(vae):
    """The tutorial VAE with one site per latent, for Pyro's TraceEnum_ELBO."""
    import pyro.distributions as dist

    def model(x):
        pyro.module(vae.name + ".decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            zs = [pyro.sample("z{}".format(k), dist.OneHotCategorical(logits=x.new_zeros(vae.categories)))
                  for k in range(vae.latents)]
            z = torch.stack(torch.broadcast_tensors(*zs), -2)
            pyro.sample("x", dist.Bernoulli(logits=vae.decode(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module(vae.name + ".encoder", vae.encoder)
        logits = vae.encode(x)
        with pyro.plate("data", x.shape[0]):
            for k in range(vae.latents):
                pyro.sample("z{}".format(k), dist.OneHotCategorical(logits=logits[..., k, :]))

    return model, config_enumerate(guide, "parallel")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--quick", action="store_true", help="the base point only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per round at the base point")
    parser.add_argument("--out", default=None, help="table name (default grid or grid_<device>)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.estimators.split(",")]
    device = torch.device(args.device)
    pyro.enable_validation(False)
    data, source = benchmark_data(1024 * 4)
    points = grid(args.quick)
    print("data: {}; torch {} on {} ({} threads, {}); {} points".format(
        source, torch.__version__, device, torch.get_num_threads(), platform.processor() or platform.machine(),
        len(points)), flush=True)
    rows = []
    for point in points:
        rows += run_point(point, names, data, device, args, lambda s: print(s, flush=True))
    name = args.out or ("grid" if device.type == "cpu" else "grid_" + device.type)
    csv_path, md_path = write_table(rows, name, list(rows[0]))
    print("wrote", csv_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

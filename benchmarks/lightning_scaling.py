# SPDX-License-Identifier: Apache-2.0
"""
Steps per second on 1 and 2 processes: runs ``examples/lightning_ddp.py``
(the tutorial VAE on the bundled digits, Lightning's DDP on CPU with gloo)
for a fixed number of steps and collects its ``metrics.json``.

Two settings per estimator: the same batch *per process* (weak scaling: two
processes see twice the examples per step) and the same *global* batch split
in two (strong scaling). The step time is the median after the first five
steps, so process start-up is excluded. Writes
``benchmarks/results/lightning/scaling.{csv,md}``::

    pip install -e ".[lightning,examples]"
    python benchmarks/lightning_scaling.py --steps 60
"""

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "results", "lightning")


def run(estimator, devices, batch, steps, particles):
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            os.path.join(ROOT, "examples", "lightning_ddp.py"),
            "--estimator",
            estimator,
            "--devices",
            str(devices),
            "--batch-size",
            str(batch),
            "--max-steps",
            str(steps),
            "--epochs",
            "1000",
            "--particles",
            str(particles),
            "--out",
            out,
            "--quiet",
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // devices)))
        subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(out, "metrics.json")) as f:
            return json.load(f)


def _typed(row):
    """A row read back from ``scaling.csv``, with its numbers as numbers."""
    out = dict(row)
    for key in ("processes", "batch_per_process", "global_batch"):
        out[key] = int(out[key])
    for key in ("ms_per_step", "examples_per_second", "final_loss"):
        out[key] = float(out[key])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimators", nargs="+", default=["loo", "vargrad", "expect"])
    parser.add_argument("--steps", type=int, default=60, help="steps per run")
    parser.add_argument("--batch", type=int, default=64, help="batch per process (weak) / global batch (strong)")
    parser.add_argument("--particles", type=int, default=4)
    args = parser.parse_args(argv)
    rows = []
    for estimator in args.estimators:
        for scaling, devices, batch in [
            ("-", 1, args.batch),
            ("weak", 2, args.batch),
            ("strong", 2, args.batch // 2),
        ]:
            m = run(estimator, devices, batch, args.steps, args.particles)
            row = {
                "estimator": estimator,
                "processes": devices,
                "scaling": scaling,
                "batch_per_process": batch,
                "global_batch": batch * devices,
                "ms_per_step": round(m["ms_per_step"], 2),
                "examples_per_second": round(m["examples_per_second"], 1),
                "final_loss": round(m["final_loss"], 3),
            }
            rows.append(row)
            print(
                "{estimator:10s} {processes} process(es) {scaling:6s} batch {batch_per_process:4d}/process: "
                "{ms_per_step:8.2f} ms/step {examples_per_second:8.1f} examples/s".format(**row),
                flush=True,
            )
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "scaling.csv")
    if os.path.exists(path):  # keep the estimators not measured now
        with open(path) as f:
            kept = [r for r in csv.DictReader(f) if r["estimator"] not in args.estimators]
        rows = [_typed(r) for r in kept] + rows
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    base = {r["estimator"]: r for r in rows if r["processes"] == 1}
    lines = [
        "# Lightning DDP on CPU: 1 and 2 processes",
        "",
        "`python benchmarks/lightning_scaling.py --steps {}` on {} ({} CPU cores), torch {}, "
        "gloo; the tutorial VAE's networks (512-256 MLPs, 2 x 10-way latents) on the bundled 8x8 digits, {} particles. "
        "Median step after the first five. *weak*: the same batch per process; *strong*: the same global "
        "batch split between the processes. Speed-up: examples per second against 1 process.".format(
            args.steps, platform.machine(), os.cpu_count(), torch.__version__, args.particles
        ),
        "",
        "| estimator | processes | scaling | batch / process | ms / step | examples / s | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = r["examples_per_second"] / base[r["estimator"]]["examples_per_second"]
        lines.append(
            "| {estimator} | {processes} | {scaling} | {batch_per_process} | {ms_per_step:.1f} | "
            "{examples_per_second:.0f} | {speedup:.2f} |".format(speedup=speedup, **r)
        )
    with open(os.path.join(OUT, "scaling.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", os.path.join(OUT, "scaling.md"))


if __name__ == "__main__":
    main()

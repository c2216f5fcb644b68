"""What the discovery cache saves in sweeps: the shipped sweeps run with the cache off and on, on the built-in model.

Each run goes through the CLI in this process (as `python -m lit_hspace.sweep` runs them), in a fresh folder
(runs/ and the cache start empty), with W&B disabled. Printed: wall time of every run, the totals, the ratios
the cache is judged by, and how many subspace solves each run took from the cache or computed.

    python benchmarks/sweep_cache.py                       # rank grid, r_C-only rerun, method comparison
    python benchmarks/sweep_cache.py --parts rerun         # one part
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from lit_hspace.cli import main as cli
from lit_hspace.directions import DirectionSet
from lit_hspace.sweep import expand, load_sweep

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], cache: bool) -> tuple[float, int, int]:
    """(wall seconds, solves from the cache, solves computed) of one run in the current folder."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli(args + [f"--model.init_args.discovery.cache={str(cache).lower()}", "--trainer.enable_progress_bar=false"])
    seconds = time.perf_counter() - start
    newest = max(Path("runs").glob("*/version_*"), key=lambda p: p.stat().st_mtime)
    sets = [DirectionSet.load(p) for p in sorted((newest / "directions").glob("*.safetensors"))]
    cached = sum(s.meta["convergence"].get("solves_cached", 0) for s in sets)
    computed = sum(s.meta["convergence"].get("solves_computed", 0) for s in sets)
    return seconds, cached, computed


def absolute(args: list[str]) -> list[str]:
    return [str(REPO / a) if a.endswith(".yaml") else a for a in args]


def in_fresh_folder(runs: list[list[str]], cache: bool, label: str) -> list[float]:
    """Run each in order in a new empty folder; print one row per run."""
    times = []
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        for i, args in enumerate(runs, 1):
            seconds, cached, computed = run(absolute(args), cache)
            times.append(seconds)
            changed = " ".join(a.split(".")[-1] for a in args if a.startswith("--") and "=" in a)
            print(f"| {label} | {i} | {changed} | {seconds:.1f} | {cached} | {computed} |", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["ranks", "rerun", "methods"], choices=["ranks", "rerun", "methods"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    os.environ["WANDB_MODE"] = "disabled"
    logging.getLogger("lightning").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| part | run | swept | wall (s) | solves cached | solves computed |")
    print("| --- | --- | --- | --- | --- | --- |")
    summary = []
    if "ranks" in args.parts:
        grid = expand(load_sweep(REPO / "sweeps/ranks.yaml"))
        off = in_fresh_folder(grid, cache=False, label="ranks, no cache")
        on = in_fresh_folder(grid, cache=True, label="ranks, cache")
        summary += [
            f"rank grid ({len(grid)} runs): no cache {sum(off):.0f} s, cache {sum(on):.0f} s "
            f"({sum(off) / sum(on):.1f}x faster); cached grid / one uncached run = {sum(on) / off[0]:.2f} (target <= 2)",
        ]
    if "rerun" in args.parts:
        base = ["test", "--config", "configs/synth/jive_face.yaml"]
        first, second = in_fresh_folder([base, base + ["--model.init_args.method.init_args.rank_joint=20"]], cache=True, label="r_C rerun")
        summary.append(f"second run, only r_C changed: {second:.1f} s = {second / first:.2f} of the first run's {first:.1f} s (target <= 0.4)")
    if "methods" in args.parts:
        grid = expand(load_sweep(REPO / "sweeps/method.yaml"))
        off = in_fresh_folder(grid, cache=False, label="methods, no cache")
        on = in_fresh_folder(grid, cache=True, label="methods, cache")
        summary.append(f"method comparison ({len(grid)} runs): no cache {sum(off):.0f} s, cache {sum(on):.0f} s ({sum(off) / sum(on):.2f}x)")
    print()
    for line in summary:
        print(f"- {line}")


if __name__ == "__main__":
    main()

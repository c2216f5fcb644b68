"""What the discovery cache saves in sweeps: the shipped sweeps run with the cache off and on, on the built-in model.

Each run goes through the CLI in this process (as `python -m lit_hspace.sweep` runs them), in a fresh folder
(runs/ and the cache start empty), with W&B disabled. Printed: wall time of every run, the part of it spent
sampling edits (which no cache can share: each setting edits with its own directions), the totals, the ratios
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
from lit_hspace.editing import Editor
from lit_hspace.sweep import expand, load_sweep

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def edit_timer():
    """Seconds spent in Editor.edit (sampling the reconstruction and every edit) while inside, in a list of one."""
    spent, edit = [0.0], Editor.edit

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return edit(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    Editor.edit = timed
    try:
        yield spent
    finally:
        Editor.edit = edit


def run(args: list[str], cache: bool) -> tuple[float, float, int, int]:
    """(wall seconds, of them sampling edits, solves from the cache, solves computed) of one run in the current folder."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), edit_timer() as editing:
        cli(args + [f"--model.init_args.discovery.cache={str(cache).lower()}", "--trainer.enable_progress_bar=false"])
    seconds = time.perf_counter() - start
    newest = max(Path("runs").glob("*/version_*"), key=lambda p: p.stat().st_mtime)
    sets = [DirectionSet.load(p) for p in sorted((newest / "directions").glob("*.safetensors"))]
    cached = sum(s.meta["convergence"].get("solves_cached", 0) for s in sets)
    computed = sum(s.meta["convergence"].get("solves_computed", 0) for s in sets)
    return seconds, editing[0], cached, computed


def absolute(args: list[str]) -> list[str]:
    return [str(REPO / a) if a.endswith(".yaml") else a for a in args]


def in_fresh_folder(runs: list[list[str]], cache: bool, label: str) -> tuple[list[float], list[float]]:
    """Run each in order in a new empty folder; print one row per run. Returns the wall times and the edit times."""
    times, edits = [], []
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        for i, args in enumerate(runs, 1):
            seconds, editing, cached, computed = run(absolute(args), cache)
            times.append(seconds)
            edits.append(editing)
            changed = " ".join(a.split(".")[-1] for a in args if a.startswith("--") and "=" in a)
            print(f"| {label} | {i} | {changed} | {seconds:.1f} | {editing:.1f} | {cached} | {computed} |", flush=True)
    return times, edits


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
    print("| part | run | swept | wall (s) | of it edit sampling (s) | solves cached | solves computed |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary = []
    if "ranks" in args.parts:
        grid = expand(load_sweep(REPO / "sweeps/ranks.yaml"))
        off, _ = in_fresh_folder(grid, cache=False, label="ranks, no cache")
        on, on_edits = in_fresh_folder(grid, cache=True, label="ranks, cache")
        budget = 2 * off[0] - on[0]  # what the target leaves the later runs, after the first cached run
        summary += [
            f"rank grid ({len(grid)} runs): no cache {sum(off):.0f} s, cache {sum(on):.0f} s "
            f"({sum(off) / sum(on):.1f}x faster); cached grid / one uncached run = {sum(on) / off[0]:.2f} (target <= 2)",
            f"cached grid, runs 2-{len(grid)}: {sum(on[1:]):.0f} s, of it edit sampling {sum(on_edits[1:]):.0f} s; "
            f"the target leaves them {budget:.0f} s (2 x {off[0]:.1f} s - the first cached run's {on[0]:.1f} s)",
        ]
    if "rerun" in args.parts:
        base = ["test", "--config", "configs/synth/jive_face.yaml"]
        (first, second), _ = in_fresh_folder([base, base + ["--model.init_args.method.init_args.rank_joint=20"]], cache=True, label="r_C rerun")
        summary.append(f"second run, only r_C changed: {second:.1f} s = {second / first:.2f} of the first run's {first:.1f} s (target <= 0.4)")
    if "methods" in args.parts:
        grid = expand(load_sweep(REPO / "sweeps/method.yaml"))
        off, _ = in_fresh_folder(grid, cache=False, label="methods, no cache")
        on, _ = in_fresh_folder(grid, cache=True, label="methods, cache")
        summary.append(f"method comparison ({len(grid)} runs): no cache {sum(off):.0f} s, cache {sum(on):.0f} s ({sum(off) / sum(on):.2f}x)")
    print()
    for line in summary:
        print(f"- {line}")


if __name__ == "__main__":
    main()

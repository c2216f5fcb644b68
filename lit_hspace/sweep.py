"""Run a W&B sweep file on this machine, without W&B: `python -m lit_hspace.sweep sweeps/ranks.yaml`.

The same files run with `wandb sweep` and `wandb agent`: their `command` is the CLI call and each
parameter is a CLI key (`--model.init_args.timestep=0.4`; `config` picks a config file). Here the grid
is expanded, every run's arguments are parsed first, so that a key the CLI does not know stops the sweep
before any run starts, and then the runs go one after another, each a run of its own (run directory,
W&B run, run.json with its status). A failed point stops the sweep unless `--continue-on-error`; every
point's outcome goes to a ledger (`--ledger`, by default runs/sweeps/<sweep>.json), and `--resume` skips
the points it records as finished.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from lit_hspace.cli import main as cli

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def load_sweep(path: str | Path) -> dict[str, Any]:
    sweep = yaml.safe_load(Path(path).read_text())
    if not isinstance(sweep, dict) or "parameters" not in sweep:
        raise ValueError(f"'{path}' is not a W&B sweep file: it has no `parameters`")
    if sweep.get("method", "grid") != "grid":
        raise ValueError(f"'{path}': the local runner expands grids only (method: grid), not method: {sweep['method']}")
    for key, spec in sweep["parameters"].items():
        if not isinstance(spec, dict) or not ({"values", "value"} & set(spec)):
            raise ValueError(f"'{path}': parameter '{key}' needs `values` (a list) or `value` for a grid")
    return sweep


def base_arguments(sweep: dict[str, Any]) -> list[str]:
    """The sweep's command without the interpreter, the module and the W&B macros: [subcommand, --config, ...]."""
    command = [c for c in sweep.get("command", []) if c not in ("${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}")]
    start = next((i for i, c in enumerate(command) if c in SUBCOMMANDS), None)
    if start is None:
        raise ValueError(f"the sweep's command {sweep.get('command')} names none of the subcommands {SUBCOMMANDS}")
    return command[start:]


def grid_values(spec: dict[str, Any]) -> list[Any]:
    """A parameter's values: its `values`, or its single `value`."""
    return spec["values"] if "values" in spec else [spec["value"]]


def format_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def expand(sweep: dict[str, Any]) -> list[list[str]]:
    """One argument list per grid point; `config` goes first, as later keys override a config's."""
    keys = list(sweep["parameters"])
    values = [grid_values(spec) for spec in sweep["parameters"].values()]
    runs = []
    for point in itertools.product(*values):
        args = base_arguments(sweep)
        chosen = dict(zip(keys, point))
        if "config" in chosen:
            args[1:1] = ["--config", str(chosen.pop("config"))]
        runs.append(args + [f"--{key}={format_value(value)}" for key, value in chosen.items()])
    return runs


def parse_error(args: list[str]) -> str | None:
    """Parse a run's arguments without building anything; the CLI's complaint, or None if they parse."""
    errors = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        try:
            cli(args + ["--print_config"])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                lines = [line.strip() for line in errors.getvalue().splitlines()]
                return ([line.removeprefix("error: ") for line in lines if line.startswith("error:")] or [f"exit code {exit_.code}"])[0]
    return None


def check(sweep: dict[str, Any], runs: list[list[str]]) -> None:
    """Every sweep key is known to the CLI and every run's arguments parse, before any run starts."""
    base = base_arguments(sweep)
    if "config" in sweep["parameters"]:  # keys below the model's class exist once a config names it
        base[1:1] = ["--config", str(grid_values(sweep["parameters"]["config"])[0])]
    for key, spec in sweep["parameters"].items():
        if key != "config":
            error = parse_error(base + [f"--{key}={format_value(grid_values(spec)[0])}"])
            if error:
                raise ValueError(f"sweep key '{key}' is not accepted by the CLI ({error})")
    for run in runs:
        error = parse_error(run)
        if error:
            raise ValueError(f"sweep run `python -m lit_hspace {' '.join(run)}` does not parse ({error})")


@dataclass
class PointOutcome:
    """How one grid point of a sweep went, as the ledger records it."""

    args: list[str]
    status: Literal["finished", "failed"]
    run: str | None = None  # its run directory, where it got one
    error: str | None = None


class Ledger:
    """Each point's outcome in one JSON file, rewritten atomically after every point, so a sweep that stops (an error,
    a killed process) can be resumed: the points it records as finished are skipped."""

    def __init__(self, path: Path):
        self.path = path
        self.points: dict[str, PointOutcome] = {}
        if path.is_file():
            for entry in json.loads(path.read_text())["points"]:
                outcome = PointOutcome(**entry)
                self.points[json.dumps(outcome.args)] = outcome

    def finished(self, args: list[str]) -> PointOutcome | None:
        outcome = self.points.get(json.dumps(args))
        return outcome if outcome is not None and outcome.status == "finished" else None

    def record(self, outcome: PointOutcome) -> None:
        self.points[json.dumps(outcome.args)] = outcome
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps({"points": [asdict(o) for o in self.points.values()]}, indent=2) + "\n")
        partial.replace(self.path)


def run_point(args: list[str]) -> PointOutcome:
    """One point through the CLI in this process; its run ends (and its W&B run with it) before the next starts."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # intended: the sweep passes the args
        try:
            done = cli(args)
        except Exception as err:  # noqa: BLE001 - the point failed; the sweep decides whether to go on
            traceback.print_exc()
            return PointOutcome(args, "failed", error=f"{type(err).__name__}: {err}")
    return PointOutcome(args, "finished", run=done.trainer.log_dir)


def main(argv: list[str] | None = None) -> list[PointOutcome]:
    parser = argparse.ArgumentParser(prog="lit-hspace-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a W&B sweep file (method: grid)")
    parser.add_argument("--dry-run", action="store_true", help="check and list the runs, run none")
    parser.add_argument("--continue-on-error", action="store_true", help="go on past a failed point (it is recorded as failed)")
    parser.add_argument("--resume", action="store_true", help="skip the points the ledger records as finished")
    parser.add_argument("--ledger", type=Path, help="where each point's outcome is recorded (default runs/sweeps/<sweep>.json)")
    args = parser.parse_args(argv)

    sweep = load_sweep(args.sweep)
    runs = expand(sweep)
    check(sweep, runs)
    ledger = Ledger(args.ledger or Path("runs") / "sweeps" / f"{Path(args.sweep).stem}.json")
    outcomes = []
    for i, run in enumerate(runs, 1):
        done = ledger.finished(run) if args.resume else None
        print(f"[{i}/{len(runs)}] python -m lit_hspace {' '.join(run)}" + (f"  (finished before: {done.run})" if done else ""), flush=True)
        if args.dry_run or done:
            continue
        outcome = run_point(run)
        ledger.record(outcome)
        outcomes.append(outcome)
        if outcome.status == "failed" and not args.continue_on_error:
            raise SystemExit(f"sweep point {i}/{len(runs)} failed ({outcome.error}); recorded in {ledger.path}. "
                             "Rerun with --resume to go on from there, or --continue-on-error to run past failed points.")
    failed = [o for o in outcomes if o.status == "failed"]
    print(f"sweep: {len(outcomes) - len(failed)} points finished, {len(failed)} failed; ledger {ledger.path}", flush=True)
    return outcomes


if __name__ == "__main__":
    main()

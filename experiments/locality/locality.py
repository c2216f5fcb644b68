"""Locality and transfer of the methods' mouth directions on the built-in synthetic faces.

Each method runs its configs/synth/<method>_mouth.yaml through the CLI on the same N images at the same
strengths, and is scored by the factor probe against the known factors. The images are dataset faces
(`--source faces`, default: the generator's faces i = 0 .. N-1 with known factors, inverted exactly) or the
model's samples (`--source seeds`, seeds 0 .. N-1):

- locality: directions discovered on each image and applied to it;
- transfer: directions discovered once, on a reference image (number --reference), or on a set of images
  (--pool-sizes: images reference .. reference + size - 1, their operators summed, `discovery.pool`), named after
  the factor each moves most on those images, then applied to --transfer-images unseen images.

Tables average the per-edit rows of each run's edits.csv over images, the first `edit.per_group`
directions and every non-zero strength.

    python experiments/locality/locality.py --num-images 8 --out /tmp/locality.md
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import platform
import re
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.stats import bootstrap
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from lit_hspace.cli import main as cli
from lit_hspace.segment.truth import changeable_pixels, dataset_factors
from lit_hspace.synth.faces import FACTORS, render, sample_factors
from lit_hspace.synth.probe import FactorProbe

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "synth"
FIRST_FACE = 40_000_000  # dataset faces: synth_face(FIRST_FACE + i), outside the model's training seeds
REGION_FACTORS = {region: [f.name for f in FACTORS if f.region == region] for region in {f.region for f in FACTORS}}


def data_source(source: str, seeds: list[int], batch_size: int = 1) -> str:
    """The run's data: seeds (samples of the model) or dataset faces (the generator's faces with their factors, inverted)."""
    if source == "seeds":
        return "--data=" + json.dumps({"class_path": "lit_hspace.data.HSpaceData", "init_args": {"seeds": seeds, "batch_size": batch_size}})
    first = FIRST_FACE + seeds[0]  # seeds here are always a range: faces first .. first + len - 1
    init = {"num_images": len(seeds), "first_seed": first, "batch_size": batch_size}
    return "--data=" + json.dumps({"class_path": "lit_hspace.synth.data.DatasetFaces", "init_args": init})


# The papers' protocol whatever the configs' defaults: edits from t = 0.6T, strengths in absolute units (a = 50)
# unless --units says otherwise.
PROTOCOL = ["--model.init_args.diffusion.timestep=0.6", "--model.init_args.edit.units=absolute"]


def run(command: str, method: str, seeds: list[int], strengths: list[float], save_dir: Path, *extra: str, source: str = "seeds",
        batch_size: int = 1, region: str = "mouth", joint: list[str] | None = None,
        entry: Callable[[str], str | dict] = str) -> Path:
    """One CLI run of the method's config on seeds or on dataset faces (numbered like seeds); returns its run directory.
    joint: JIVE's regions (default: its config's); entry: a region's config entry from its name (default: the name
    alone, the synth preset's box)."""
    name = f"{method}_{command}_{len(list(save_dir.glob('*')))}"
    # JIVE finds every region's directions together; its config edits those of one region.
    regions = [entry(r) for r in ((joint or []) if method == "jive" else [region])]
    cli([
        command, "--config", str(CONFIGS / f"{method}_mouth.yaml"),
        data_source(source, seeds, batch_size),
        f"--model.init_args.edit.strengths={strengths}",
        *PROTOCOL,
        "--trainer.logger=" + json.dumps({"class_path": "lit_hspace.tracking.RunLogger", "init_args": {"save_dir": str(save_dir), "name": name}}),
        "--trainer.enable_progress_bar=false",
        *([f"--model.init_args.edit.regions=[{region}]"] if method == "jive" else []),
        *([f"--model.init_args.regions={json.dumps(regions)}"] if regions else []),
        *extra,
    ])
    return save_dir / name / "version_0"


def moved_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "edits.csv").open() as f:
        return [row for row in csv.DictReader(f) if float(row["strength"]) != 0]


def region_change(row: dict, region: str) -> float:
    """The largest change among a region's factors."""
    return max(abs(float(row[f"d_{name}"])) for name in REGION_FACTORS[region])


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def locality(rows: list[dict]) -> dict[str, float]:
    inside, outside = mean(float(r["mse_inside"]) for r in rows), mean(float(r["mse_outside"]) for r in rows)
    return {
        "edits": len(rows),
        "MSE inside": inside,
        "MSE outside": outside,
        "outside / inside": outside / inside,
        "share inside": mean(float(r["inside_share"]) for r in rows),
        "target factor change": mean(float(r["factor_target"]) for r in rows),
        "off-target change": mean(float(r["factor_off_target"]) for r in rows),
        "mouth factors": mean(region_change(r, "mouth") for r in rows),
        "eye factors": mean(region_change(r, "eyes") for r in rows),
    }


def top_factor(rows: list[dict]) -> str:
    """The factor these edits move most, on average."""
    return max((f.name for f in FACTORS), key=lambda n: mean(abs(float(r[f"d_{n}"])) for r in rows))


def by_direction(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows of each edited direction."""
    grouped = defaultdict(list)
    for row in rows:
        grouped[row["direction"]].append(row)
    return grouped


def names_by_top_factor(rows: list[dict]) -> dict[str, str]:
    """Each edited direction named after the factor it moves most over all these rows (images and strengths)."""
    return {direction: top_factor(rs) for direction, rs in by_direction(rows).items()}


def specificity(rows: list[dict]) -> dict[str, tuple[str, float]]:
    """Per edited direction: the factor it moves most over these rows, and how many times more than any other."""
    found = {}
    for direction, rs in by_direction(rows).items():
        change = sorted(((mean(abs(float(r[f"d_{f.name}"])) for r in rs), f.name) for f in FACTORS), reverse=True)
        found[direction] = (change[0][1], change[0][0] / max(change[1][0], 1e-12))
    return found


def most_specific(reference_rows: list[dict], unseen: dict[str, dict[str, float | str]]) -> dict[str, dict[str, str | float]]:
    """Per factor named on the reference images: the direction that moves it most specifically there (chosen on
    the reference images only), and how it transferred."""
    best: dict[str, tuple[str, float]] = {}
    for direction, (factor, ratio) in specificity(reference_rows).items():
        if factor not in best or ratio > best[factor][1]:
            best[factor] = (direction, ratio)
    return {factor: {"direction": direction, "times its next factor, on the reference": ratio,
                     "moves its named factor most, unseen": unseen[direction]["moves its named factor most"]}
            for factor, (direction, ratio) in sorted(best.items())}


def consistency(rows: list[dict], reference_names: dict[str, str]) -> dict[str, dict[str, float | str]]:
    """Per direction: mean and spread over images of its per-image mean changes, and how often the factor it
    moves most is the one it was named after on the reference image."""
    per_image: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        per_image[row["direction"]][row["image"]].append(row)
    table = {}
    for direction, images in per_image.items():
        target = [mean(float(r["factor_target"]) for r in rs) for rs in images.values()]
        off = [mean(float(r["factor_off_target"]) for r in rs) for rs in images.values()]
        name = reference_names.get(direction, "")
        top = {image: top_factor(rs) for image, rs in images.items()}
        named = re.sub(r"_\d+$", "", name)  # "smile_3": a second smile direction
        passed = [image for image, t in top.items() if t == named]
        instead = Counter(t for t in top.values() if t != named).most_common()
        margin = {image: bound_margin(image, named) for image in images}
        table[direction] = {
            "named on the reference": name,
            "images": len(images),
            "moves its named factor most": f"{len(passed)}/{len(images)}",
            "a generator edit of that factor alone, read by the probe": probe_reads_alone(named, tuple(images)),
            "moves most instead": ", ".join(f"{factor} {count}" for factor, count in instead) or "-",
            "named factor's distance to its nearer bound, passed / not": (
                f"{mean_or_dash([margin[i] for i in passed])} / {mean_or_dash([margin[i] for i in images if i not in passed])}"),
            "target change, mean": statistics.fmean(target),
            "target change, sd": statistics.stdev(target) if len(target) > 1 else 0.0,
            "off-target change, mean": statistics.fmean(off),
            "off-target change, sd": statistics.stdev(off) if len(off) > 1 else 0.0,
        }
    return table


GENERATOR_STEPS = (-0.5, -0.25, 0.25, 0.5)  # fractions of a factor's range


@functools.cache
def factor_probe() -> FactorProbe:
    return FactorProbe.load().eval()


@functools.cache  # several directions share a name: each factor's count is computed once
def probe_reads_alone(factor: str, images: tuple[str, ...]) -> str:
    """On how many of these dataset faces the factor probe reads generator edits of `factor` alone (GENERATOR_STEPS,
    clipped to its range) as moving `factor` most: what a perfectly disentangled direction would score."""
    known = {f.name: f for f in FACTORS}
    if factor not in known:
        return "-"
    probe, f = factor_probe(), known[factor]
    size = probe.image_size
    read = lambda values: pil_to_tensor(render(values, size)).float() / 255  # noqa: E731
    count = 0
    for image_id in images:
        start = face_factors(image_id)
        if start is None:
            return "-"
        moved = [start | {factor: f.stepped(start[factor], s)} for s in GENERATOR_STEPS]
        with torch.no_grad():
            change = (probe(torch.stack([read(v) for v in moved])) - probe(read(start)[None])).abs().mean(0)
        count += FACTORS[int(change.argmax())].name == factor
    return f"{count}/{len(images)}"


def face_factors(image_id: str) -> dict[str, float] | None:
    """A dataset face's factor values, from its id (synth<seed>); None for other images."""
    match = re.fullmatch(r"synth(\d+)", image_id)
    return None if match is None else sample_factors(np.random.default_rng(int(match.group(1))))


def bound_margin(image_id: str, factor: str) -> float | None:
    """How far a dataset face's factor starts from the nearer end of its range (normalised: 0 .. 0.5); None for
    other images. An edit cannot move a factor past its end, so one that starts near it has less room to move."""
    known, start = {f.name: f for f in FACTORS}, face_factors(image_id)
    if start is None or factor not in known:
        return None
    value = start[factor]
    position = (value - known[factor].low) / (known[factor].high - known[factor].low)
    return min(position, 1 - position)


def mean_or_dash(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.fmean(values):.2f}" if values else "-"


def publish(report: str, out: Path | None) -> None:
    """Print the report, and write it to `out` where given."""
    print(report)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + "\n")


def markdown(table: dict[str, dict], first: str) -> str:
    columns = list(next(iter(table.values())))
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for key, row in table.items():
        cells = [f"{v:d}" if isinstance(v, int) else f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_image(rows: list[dict], key: str) -> dict[str, float]:
    """The mean of a per-edit column over each image's edits."""
    grouped = defaultdict(list)
    for row in rows:
        grouped[row["image"]].append(float(row[key]))
    return {image: mean(values) for image, values in grouped.items()}


def paired_ratio(box: dict[str, float], auto: dict[str, float]) -> tuple[float, float, float]:
    """mean(auto) / mean(box) over the same images, and its 95% interval from a paired bootstrap over images."""
    images = sorted(box)
    b, a = np.array([box[i] for i in images]), np.array([auto[i] for i in images])

    def ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(y, axis=axis) / np.mean(x, axis=axis)

    interval = bootstrap((b, a), ratio, paired=True, n_resamples=9999, rng=np.random.default_rng(0)).confidence_interval
    return float(ratio(b, a)), float(interval.low), float(interval.high)


def compare_auto_regions(args: argparse.Namespace) -> None:
    """Each method on the same images twice, on the preset box and on the automatic region of that name (with
    --truth-regions, a third time on the ground-truth region): how much its directions move the region's factors
    (target) and the others (off-target). The ratios to the box come with a 95% interval from a paired bootstrap over
    images, since the faces differ far more than the runs. With several --region, the runs share one discovery
    cache: JIVE finds every region's directions at once, so the later regions only edit."""
    seeds = list(range(args.first_image, args.first_image + args.num_images))
    ratios = {"target factor change": "factor_target", "off-target change": "factor_off_target"}
    region_grow = dict(parse_grow(g) for g in args.region_grow)
    grown = (f"--model.init_args.segmentation.grow={args.grow}",) if args.grow else ()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        # Each variant: a region's config entry from its name, and the settings its runs add.
        variants: dict[str, tuple[Callable[[str], str | dict], tuple[str, ...]]] = {
            "preset box": (str, ()),
            "automatic": (lambda r: {"name": r, "auto": True} | ({"grow": region_grow[r]} if r in region_grow else {}), grown),
        }
        if args.truth_regions:
            truth = write_truth_masks(seeds, sorted({*args.region, *args.jive_regions}), Path(tmp) / "truth")
            variants["ground truth"] = (lambda r: {"name": r, "mask": str(truth[r])}, ())
        for region in args.region:
            table, off_target = {}, {}
            others = [f.name for f in FACTORS if f.region != region]
            for method in args.methods:
                rows = {}
                scaled = ("--model.init_args.method.init_args.scale_blocks=true",) if method == "jive" and args.jive_scale_blocks else ()
                for variant, (entry, settings) in variants.items():
                    start = time.perf_counter()
                    rows[variant] = moved_rows(run("test", method, seeds, args.strengths, Path(tmp), *scaled, *settings, source=args.source,
                                                   region=region, joint=args.jive_regions, entry=entry))
                    scores = locality(rows[variant])
                    table[f"{method}, {variant}"] = {
                        key: scores[key] for key in ("edits", *ratios, "MSE inside", "MSE outside")
                    } | {"wall time, s": time.perf_counter() - start}
                for variant in list(variants)[1:]:
                    cells = {}
                    for key, column in ratios.items():
                        value, low, high = paired_ratio(per_image(rows["preset box"], column), per_image(rows[variant], column))
                        cells[key] = f"{value:.2f} ({low:.2f} - {high:.2f})"
                    table[f"{method}, {variant} / box (95% interval)"] = {key: cells.get(key, "") for key in table[f"{method}, preset box"]}
                for name in others:  # which factors the off-target change is made of
                    change = {variant: mean(abs(float(r[f"d_{name}"])) for r in rows[variant]) for variant in variants}
                    off_target[f"{method}: {name}"] = change | {f"{v} / box": change[v] / change["preset box"] for v in list(variants)[1:]}
            sections += [f"## {region}", markdown(table, "method, regions"),
                         f"Mean change of each factor outside the {region} (the off-target change is their mean):",
                         markdown(off_target, "method: factor")]
    command = (f"python experiments/locality/locality.py --auto-regions --methods {' '.join(args.methods)} --source {args.source} "
               f"--num-images {args.num_images}" + (f" --first-image {args.first_image}" if args.first_image else "")
               + f" --region {' '.join(args.region)} --strengths {' '.join(f'{s:g}' for s in args.strengths)}"
               + (f" --units {args.units}" if args.units != "absolute" else "")
               + (f" --jive-regions {' '.join(args.jive_regions)}" if "jive" in args.methods else "")
               + (" --jive-scale-blocks" if args.jive_scale_blocks else "") + (f" --grow {args.grow}" if args.grow else "")
               + (f" --region-grow {' '.join(args.region_grow)}" if args.region_grow else "")
               + (" --truth-regions" if args.truth_regions else ""))
    growth = ([f"every region grown apart by {args.grow} pixel(s)"] if args.grow else []) + [f"{n} grown by {g} pixel(s)" for n, g in region_grow.items()]
    images = f"faces {seeds[0]} .. {seeds[-1]}" if args.source == "faces" else f"seeds {seeds[0]} .. {seeds[-1]}"
    report = "\n\n".join([
        f"# Directions on automatic regions against the preset boxes: {', '.join(args.region)}",
        f"`{command}` on {platform.machine()} ({torch.get_num_threads()} threads), torch {torch.__version__}. Each method's "
        f"configs/synth/<method>_mouth.yaml on the same images ({images}), once with its regions as the synth preset's boxes and once "
        f"as automatic regions of the same names (lit_hspace.segment defaults{'; ' + ', '.join(growth) if growth else ''})"
        + ("; and once as the ground-truth regions, the pixels each region's factors can change (lit_hspace.segment.truth, "
           "the same on every dataset face), as mask files" if args.truth_regions else "")
        + f". JIVE's regions are {', '.join(args.jive_regions)}. "
        "Target = the largest change among the region's factors, off-target = the mean change of the other factors (factor probe, a factor's range = 1). "
        "MSE inside and outside are each measured in the run's own mask, so they do not compare across the runs.",
        *sections,
    ])
    publish(report, args.out)


def write_truth_masks(seeds: list[int], regions: list[str], folder: Path) -> dict[str, Path]:
    """Each region's ground truth on dataset faces `seeds` as a mask file in `folder`; the truth is the same on every
    face (the factors move parts within fixed places), which is checked, so one file serves the whole run."""
    folder.mkdir(parents=True)
    paths = {}
    for region in regions:
        masks = [changeable_pixels(dataset_factors(i), region, 32) for i in seeds]
        if any(not torch.equal(m, masks[0]) for m in masks):
            raise SystemExit(f"--truth-regions: the ground truth of '{region}' differs between faces {seeds[0]} .. {seeds[-1]}; "
                             "one mask file cannot stand for it")
        paths[region] = folder / f"{region}.png"
        to_pil_image(masks[0]).save(paths[region])
    return paths


def parse_grow(text: str) -> tuple[str, int]:
    """NAME=PIXELS, as --region-grow takes it."""
    name, _, pixels = text.partition("=")
    if not name or not pixels.isdigit():
        raise SystemExit(f"--region-grow {text!r}: give NAME=PIXELS, e.g. mouth=1")
    return name, int(pixels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["haas", "jive", "rbe"])
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--reference", type=int, default=1000, help="number of the first reference image for transfer")
    parser.add_argument("--pool-sizes", type=int, nargs="+", default=[1],
                        help="transfer from sets of this many images (reference .. reference + size - 1; 1: one image)")
    parser.add_argument("--transfer-images", type=int, default=None, help="unseen images the transfer is measured on (default: --num-images)")
    parser.add_argument("--skip-locality", action="store_true", help="measure transfer only")
    parser.add_argument("--region", nargs="+", default=["mouth"],
                        help="the region (of the synth preset) the directions are found for; --auto-regions takes several")
    parser.add_argument("--first-image", type=int, default=0, help="--auto-regions: the number of the first image (default 0)")
    parser.add_argument("--strengths", type=float, nargs="+", default=[-50, -25, 25, 50])
    parser.add_argument("--source", choices=["seeds", "faces"], default="faces",
                        help="faces: the generator's faces with known factors, inverted (default); seeds: the model's samples")
    parser.add_argument("--auto-regions", action="store_true",
                        help="compare directions found on automatic regions with those found on the preset boxes (locality only)")
    parser.add_argument("--jive-regions", nargs="+", default=["eyes", "mouth", "nose", "brows"],
                        help="auto regions: JIVE's regions, found together (default: its config's four)")
    parser.add_argument("--jive-scale-blocks", action="store_true",
                        help="--auto-regions: JIVE with each region's block scaled to unit Frobenius norm (its scale_blocks)")
    parser.add_argument("--grow", type=int, default=0,
                        help="--auto-regions: grow the automatic regions by this many pixels (segmentation.grow)")
    parser.add_argument("--region-grow", nargs="+", default=[], metavar="NAME=PIXELS",
                        help="--auto-regions: grow these automatic regions alone (a region's grow), e.g. mouth=1")
    parser.add_argument("--truth-regions", action="store_true",
                        help="--auto-regions, faces: also run on the ground-truth regions (the pixels each region's factors can change)")
    parser.add_argument("--per-group", type=int, help="transfer: edited directions per region (default: the config's, 3)")
    parser.add_argument("--timestep", type=float, help="transfer: the edit timestep as a fraction of T (default: the config's, 0.6)")
    parser.add_argument("--rotation", choices=["none", "varimax"], default="none",
                        help="transfer: rotate each method's directions (the method's `rotation`; default: none)")
    parser.add_argument("--units", choices=["absolute", "h_norm", "output"], default="absolute",
                        help="what --strengths measure (docs/strengths.md); output units compare models of other scales")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()
    PROTOCOL[1] = f"--model.init_args.edit.units={args.units}"
    if args.truth_regions and not (args.auto_regions and args.source == "faces"):
        raise SystemExit("--truth-regions needs --auto-regions and --source faces: only dataset faces have a ground truth")
    if args.auto_regions:
        return compare_auto_regions(args)
    if len(args.region) > 1:
        raise SystemExit(f"--region {' '.join(args.region)}: several regions need --auto-regions")
    args.region = args.region[0]

    seeds = list(range(args.num_images))
    unseen = list(range(args.transfer_images or args.num_images))
    overall, by_strength, transfer, specific, seconds = {}, {}, {}, {}, {}
    transfer_settings = () if args.per_group is None else (f"--model.init_args.edit.per_group={args.per_group}",)
    if args.timestep is not None:
        transfer_settings += (f"--model.init_args.diffusion.timestep={args.timestep}",)
    if args.rotation != "none":
        transfer_settings += (f"--model.init_args.method.init_args.rotation={args.rotation}",)
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            if not args.skip_locality:
                start = time.perf_counter()
                rows = moved_rows(run("test", method, seeds, args.strengths, Path(tmp), source=args.source, region=args.region))
                seconds[method] = time.perf_counter() - start
                overall[method] = locality(rows)
                for strength in sorted({abs(float(r["strength"])) for r in rows}):
                    by_strength[f"{method}, abs(a) = {strength:g}"] = locality([r for r in rows if abs(float(r["strength"])) == strength])

            # Transfer: discover on the reference image(s), name each direction after the factor it moves most there,
            # then edit the unseen images with the same set.
            for size in args.pool_sizes:
                references = list(range(args.reference, args.reference + size))
                pooled = ("--model.init_args.discovery.pool=true",) if size > 1 else ()
                reference_run = run("test", method, references, args.strengths, Path(tmp), *pooled, *transfer_settings, source=args.source, batch_size=size, region=args.region)
                (artifact,) = (reference_run / "directions").glob("*.safetensors")
                reference_rows = moved_rows(reference_run)
                reference_names = names_by_top_factor(reference_rows)
                given = f"--model.init_args.discovery.directions={artifact}"
                rows = moved_rows(run("test", method, unseen, args.strengths, Path(tmp), given, *transfer_settings, source=args.source, region=args.region))
                source = f"{method}, from {size} image{'s' if size > 1 else ''}"
                found = consistency(rows, reference_names)
                for direction, stats in found.items():
                    transfer[f"{source}, direction {direction}"] = stats
                for factor, stats in most_specific(reference_rows, found).items():
                    specific[f"{source}, {factor}"] = stats

    command = (f"python experiments/locality/locality.py --methods {' '.join(args.methods)} --source {args.source} --num-images {args.num_images} "
               f"--region {args.region} --reference {args.reference} --pool-sizes {' '.join(map(str, args.pool_sizes))} --transfer-images {len(unseen)} "
               f"--strengths {' '.join(f'{s:g}' for s in args.strengths)}" + (" --skip-locality" if args.skip_locality else "")
               + (f" --per-group {args.per_group}" if args.per_group else "") + (f" --timestep {args.timestep:g}" if args.timestep else "") + (f" --rotation {args.rotation}" if args.rotation != "none" else "")
               + (f" --units {args.units}" if args.units != "absolute" else ""))
    report = "\n\n".join([
        f"# Locality and transfer on the synthetic faces: {args.region} directions",
        f"`{command}` on {platform.machine()} ({torch.get_num_threads()} threads), torch {torch.__version__}. "
        + (f"{args.num_images} dataset faces (synth_face({FIRST_FACE} + i), i = 0 .. {args.num_images - 1}, inverted by the default "
         "fixed-point inversion; their factors are known, so each edit starts from a known point)" if args.source == "faces"
         else f"{args.num_images} samples (seeds 0 .. {args.num_images - 1})")
        + f", strengths {args.strengths}; each method's settings are "
        f"those of configs/synth/<method>_mouth.yaml with regions [{args.region}]. MSE on images in [0, 1] against the "
        f"reconstruction; share inside = the part of an edit's squared pixel change that falls inside the {args.region} box. "
        "Factor changes in normalised units (a factor's whole range = 1), read by the factor probe: target = the largest "
        f"change among the {args.region}'s factors ({', '.join(REGION_FACTORS[args.region])}), off-target = the mean change "
        "of the other factors; mouth / eye factors = the largest change among that region's factors.",
        *([] if args.skip_locality else [
            "## Locality: directions found on each image",
            markdown(overall, "method"),
            "By edit strength:",
            markdown(by_strength, "method, strength"),
            "Wall time (discovery and edits of all images): " + ", ".join(f"{m} {s:.0f} s" for m, s in seconds.items()),
        ]),
        f"## Transfer: directions found on image {args.reference} or on images {args.reference} .. {args.reference} + size - 1, "
        f"applied to {len(unseen)} unseen images (0 .. {len(unseen) - 1})",
        "A set of several images is found from their operators summed (`discovery.pool`). Each direction is named after "
        "the factor it moves most on the images it was found on (mean over them and the strengths). Per direction, over the "
        "unseen images: how many of them it moves its named factor most on; the factors it moves most on the others; how far "
        "the named factor starts from the nearer end of its range on the faces it passed and failed (0 .. 0.5: an edit "
        "cannot push a factor past its end); on how many the probe reads generator edits of the named factor alone "
        f"(steps {', '.join(f'{s:+g}' for s in GENERATOR_STEPS)} of its range) as moving it most, the score of a perfectly "
        "disentangled direction; and the mean and standard deviation of the per-image mean change.",
        markdown(transfer, "method, source, direction"),
        "Per factor, the direction that moves it most specifically on the images it was found on (its change over the "
        "next largest factor's; chosen there, not on the unseen images), and how it transferred:",
        markdown(specific, "method, source, factor"),
    ])
    publish(report, args.out)


if __name__ == "__main__":
    main()

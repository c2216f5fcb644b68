"""Convert checkpoints of other codebases into diffusers model directories that lit_hspace (and diffusers) load.

    python -m lit_hspace.convert adm CHECKPOINT.pt --preset p2-ffhq --out DIR
    python -m lit_hspace.convert adm CHECKPOINT.pt --flags "--image_size 256 --num_channels 128 ..." --out DIR
    python -m lit_hspace.convert adm --list
    python -m lit_hspace.convert ddim CHECKPOINT.ckpt --out DIR [--config celeba_hq.yml | --image-size 256]

adm: OpenAI's UNetModel (guided-diffusion, improved-diffusion, P2-weighting, ILVR), with the flags of the
checkpoint's README. ddim: ermongroup/ddim's Model (SDEdit's checkpoints). docs/models.md lists the checkpoints.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lit_hspace.convert import adm, ddim_repo
from lit_hspace.convert.checkpoint import as_state_dict, check_out_dir, h_shape, load_tensors, sha256, write_model_dir
from lit_hspace.convert.flags import CODEBASES, flags_dict, parse_flags, scheduler_config, unet_config
from lit_hspace.convert.presets import PRESETS, preset

__all__ = ["convert_adm", "convert_ddim", "main"]


def convert_adm(path: str | Path, out: str | Path, flags: str | None = None, preset_name: str | None = None,
                codebase: str = "guided-diffusion") -> dict:
    """Convert an OpenAI-format checkpoint; returns the UNet2DModel config written."""
    path, out = Path(path), Path(out)
    if (flags is None) == (preset_name is None):
        raise ValueError("give the checkpoint's flags (--flags \"...\") or a preset (--preset NAME), one of the two")
    if preset_name is not None:
        chosen = preset(preset_name)
        flags, codebase = chosen.flags, chosen.codebase
    parsed = parse_flags(flags, codebase)
    config, scheduler = unet_config(parsed), scheduler_config(parsed)  # bad flags fail before the file is read
    check_out_dir(out)
    state = as_state_dict(load_tensors(path, "OpenAI-format .pt"), path)
    provenance = {"format": "adm", "source": path.name, "sha256": sha256(path), "preset": preset_name,
                  "codebase": codebase, "flags": flags_dict(parsed)}
    write_model_dir(out, config, lambda unet: adm.convert_state_dict(state, parsed, unet), scheduler, provenance)
    return config


def convert_ddim(path: str | Path, out: str | Path, config_file: str | Path | None = None, image_size: int | None = None,
                 use_ema: bool = True) -> dict:
    """Convert a DDIM-repo checkpoint; returns the UNet2DModel config written."""
    path, out = Path(path), Path(out)
    check_out_dir(out)
    state, weights = _ddim_weights(load_tensors(path, "DDIM-repo .ckpt"), path, use_ema)
    found = ddim_repo.architecture(state)
    schedule = ddim_repo.DDIMSchedule()  # every published DDIM-repo and SDEdit model: linear 1e-4 .. 0.02, 1000 steps
    if config_file is not None:
        size, schedule = ddim_repo.read_config(Path(config_file), found)
        if image_size is not None and image_size != size:
            raise ValueError(f"--image-size {image_size} contradicts data.image_size {size} of '{config_file}'")
        image_size = size
    image_size = image_size or ddim_repo.default_image_size(found)
    config, scheduler = ddim_repo.unet_config(found, image_size), ddim_repo.scheduler_config(schedule)
    provenance = {"format": "ddim", "source": path.name, "sha256": sha256(path), "weights": weights,
                  "config": None if config_file is None else str(config_file), "image_size": image_size}
    convert = lambda unet: ddim_repo.convert_state_dict(state, found, {k: v.shape for k, v in unet.state_dict().items()})  # noqa: E731
    write_model_dir(out, config, convert, scheduler, provenance)
    return config


def _ddim_weights(obj: object, path: Path, use_ema: bool) -> tuple[dict, str]:
    """A plain state dict, or the repository's training checkpoint [model, optimizer, epoch, step(, ema)], whose
    last entry holds the EMA weights the repository samples with. DataParallel's "module." prefix is dropped."""
    weights = "state dict"
    if isinstance(obj, (list, tuple)):
        has_ema = len(obj) == 5 and isinstance(obj[-1], dict)
        obj, weights = (obj[-1], "EMA (last entry)") if use_ema and has_ema else (obj[0], "model (first entry)")
    state = as_state_dict(obj, path)
    return {k.removeprefix("module."): v for k, v in state.items()}, weights


def list_presets() -> str:
    rows = []
    for p in PRESETS.values():
        rows.append(f"{p.name}: {p.about}\n  file:  {p.file}\n  from:  {p.url}\n  flags ({p.codebase}): {p.flags}")
    return "\n".join(rows)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m lit_hspace.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="format", required=True)
    a = sub.add_parser("adm", help="OpenAI-format .pt (guided-diffusion, improved-diffusion, P2-weighting)")
    a.add_argument("checkpoint", nargs="?", type=Path)
    a.add_argument("--flags", help="the checkpoint's MODEL_FLAGS (and DIFFUSION_FLAGS) as its README prints them")
    a.add_argument("--preset", help="flags of a published checkpoint (see --list)")
    a.add_argument("--codebase", default="guided-diffusion", choices=list(CODEBASES), help="whose defaults --flags are read with")
    a.add_argument("--list", action="store_true", help="print the presets: where each checkpoint is published and its flags")
    a.add_argument("--out", type=Path, help="new directory for the diffusers model")
    d = sub.add_parser("ddim", help="ermongroup/ddim .ckpt (SDEdit's CelebA-HQ, LSUN bedroom and church)")
    d.add_argument("checkpoint", type=Path)
    d.add_argument("--out", type=Path, required=True, help="new directory for the diffusers model")
    d.add_argument("--config", type=Path, help="the repository config (configs/*.yml) it was trained with")
    d.add_argument("--image-size", type=int, help="without --config: default, the size that puts attention at 16 x 16")
    d.add_argument("--no-ema", dest="use_ema", action="store_false", help="a training checkpoint's raw weights, not its EMA")
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.format == "adm" and args.list:
        print(list_presets())
        return
    if args.format == "adm" and (args.checkpoint is None or args.out is None):
        parser().error("adm needs CHECKPOINT and --out DIR (or --list)")
    start = time.perf_counter()
    try:
        if args.format == "adm":
            config = convert_adm(args.checkpoint, args.out, args.flags, args.preset, args.codebase)
        else:
            config = convert_ddim(args.checkpoint, args.out, args.config, args.image_size, args.use_ema)
    except (ValueError, OSError) as err:
        sys.exit(f"error: {err}")
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s: {config['sample_size']} px, "
          f"h = {' x '.join(map(str, h_shape(config)))}; use it as the model: --model.init_args.model {args.out}")

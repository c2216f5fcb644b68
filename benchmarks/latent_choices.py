"""Two choices of latent models, measured on the built-in tiny-latent-sd (random weights: the numbers compare the
choices on one model; they say nothing about what Stable Diffusion's directions mean).

(1) Whose Jacobian (latent.jacobian): the guided prediction, the conditional or the unconditional branch alone. The
sampler runs the guided prediction, so an edit's first-order effect on each step is J_g v. For each choice's top-k
directions V (Haas, masked to the region) it prints the share of the optimum ||M J_g V||_F^2 / ||M J_g V_g||_F^2 they
reach (1 for V_g by construction), their locality (below), the products' time and the discovery's time.
(2) Where the region weighs the Jacobian (latent.mask): the noise prediction on the latent grid with the pixel mask
area-averaged over each cell, or the decoded predicted clean image masked in pixels (a VAE-decoder Jacobian in every
product). Locality of a direction v: the share of its first-order change of the decoded predicted image inside the
region, ||M D v||^2 / ||D v||^2 with D the Jacobian of the decoded guided prediction (the same D for every choice), and
the share of the change of the actual edited sample (h + a v from t down to 0, a = 25 % of ||h_t||, decoded) inside.

    python benchmarks/latent_choices.py --seeds 4 --k 5
"""

from __future__ import annotations

import argparse
import time

import torch

from lit_hspace.ddim import DDIM, Edit
from lit_hspace.discovery import find_directions
from lit_hspace.models import load_model
from lit_hspace.jacobian import JacobianOperator
from lit_hspace.methods import Haas
from lit_hspace.regions import resolve_regions
from lit_hspace.settings import LatentSettings
from timing import best_time

PROMPT = "a photo of a smiling face"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--region", default="mouth")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    choices = [(j, m) for m in ("latent", "decoded") for j in ("guided", "conditional", "unconditional")]
    models = {c: load_model("tiny-latent-sd", LatentSettings(prompt=PROMPT, guidance_scale=7.5, jacobian=c[0], mask=c[1])) for c in choices}
    reference = models[("guided", "decoded")]  # D: the decoded guided prediction
    ddim = DDIM(reference, args.steps)
    t = ddim.timestep_at(0.6)
    (region,) = resolve_regions([args.region], "celebahq")
    pixel_mask = region.to_mask(reference.pixel_shape[-1])[None]
    rows = {c: {"reach": [], "first_order": [], "edit": [], "discover_s": [], "product_s": []} for c in choices}
    print(f"tiny-latent-sd, prompt {PROMPT!r}, w = 7.5, region {args.region}, t = {t}, Haas k = {args.k}, {args.seeds} seeds, "
          f"{torch.get_num_threads()} thread(s)")
    for seed in range(args.seeds):
        x_T = torch.randn(1, *reference.image_shape, generator=torch.Generator().manual_seed(seed))
        latent = ddim.latent_from_noise(x_T, t)
        with torch.no_grad():
            enc = reference.encode(latent.x, t)
            plain = reference.to_image(ddim.sample(latent))
        decoded = JacobianOperator.of_decoder(reference, enc)
        guided_latent = JacobianOperator.of_decoder(models[("guided", "latent")], enc)
        lat_mask = models[("guided", "latent")].output_masks(pixel_mask)
        found = {}
        for choice, model in models.items():
            start = time.perf_counter()
            found[choice] = find_directions(model, Haas(k=args.k, tol=1e-4, max_iter=100), [region], pixel_mask, latent).directions
            rows[choice]["discover_s"].append(time.perf_counter() - start)
            with torch.no_grad():
                own = model.encode(latent.x, t)
            jac = JacobianOperator.of_decoder(model, own)
            jac.vjp(jac.jvp(found[choice][:1]))  # linearised once
            rows[choice]["product_s"].append(best_time(lambda: jac.vjp(jac.jvp(found[choice])), 3) / args.k)
        optimum = (lat_mask * guided_latent.jvp(found[("guided", "latent")])).square().sum()
        for choice, v in found.items():
            rows[choice]["reach"].append(((lat_mask * guided_latent.jvp(v)).square().sum() / optimum).item())
            change = decoded.jvp(v).square()
            rows[choice]["first_order"].append(((change * pixel_mask).sum() / change.sum()).item())
            a = 0.25 * enc.h.norm()
            with torch.no_grad():
                edited = reference.to_image(ddim.sample(latent.expand(args.k), edit=Edit(a * v, t)))
            moved = (edited - plain).square()
            rows[choice]["edit"].append(((moved * pixel_mask).sum() / moved.sum()).item())
    area = pixel_mask.mean().item()
    print(f"region area share {area:.3f} (a change spread evenly would put this share inside)")
    print(f"{'jacobian':14s}{'mask':9s}{'reach of J_g optimum':>22s}{'inside, 1st order':>19s}{'inside, edit':>14s}{'J^T J v s':>11s}{'discover s':>12s}")
    for (branch, mask), row in rows.items():
        mean = {key: sum(values) / len(values) for key, values in row.items()}
        print(f"{branch:14s}{mask:9s}{mean['reach']:22.3f}{mean['first_order']:19.3f}{mean['edit']:14.3f}"
              f"{mean['product_s']:11.4f}{mean['discover_s']:12.2f}")


if __name__ == "__main__":
    main()

"""Levers on the cost of discovery, each timed against what lit_hspace does by default, in one run per model.

Each row: the lever, lit_hspace's choice and the alternative, both timed (best of --repeats) at k directions,
their ratio (alternative / ours: above 1 means ours is faster) and how far the alternative's result is from
ours (relative max difference of the products, or the sine of the largest principal angle between top-k
subspaces, or the reconstruction error of inversion).

    python benchmarks/levers.py --model synth-faces --k 8
    python benchmarks/levers.py --model random-celebahq-256 --k 2 --repeats 1 --skip linearize compile bf16 inversion
    python benchmarks/levers.py --model random-celebahq-256 --k 1 --peak-memory linearize   # one set-up's memory
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time

import torch
from torch._dynamo.utils import counters
from torch.nn.attention import SDPBackend, sdpa_kernel

from lit_hspace.ddim import DDIM, Inversion
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import JacobianOperator, principal_angle_sine, subspace_iteration
from timing import best_time, peak_memory_mb

LEVERS = ("cache", "vmap", "jvp", "linearize", "attention", "channels_last", "compile", "bf16", "inversion")


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


class Report:
    def __init__(self):
        print("| lever | ours | alternative | ours (s) | alternative (s) | alternative / ours | difference |")
        print("| --- | --- | --- | --- | --- | --- | --- |")

    def row(self, lever, ours, other, t_ours, t_other, difference):
        t_other_cell = f"{t_other:.3f}" if isinstance(t_other, float) else t_other
        ratio = f"{t_other / t_ours:.2f}" if isinstance(t_other, float) else "-"
        print(f"| {lever} | {ours} | {other} | {t_ours:.3f} | {t_other_cell} | {ratio} | {difference} |", flush=True)


def top_subspace(jac, k: int) -> torch.Tensor:
    """(n, k) top right singular vectors to tol 1e-4, oversampled as the methods run."""
    found = subspace_iteration(jac, k, tol=1e-4, max_iter=200, generator=torch.Generator().manual_seed(0), oversample=k)
    return found.vectors[0].T


def setup(args: argparse.Namespace):
    """The model, t = 0.6T, a random x_t and its encoding."""
    torch.manual_seed(0)
    model = HSpaceUNet.from_pretrained(args.model).to(args.device)
    t = DDIM(model, 50).timestep_at(0.6)
    x_t = torch.randn(1, *model.image_shape, device=args.device)
    with torch.no_grad():
        enc = model.encode(x_t, t)
    return model, t, x_t, enc


def linearize_products(model: HSpaceUNet, enc, k: int):
    """(V -> J V, U -> J^T U) for k rows from torch.func.linearize: a traced graph of tangent operations
    (J V), and autograd through that linear graph (its transpose, J^T U)."""
    with sdpa_kernel(SDPBackend.MATH):
        _, jvp = torch.func.linearize(lambda hh: model.decode(hh, enc.expand(k)), enc.h.expand(k, *model.h_shape).clone())
    zero = torch.zeros(k, *model.h_shape, device=enc.h.device, requires_grad=True)
    out = jvp(zero)
    return jvp, lambda u: torch.autograd.grad(out, zero, u, retain_graph=True)[0]


def print_peak_memory(args: argparse.Namespace) -> None:
    """Print the peak memory (MB) of one set-up (ours or linearize) and one J^T J V, in this fresh process."""
    model, _, _, enc = setup(args)
    V = torch.randn(args.k, *model.h_shape, device=args.device)
    if args.peak_memory == "ours":
        jac = JacobianOperator.of_decoder(model, enc, chunk_size=args.k)
        jac.vjp(jac.jvp(V))
    else:
        jvp, vjp = linearize_products(model, enc, args.k)
        vjp(jvp(V))
    print(peak_memory_mb(args.device))


def peak_memory(args: argparse.Namespace, how: str) -> float:
    child = [sys.executable, __file__, "--model", args.model, "--k", str(args.k), "--device", args.device, "--peak-memory", how]
    return float(subprocess.run(child, check=True, capture_output=True, text=True).stdout.split()[-1])


def run(args: argparse.Namespace) -> None:
    device, k, repeats = args.device, args.k, args.repeats
    model, t, x_t, enc = setup(args)
    h = enc.h.expand(k, *model.h_shape)
    ours = JacobianOperator.of_decoder(model, enc, chunk_size=k)
    V = torch.randn(k, *model.h_shape, device=device)
    ours.vjp(ours.jvp(V))  # linearise
    both = lambda jac: jac.vjp(jac.jvp(V))  # noqa: E731
    t_both = best_time(lambda: both(ours), repeats)
    print(f"model {args.model}, k={k}, {device}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    report = Report()

    if "cache" in args.levers:
        with torch.no_grad():
            t_decode = best_time(lambda: model.decode(h, enc.expand(k)), repeats)
            t_full = best_time(lambda: model(x_t.expand(k, -1, -1, -1), t), repeats)
            diff = rel_diff(model(x_t, t), model.decode(enc.h, enc))
        report.row("part before h", "encoded once, forward = decode", "whole UNet per forward", t_decode, t_full, f"{diff:.1e}")

    if "vmap" in args.levers:
        single = JacobianOperator.of_decoder(model, enc, chunk_size=1)
        pull, push = single._linearised(1)
        vmapped = lambda: torch.func.vmap(lambda v: pull(push(v[None]))[0])(V)  # noqa: E731
        looped = lambda: torch.cat([pull(push(v[None])) for v in V])  # noqa: E731
        reference = both(ours)
        try:
            t_vmap = best_time(vmapped, repeats)
            report.row("k directions", "batch dimension", "torch.func.vmap", t_both, t_vmap, f"{rel_diff(vmapped(), reference):.1e}")
        except Exception as err:  # noqa: BLE001 - the point is to report what vmap does not support
            report.row("k directions", "batch dimension", "torch.func.vmap", t_both, f"fails: {type(err).__name__}", str(err)[:80])
        t_loop = best_time(looped, repeats)
        report.row("k directions", "batch dimension", "one at a time", t_both, t_loop, f"{rel_diff(looped(), reference):.1e}")

    if "jvp" in args.levers:
        t_jvp = best_time(lambda: ours.jvp(V), repeats)
        t_fwd = best_time(lambda: ours.jvp_forward_mode(V), repeats)
        diff = rel_diff(ours.jvp_forward_mode(V), ours.jvp(V))
        report.row("J V", "double backward (graph kept)", "forward-mode AD", t_jvp, t_fwd, f"{diff:.1e}")

    if "linearize" in args.levers:
        fresh = lambda: JacobianOperator.of_decoder(model, enc, chunk_size=k)._linearised(k)  # noqa: E731
        t_linearise = best_time(fresh, repeats)
        t_jvp = best_time(lambda: ours.jvp(V), repeats)
        JV = ours.jvp(V)
        t_vjp = best_time(lambda: ours.vjp(JV), repeats)
        start = time.perf_counter()
        traced_jvp, traced_vjp = linearize_products(model, enc, k)
        traced_vjp(traced_jvp(V))
        t_trace = time.perf_counter() - start
        t_traced = best_time(lambda: traced_jvp(V), repeats)
        t_transposed = best_time(lambda: traced_vjp(JV), repeats)
        report.row("J V", "double backward", "torch.func.linearize", t_jvp, t_traced, f"{rel_diff(traced_jvp(V), JV):.1e}")
        report.row("J^T U", "backward", "transpose of linearize", t_vjp, t_transposed, f"{rel_diff(traced_vjp(JV), ours.vjp(JV)):.1e}")
        report.row("set-up, once per image", "linearisation", "linearize: trace + first products", t_linearise, t_trace, "-")
        del traced_jvp, traced_vjp
        memory = {how: peak_memory(args, how) for how in ("ours", "linearize")}
        report.row(f"peak memory in MB (not s), {k} rows", "linearisation", "linearize", memory["ours"], memory["linearize"], "-")

    if "attention" in args.levers:
        with torch.no_grad():
            t_default = best_time(lambda: model.decode(h, enc.expand(k)), repeats)
            with sdpa_kernel(SDPBackend.MATH):
                t_math = best_time(lambda: model.decode(h, enc.expand(k)), repeats)
        report.row("attention in plain forwards", "default kernel", "math kernel", t_default, t_math, "-")

    if "channels_last" in args.levers:
        model.to(memory_format=torch.channels_last)
        with torch.no_grad():
            enc_cl = model.encode(x_t.contiguous(memory_format=torch.channels_last), t)
        cl = JacobianOperator.of_decoder(model, enc_cl, chunk_size=k)
        V_cl = V.contiguous(memory_format=torch.channels_last)
        cl.vjp(cl.jvp(V_cl))
        t_cl = best_time(lambda: cl.vjp(cl.jvp(V_cl)), repeats)
        report.row("memory format (J V, J^T U)", "contiguous", "channels_last", t_both, t_cl, f"{rel_diff(cl.vjp(cl.jvp(V_cl)), both(ours)):.1e}")
        model.to(memory_format=torch.contiguous_format)

    if "compile" in args.levers:
        compiled = torch.compile(model.decode)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(h, enc.expand(k))
        t_compile = time.perf_counter() - start
        with torch.no_grad():
            t_eager = best_time(lambda: model.decode(h, enc.expand(k)), repeats)
            t_compiled = best_time(lambda: compiled(h, enc.expand(k)), repeats)
        report.row("decode forward", "eager", f"torch.compile (compiling: {t_compile:.0f} s)", t_eager, t_compiled, "-")
        comp = JacobianOperator(lambda hh: compiled(hh, enc.expand(hh.shape[0])), enc.h, chunk_size=k)
        comp.vjp(comp.jvp(V))
        t_comp = best_time(lambda: comp.vjp(comp.jvp(V)), repeats)
        # Dynamo does not trace a compiled function called inside torch.func transforms: it runs it eagerly.
        eager = any("functorch" in reason for reason in counters["unimplemented"])
        note = "ran eagerly: compile does not trace inside torch.func" if eager else f"{rel_diff(comp.vjp(comp.jvp(V)), both(ours)):.1e}"
        report.row("J V, J^T U", "eager", "torch.compile", t_both, t_comp, note)
        torch._dynamo.reset()

    if "bf16" in args.levers:
        fresh = lambda: top_subspace(JacobianOperator.of_decoder(model, enc, chunk_size=2 * k), k)  # noqa: E731
        reference = fresh()
        t_f32 = best_time(fresh, 1)
        if device == "cuda":  # TF32 matmuls and convolutions, float32 everywhere else
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            t_tf32 = best_time(fresh, 1)
            angle = principal_angle_sine(reference, fresh()).item()
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            report.row(f"top-{k} directions to tol 1e-4", "float32", "TF32", t_f32, t_tf32, f"sine {angle:.2e}")
        low = copy.deepcopy(model).to(torch.bfloat16)
        with torch.no_grad():
            enc_low = low.encode(x_t.to(torch.bfloat16), t)
        t_low = best_time(lambda: top_subspace(Float32View(JacobianOperator.of_decoder(low, enc_low, chunk_size=2 * k)), k), 1)
        found = top_subspace(Float32View(JacobianOperator.of_decoder(low, enc_low, chunk_size=2 * k)), k)
        angle = principal_angle_sine(reference, found).item()
        report.row(f"top-{k} directions to tol 1e-4", "float32", "bfloat16 weights and activations", t_f32, t_low, f"sine {angle:.2e}")

    if "inversion" in args.levers:
        from lit_hspace.synth.faces import synth_face

        image = torch.stack([synth_face(seed, model.image_shape[-1])[0] for seed in (1, 2)]).to(device)
        reference = None
        for steps in args.inversion_steps:
            sched = DDIM(model, steps)
            t_s = sched.timestep_at(0.6)
            plain = Inversion("ddim")  # the lever is the number of steps: plain DDIM inversion, no clipping back
            to_t = lambda: sched.invert(image, stop=t_s, inversion=plain)  # noqa: E731
            to_T = lambda: sched.descend(sched.invert(image, inversion=plain), t_s)  # noqa: E731
            times = {"t": best_time(to_t, repeats), "T": best_time(to_T, repeats)}
            errors = {}
            for mode, fn in (("t", to_t), ("T", to_T)):
                latent = fn()
                errors[mode] = float((sched.sample(latent) - image).abs().mean() / 2)  # in [0, 1] units
                with torch.no_grad():
                    enc_s = model.encode(latent.x[:1], t_s)
                found = top_subspace(JacobianOperator.of_decoder(model, enc_s, chunk_size=2 * k), k)
                reference = found if reference is None else reference
                errors[mode] = f"recon MAE {errors[mode]:.3f}, sine vs first {principal_angle_sine(reference, found).item():.2f}"
            report.row(f"image -> x_t, {steps} DDIM steps", f"invert to t: {errors['t']}", f"invert to T, sample to t: {errors['T']}",
                       times["t"], times["T"], "-")


class Float32View:
    """A lower-precision JacobianOperator seen in float32 by the subspace iteration."""

    def __init__(self, jac: JacobianOperator):
        self.jac, self.in_shape, self.dim = jac, jac.in_shape, jac.dim
        self.h0 = jac.h0.float()

    def jvp(self, v):
        return self.jac.jvp(v.to(self.jac.h0.dtype)).float()

    def vjp(self, u):
        return self.jac.vjp(u.to(self.jac.h0.dtype)).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synth-faces")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=LEVERS)
    parser.add_argument("--inversion-steps", type=int, nargs="+", default=[100, 50, 20, 10])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-memory", choices=["ours", "linearize"],
                        help="only print the peak memory (MB) of this set-up and one J^T J V at batch k, then exit")
    args = parser.parse_args()
    if args.peak_memory:
        print_peak_memory(args)
        return
    args.levers = [lever for lever in LEVERS if lever not in args.skip]
    run(args)


if __name__ == "__main__":
    main()

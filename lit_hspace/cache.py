"""The discovery cache: the expensive intermediate results of discovery, stored once and reused by every later
run (and every sweep agent, DDP rank or process) that needs the same thing.

Three kinds of entries, each a safetensors file named by a digest of its key:

    <root>/latents/<digest>.safetensors   an image's (or seed's) latent x_t, per inversion settings
    <root>/solves/<digest>.safetensors    one converged subspace solve: vectors, values, basis
    <root>/parts/<digest>.safetensors     an image's automatic parts, per latent, preset and segmentation settings

A key holds everything that determines the result: the model's fingerprint, the operator's point (a digest
of x_t's values, t, dtype, device type), the masks' and any projection's values, k, width, tolerance,
iteration cap, solver, and the random generator's state before the solve. The full key is stored in the
entry and compared on every read: a digest collision, a foreign or a corrupt file is ignored with a warning
and recomputed, never trusted. Writes go to a private temporary file that is renamed into place (atomic on
one file system), so processes writing the same entry leave one valid file.

A hit also restores the generator's state after the solve, so a run that hits gives bit-identical results
to one that computes: the random starts of later solves do not depend on whether earlier ones were cached.

With `warm_start`, a block solve that misses starts from the basis of the last solve of the same problem
(same operator, masks and projection) with another k, width, tolerance or cap, kept under <root>/starts/:
fewer products (experiments/warm_start), but the result then depends, within the tolerance, on which solves ran
before, so it is off by default.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from lit_hspace.ddim import Latent
from lit_hspace.directions import canonical, save_atomically
from lit_hspace.jacobian import TruncatedSVD
from lit_hspace.segment import AutoRegion

FORMAT = "lit_hspace.cache/1"


def tensor_digest(x: Tensor | None) -> str | None:
    """A digest of a tensor's dtype, shape and values (None stays None)."""
    if x is None:
        return None
    x = x.detach().cpu().contiguous()
    header = f"{x.dtype}{tuple(x.shape)}".encode()
    return hashlib.sha256(header + x.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


@dataclass
class CacheCounts:
    hits: int = 0
    computed: int = 0


class DiscoveryCache:
    """Latents and converged solves under `root`; `root=None` disables it (everything is computed)."""

    def __init__(self, root: str | Path | None, warm_start: bool = False):
        self.root = None if root is None else Path(root)
        self.warm_start = warm_start and self.root is not None
        self.counts = CacheCounts()

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def path(self, kind: str, key_text: str) -> Path:
        return self.root / kind / f"{hashlib.sha256(key_text.encode()).hexdigest()[:40]}.safetensors"

    def read(self, kind: str, key: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """The entry's tensors and facts, or None where there is no valid entry for exactly this key."""
        if not self.enabled:
            return None
        text = canonical(key)
        path = self.path(kind, text)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            facts = json.loads(meta["facts"])
        except Exception as err:  # any unreadable file: a crash mid-copy, a truncated disk, not safetensors
            warnings.warn(f"discovery cache entry '{path}' is unreadable ({type(err).__name__}: {err}); recomputing it")
            return None
        if meta.get("format") != FORMAT or meta.get("key") != text:
            warnings.warn(f"discovery cache entry '{path}' holds another key than the one asked for; ignoring it and recomputing")
            return None
        return tensors, facts

    def write(self, kind: str, key: dict[str, Any], tensors: dict[str, Tensor], facts: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = canonical(key)
        save_atomically(tensors, self.path(kind, text), {"format": FORMAT, "key": text, "facts": json.dumps(facts)})

    def latent(self, key: dict[str, Any], compute: Callable[[], Latent], device: torch.device | str) -> Latent:
        """The latent for `key` (everything that decides it: model, image pixels or seed, schedule, inversion)."""
        found = self.read("latents", key)
        if found is not None:
            self.counts.hits += 1
            tensors, facts = found
            noise = tensors.get("noise")
            return Latent(tensors["x"].to(device), facts["t"], facts["clip"], None if noise is None else noise.to(device), facts["residual"])
        latent = compute()
        self.counts.computed += 1
        tensors = {"x": latent.x} | ({} if latent.noise is None else {"noise": latent.noise})
        self.write("latents", key, tensors, {"t": latent.t, "clip": latent.clip, "residual": latent.residual})
        return latent

    def parts(self, key: dict[str, Any], compute: Callable[[], list[AutoRegion]], device: torch.device | str) -> list[AutoRegion]:
        """The automatic parts for `key` (everything that decides them: model, latent, preset, segmentation)."""
        found = self.read("parts", key)
        if found is not None:
            self.counts.hits += 1
            tensors, facts = found
            masks = tensors["masks"].to(device, getattr(torch, facts["dtype"]))  # stored as 0/1 bytes
            return [AutoRegion(name, mask, share) for name, mask, share in zip(facts["names"], masks, facts["shares"], strict=True)]
        parts = compute()
        self.counts.computed += 1
        masks = torch.stack([part.mask for part in parts])
        facts = {"names": [p.name for p in parts], "shares": [p.share for p in parts], "dtype": str(masks.dtype).removeprefix("torch.")}
        self.write("parts", key, {"masks": masks.to(torch.uint8)}, facts)
        return parts

    def solves(self, operator: dict[str, Any], device: torch.device | str) -> CachedSolves:
        """The solve memo for one Jacobian operator (`operator`: what decides it, e.g. model, x_t digest, t)."""
        return CachedSolves(self, operator, device)


class CachedSolves:
    """`lit_hspace.methods.Solves` backed by a DiscoveryCache, for the solves on one operator."""

    def __init__(self, cache: DiscoveryCache, operator: dict[str, Any], device: torch.device | str):
        self.cache, self.operator, self.device = cache, operator, device

    def __call__(
        self, what: dict[str, Any], inputs: dict[str, Tensor | None], generator: torch.Generator,
        compute: Callable[[Tensor | None], TruncatedSVD],
    ) -> TruncatedSVD:
        problem = {"operator": self.operator, "kind": what["kind"], "inputs": {name: tensor_digest(x) for name, x in inputs.items()}}
        key = problem | {"solve": what, "generator": tensor_digest(generator.get_state())}
        found = self.cache.read("solves", key)
        if found is not None:
            self.cache.counts.hits += 1
            tensors, facts = found
            generator.set_state(tensors["generator_after"])
            on = {name: t.to(self.device) for name, t in tensors.items() if name != "generator_after"}
            return TruncatedSVD(on["vectors"], on["values"], facts["iterations"], facts["movement"], facts["products"],
                                on.get("basis"), facts["residual"])
        start = None
        if self.cache.warm_start and what["solver"] == "lobpcg":
            earlier = self.cache.read("starts", problem)
            start = None if earlier is None else earlier[0]["basis"].to(self.device)
        svd = compute(start)
        self.cache.counts.computed += 1
        tensors = {"vectors": svd.vectors, "values": svd.values, "generator_after": generator.get_state()}
        if svd.basis is not None:
            tensors["basis"] = svd.basis
        facts = {"iterations": svd.iterations, "movement": svd.movement, "products": svd.products, "residual": svd.residual,
                 "warm_started": start is not None}
        self.cache.write("solves", key, tensors, facts)
        if self.cache.warm_start and svd.basis is not None:
            self.cache.write("starts", problem, {"basis": svd.basis}, {})
        return svd

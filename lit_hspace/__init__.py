"""lit_hspace: local semantic directions in the h-space of diffusion models (Haas et al., JIVE, RBE, Rayleigh).

The core needs no Lightning: load a model, reach a latent, give regions, find directions, edit. Its names are
imported on first use, so that tools which only read runs (the report) load neither torch's models nor Lightning.
"""

from importlib import import_module

__version__ = "0.1.0"

_CORE = {
    "DDIM": "ddim", "Edit": "ddim", "Inversion": "ddim", "Latent": "ddim", "DirectionSet": "directions",
    "find_directions": "discovery", "HSpaceModel": "hspace", "HSpaceUNet": "hspace", "load_model": "models",
    "JIVE": "methods", "RBE": "methods", "Haas": "methods", "Rayleigh": "methods",
    "Region": "regions", "region_masks": "regions", "resolve_regions": "regions",
}
__all__ = list(_CORE)


def __getattr__(name: str):
    if name in _CORE:
        return getattr(import_module(f"lit_hspace.{_CORE[name]}"), name)
    raise AttributeError(f"module 'lit_hspace' has no attribute '{name}'")

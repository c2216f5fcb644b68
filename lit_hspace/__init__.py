"""lit_hspace: local semantic directions in the h-space of diffusion models (Haas et al., JIVE, RBE, Rayleigh).

The core needs no Lightning: load a model, reach a latent, give regions, find directions, edit.
"""

__version__ = "0.1.0"

from lit_hspace.ddim import DDIM, Edit, Inversion, Latent
from lit_hspace.directions import DirectionSet
from lit_hspace.discovery import find_directions
from lit_hspace.hspace import HSpaceModel, HSpaceUNet, load_model
from lit_hspace.methods import JIVE, RBE, Haas, Rayleigh
from lit_hspace.regions import Region, region_masks, resolve_regions

__all__ = ["DDIM", "Edit", "Inversion", "Latent", "DirectionSet", "find_directions", "HSpaceModel", "HSpaceUNet", "load_model",
           "JIVE", "RBE", "Haas", "Rayleigh", "Region", "region_masks", "resolve_regions"]

"""lit_hspace: local semantic directions in the h-space of diffusion models (Haas et al., JIVE, RBE)."""

__version__ = "0.1.0"

"""aria: distil conditional diffusion models and decide where in the conditioning space the effort goes.

Importing ``aria`` is cheap (no torch); heavy modules are imported where they are used.
"""

__version__ = "0.1.0"

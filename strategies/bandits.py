"""The non-stationary bandit baselines; importing this module registers them.

``exp3`` (Online Data Mixing), ``ducb`` and ``swucb`` (Garivier & Moulines 2011) and ``dts``
(discounted Gaussian Thompson sampling). Each treats regions as arms and a region's discrepancy
as its reward, and mixes its allocation with the same uniform floor ``eps`` as ``aria``.
"""

from . import dts, ducb, exp3, swucb  # noqa: F401  (register the bandits)

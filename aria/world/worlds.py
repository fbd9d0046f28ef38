"""The embedded worlds behind one description: what the data pipeline, the probe, the judge and the
teacher's training need of a world, whichever it is.

- ``shapes`` (world v1): shape x colour x size x position; unseen = held-out attribute combinations.
- ``concepts`` (world v2): 64 named concepts in 8 families (some hard to draw) x colour x size x
  position; unseen = whole families with no paired image, as Random Conditioning held out animals.

An *item* is one cell of a world's attribute grid (a v1 combination, a v2 concept with attributes);
every pool prompt names exactly one item (the pool's meta array ``meta_key``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).parent / "assets"
# regime index -> name in every world (v1 uses the first three; v2 adds the compositional control)
REGIME_NAMES = ("seen", "under", "unseen", "compositional")


@dataclass(frozen=True)
class World:
    name: str
    module: str  # the generator: ATTRIBUTES, NUM_VALUES, render(items, seed, indices=None), <attributes_fn>
    attributes_fn: str  # items -> tuple of int arrays, one per attribute
    meta_key: str  # the pool's meta array of each prompt's item
    judge_dir: Path
    regimes_module: str  # REGIME_NAMES: regime index -> name
    family_key: str | None = None  # the attribute whose values group into families (concepts)

    @property
    def regime_names(self) -> tuple[str, ...]:
        return tuple(importlib.import_module(self.regimes_module).REGIME_NAMES)

    @property
    def generator(self):
        return importlib.import_module(self.module)

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.generator.ATTRIBUTES)

    @property
    def num_values(self) -> tuple[int, ...]:
        return tuple(self.generator.NUM_VALUES)

    @property
    def num_items(self) -> int:
        return int(np.prod(self.num_values))

    def attributes_of(self, items) -> tuple[np.ndarray, ...]:
        return getattr(self.generator, self.attributes_fn)(np.asarray(items, dtype=np.int64))

    def render(self, items, seed: int, indices=None) -> np.ndarray:
        """uint8 (N, 32, 32, 3) renders of ``items``; image k depends only on (seed, indices[k], items[k])."""
        return self.generator.render(np.asarray(items, dtype=np.int64), seed, indices=indices)

    @property
    def family_names(self) -> tuple[str, ...]:
        return tuple(self.generator.FAMILY_NAMES) if self.family_key else ()

    def family_of(self, items) -> np.ndarray | None:
        """Family index of each item (None for a world without families)."""
        if not self.family_key:
            return None
        concept = self.attributes_of(items)[self.attributes.index(self.family_key)]
        return np.asarray(self.generator.FAMILY_OF)[concept]


WORLDS = {
    "shapes": World("shapes", "aria.world.shapes", "combo_attributes", "combo", ASSETS, "aria.world.regimes"),
    "concepts": World("concepts", "aria.world.concepts", "item_attributes", "item", ASSETS / "concepts-judge",
                      "aria.world.splits", family_key="concept"),
}


def world_of_pool(pool) -> World | None:
    """The world whose generator wrote ``pool`` (None for a pool of user prompts)."""
    params = getattr(pool, "params", None) or {}
    return WORLDS.get(params.get("world")) if isinstance(params, dict) else None

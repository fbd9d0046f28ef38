"""The embedded world: procedural shapes, prompts, regimes, judge and the shipped teacher."""

"""The embedded worlds (v1 shapes, v2 concepts): generators, captions, regimes, judges and the shipped teachers."""

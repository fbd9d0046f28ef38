"""Strategy state as plain data: a flat dict of numpy arrays and Python scalars.

It round-trips through JSON (``state_to_json``) or a dict of arrays for safetensors
(``state_to_arrays``), never pickle; ``state_hash`` is a short digest that ranks compare.
"""

from __future__ import annotations

import hashlib
import json
from typing import Union

import numpy as np

State = dict[str, Union[np.ndarray, int, float]]


def state_to_json(state: State) -> str:
    """JSON text of a state; arrays keep dtype and shape, floats round-trip exactly."""
    out = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            out[key] = {"dtype": str(value.dtype), "shape": list(value.shape), "data": value.reshape(-1).tolist()}
        elif isinstance(value, (bool, np.bool_)):
            out[key] = bool(value)
        elif isinstance(value, (int, np.integer)):
            out[key] = int(value)
        elif isinstance(value, (float, np.floating)):
            out[key] = float(value)
        else:
            raise TypeError(f"state entry {key!r} is {type(value).__name__}, not an array or scalar")
    return json.dumps(out, sort_keys=True, allow_nan=False)


def state_from_json(text: str) -> State:
    state: State = {}
    for key, value in json.loads(text).items():
        if isinstance(value, dict):
            state[key] = np.asarray(value["data"], dtype=value["dtype"]).reshape(value["shape"])
        else:
            state[key] = value
    return state


def state_to_arrays(state: State) -> dict[str, np.ndarray]:
    """A dict of arrays for safetensors; scalar kinds are kept in the key (``i:``/``f:``/``a:``)."""
    out = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            out[f"a:{key}"] = np.ascontiguousarray(value)
        elif isinstance(value, (int, np.integer, bool, np.bool_)):
            out[f"i:{key}"] = np.asarray([int(value)], dtype=np.int64)
        else:
            out[f"f:{key}"] = np.asarray([float(value)], dtype=np.float64)
    return out


def state_from_arrays(arrays: dict[str, np.ndarray]) -> State:
    state: State = {}
    for tagged, value in arrays.items():
        kind, key = tagged.split(":", 1)
        state[key] = np.array(value) if kind == "a" else (int(value[0]) if kind == "i" else float(value[0]))
    return state


def state_hash(state: State) -> str:
    """A short digest of a state: equal on every rank that holds the same state."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        h.update(key.encode())
        if isinstance(value, np.ndarray):
            h.update(str(value.dtype).encode() + str(value.shape).encode())
            h.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, (bool, np.bool_, int, np.integer)):  # numpy and Python scalars alike,
            h.update(repr(int(value)).encode())  # so that a JSON round trip keeps the hash
        else:
            h.update(repr(float(value)).encode())
    return h.hexdigest()[:16]

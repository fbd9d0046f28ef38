"""Where models run: the device a setting names, and torch's CPU threads (one owner for each)."""

from __future__ import annotations


def resolve_device(device: str | None) -> str:
    """``auto`` (or None) -> ``cuda`` when available, else ``cpu``; any other name as given."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def use_cpu_threads(threads: int | None) -> None:
    """``backend.cpu_threads``: torch's intra-op threads in this process (None keeps torch's default). On a
    shared 2-core machine torch's default waits at barriers for a busy core: one thread can be 4x faster."""
    if threads:
        import torch

        torch.set_num_threads(threads)

"""Where models run: the device a setting names, whether it is here, and torch's CPU threads (one owner
for each)."""

from __future__ import annotations

import re

DEVICE_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")  # what encoder.device and --device take


def resolve_device(device: str | None) -> str:
    """``auto`` (or None) -> ``cuda`` when available, else ``cpu``; any other name as given."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot run models here (None if it can): a name other than auto, cpu, mps, cuda or
    cuda:N; a CUDA device this machine does not have (torch without CUDA, or the index past the visible
    devices); MPS where it is not available."""
    if not isinstance(device, str) or not DEVICE_NAME.match(device):
        return "expected auto, cpu, mps, cuda or cuda:N"
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= visible:
            return f"no such CUDA device here ({visible} visible)"
    elif device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            return "MPS is not available here"
    return None


def check_device(device: str, what: str) -> str:
    """``device`` if it can run models here (``device_problem``), else a one-line UserError naming ``what``
    (the flag or config field); returns the device. Called at each command's edge, before heavy work."""
    from aria.errors import UserError

    problem = device_problem(device)
    if problem:
        shown = repr(device) if not isinstance(device, str) or not DEVICE_NAME.match(device) else device
        raise UserError(f"{what} {shown}: {problem}")
    return device


def check_config_devices(config, encoder: bool = True, backend: bool = True) -> None:
    """The devices a run config names (``encoder.device``, ``backend.device``) are here (``check_device``)."""
    if encoder:
        check_device(config.encoder.device, "encoder.device")
    if backend:
        check_device(config.backend.device, "backend.device")


def use_cpu_threads(threads: int | None) -> None:
    """``backend.cpu_threads``: torch's intra-op threads in this process (None keeps torch's default). On a
    shared 2-core machine torch's default waits at barriers for a busy core: one thread can be 4x faster."""
    if threads:
        import torch

        torch.set_num_threads(threads)

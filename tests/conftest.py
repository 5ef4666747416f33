"""Shared fixtures: a tiny, randomly initialised run directory that every front end can load in a second."""
from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from minimind_v.config import LLMConfig, VisionConfig, VLMConfig, llm_preset, padded_vocab
from minimind_v.data.synthetic import WORDS
from minimind_v.data.tokenizer import train_tokenizer, turn_start_id
from minimind_v.model.checkpoint import save_llm_run, save_run
from minimind_v.model.llm import MiniMindLM
from minimind_v.model.vlm import MiniMindVLM

# The precision probe (--dtype auto) caches its measurements here, not in the user's cache folder; subprocesses
# inherit it.
os.environ["MINIMIND_V_CACHE"] = tempfile.mkdtemp(prefix="minimind-v-cache-")

# The tests run tiny models, for which one thread beats two: thread hand-offs cost more than the matmuls.
torch.set_num_threads(1)

TEXTS = [
    "What color is the circle?", "The circle is red.", "How many shapes are there?", "There are 3 shapes.",
    "Describe the image.", "A small blue square at the top left and a large green cross in the center.",
    "Is there a yellow triangle?", "Yes, there is a yellow triangle.", "Which image has more shapes?",
    "The first image.", "What digit is this?", "It is the digit 7.", "Hello! How are you today?",
] * 20


# Official checkpoint key -> our key, written here independently of interop/official.py, so the model tests check
# the model's structure against the released checkpoints without trusting the importer they would also test.
B_NAMES = [("model.", ""), ("self_attn.", "attn."), ("input_layernorm", "attn_norm"),
           ("post_attention_layernorm", "ffn_norm"), ("mlp.", "ffn."), ("gate_proj", "gate"),
           ("up_proj", "up"), ("down_proj", "down")]
A_NAMES = [("tok_embeddings", "embed_tokens"), ("attention.wq", "attn.q_proj"), ("attention.wk", "attn.k_proj"),
           ("attention.wv", "attn.v_proj"), ("attention.wo", "attn.o_proj"), ("attention_norm", "attn_norm"),
           ("feed_forward.", "ffn."), ("shared_experts.", "shared_experts.0."), (".w1", ".gate"),
           (".w3", ".up"), (".w2", ".down")]


def official_key(key: str, is_a: bool) -> str:
    """An official LLM key (layout A: MiniMind2, B: minimind-3) in our names."""
    for old, new in A_NAMES if is_a else B_NAMES:
        key = key.replace(old, new)
    return key


def shared_dir() -> Path | None:
    """The read-only `shared/` folder beside the checkout (or $MINIMIND_V_SHARED), if present."""
    env = os.environ.get("MINIMIND_V_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    return path if path.is_dir() else None


def build_tiny_run(out: Path, seed: int = 0, attention: str = "turn") -> Path:
    """A tiny random VLM run; "turn" attention by default, as the quickstart trains (test_turn_attention.py
    covers the difference to causal)."""
    torch.manual_seed(seed)
    tok = train_tokenizer(TEXTS, vocab_size=300)
    cfg = VLMConfig(llm=LLMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=320,
                                  max_seq_len=256),
                    vision=VisionConfig(kind="scratch", image_size=32, patch_size=8, width=16, layers=1, heads=2,
                                        merge=2),
                    image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"), attention=attention,
                    turn_start_id=turn_start_id(tok))
    model = MiniMindVLM(cfg).eval()
    return save_run(model, tok, out)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run as fast on one thread, and a busy machine cannot stall a parallel region. (Torch is set to
    one thread above; this puts it back for modules that need it even after a test changed it.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with random weights (answers are gibberish, but every code path is real)."""
    return build_tiny_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="module")
def vlm(tiny_run: Path):
    """The tiny run loaded for answering, once per test module."""
    import minimind_v

    return minimind_v.load(str(tiny_run), device="cpu")


def png(size: tuple[int, int] = (40, 40), color: tuple[int, int, int] = (200, 20, 20)) -> bytes:
    """A one-colour PNG file's bytes."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def write_tiny_llm_run(out: str | Path, seed: int = 0) -> Path:
    """A random tiny LLM run directory (tokenizer learnt from WORDS) to start VLM stages from."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) + ". Describe the picture?" for _ in range(200)]
    tok = train_tokenizer(texts, vocab_size=320)
    return save_llm_run(MiniMindLM(llm_preset("shapes-tiny", vocab_size=padded_vocab(len(tok)))), tok, out)


def labelled_runs(tok, ids: list[int], labels: list[int]) -> list[str]:
    """The maximal runs of positions that have a label, decoded: what a training sample teaches."""
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != -100:
            cur.append(i)
        elif cur:
            runs, cur = runs + [tok.decode(cur)], []
    return runs + ([tok.decode(cur)] if cur else [])

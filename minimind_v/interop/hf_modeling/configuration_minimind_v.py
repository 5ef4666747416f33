"""The transformers config of an exported MiniMind-V: the package's VLMConfig as a dict, plus the vision tower's
own transformers config (so the tower is rebuilt from JSON; its weights are in model.safetensors)."""
from __future__ import annotations

from transformers import PretrainedConfig


class MiniMindVConfig(PretrainedConfig):
    model_type = "minimind_v"

    def __init__(self, vlm: dict | None = None, vision_tower: dict | None = None, **kwargs):
        self.vlm = vlm or {}
        self.vision_tower = vision_tower or {}
        llm = self.vlm.get("llm", {})
        # The usual names, for tools that read them (caches, model cards, serving frameworks).
        self.hidden_size = llm.get("dim", 512)
        self.num_hidden_layers = llm.get("n_layers", 8)
        self.num_attention_heads = llm.get("n_heads", 8)
        self.num_key_value_heads = llm.get("n_kv_heads", 2)
        self.head_dim = self.hidden_size // self.num_attention_heads
        self.vocab_size = llm.get("vocab_size", 6400)
        self.max_position_embeddings = llm.get("max_seq_len", 2048)
        self.use_cache = kwargs.pop("use_cache", True)
        kwargs.setdefault("tie_word_embeddings", llm.get("tie_embeddings", True))
        super().__init__(**kwargs)

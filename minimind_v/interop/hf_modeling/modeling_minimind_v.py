"""MiniMind-V as a transformers model (trust_remote_code): the package's own model files plus a thin wrapper.

`mmv_*.py` beside this file are copies of the minimind_v model code (imports made local), so this directory runs
the very code that trained it. The wrapper adds what `generate` needs: a transformers cache behind the package's
KV-cache interface, and inputs that skip the prompt (and its images) once they are cached.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import (CLIPVisionConfig, CLIPVisionModel, GenerationMixin, PreTrainedModel, ResNetConfig,
                          ResNetModel, SiglipVisionConfig, SiglipVisionModel)
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_minimind_v import MiniMindVConfig
from .mmv_config import VLMConfig
from .mmv_vision import VisionEncoder
from .mmv_vlm import MiniMindVLM

# transformers renamed `past_key_values` to `cache`; write whichever field this version's output has.
_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} \
    else "past_key_values"


class StoredVisionEncoder(VisionEncoder):
    """The package's encoder wrapper with the tower built from its saved config, not from a local folder.

    Preprocessing belongs to the processor (processing_minimind_v.py), so there is no image processor here.
    """

    def __init__(self, cfg, tower_config: dict):
        nn.Module.__init__(self)
        self.cfg = cfg
        if cfg.kind == "siglip":
            self.tower = SiglipVisionModel(SiglipVisionConfig.from_dict(tower_config))
        elif cfg.kind == "cnn":
            self.tower = ResNetModel(ResNetConfig.from_dict(tower_config))
        else:
            self.tower = CLIPVisionModel(CLIPVisionConfig.from_dict(tower_config))
        self.tower.requires_grad_(not cfg.freeze)
        self.processor = None
        self._set_geometry()


class _CacheView:
    """The package's KV-cache interface (length / check / update / advance) over a transformers Cache."""

    def __init__(self, cache):
        self.cache = cache
        self.length = cache.get_seq_length()

    def check(self, batch_size: int, new_tokens: int) -> None:
        pass  # a transformers cache grows as needed

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        return self.cache.update(k, v, layer)

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens


class MiniMindVForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = MiniMindVConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _tied_weights_keys = {"model.llm.lm_head.weight": "model.llm.embed_tokens.weight"}
    _no_split_modules = ["Block"]

    def __init__(self, config: MiniMindVConfig):
        super().__init__(config)
        cfg = VLMConfig.from_dict(config.vlm)
        self.model = MiniMindVLM(cfg, vision=StoredVisionEncoder(cfg.vision, config.vision_tower))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # every weight comes from model.safetensors; the package's own init already ran in __init__

    def get_input_embeddings(self) -> nn.Module:
        return self.model.llm.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.model.llm.lm_head

    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cache=None, past_key_values=None,
                use_cache: bool | None = None, labels: torch.LongTensor | None = None,
                logits_to_keep: int | torch.Tensor = 0, **kwargs) -> CausalLMOutputWithPast:
        """input_ids [B, T]; pixel_values [N, 3, H, W], the batch's images in reading order ([B, N, ...] also ok)."""
        cache = cache if cache is not None else past_key_values
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        if pixel_values is not None and pixel_values.dim() == 5:
            pixel_values = pixel_values.flatten(0, 1)
        out = self.model(input_ids, pixel_values, attention_mask=attention_mask,
                         cache=_CacheView(cache) if use_cache else None, logits_to_keep=logits_to_keep)
        loss = None
        if labels is not None:  # next-token loss, -100 ignored (keep logits_to_keep=0 for this)
            loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=out.logits, **{_CACHE_FIELD: cache if use_cache else None})

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None, attention_mask=None,
                                      pixel_values=None, use_cache=None, logits_to_keep=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        done = cache.get_seq_length() if cache is not None else 0
        if done:  # the prompt and its images are in the cache: only the new tokens go in
            input_ids, pixel_values = input_ids[:, done:], None
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, cache=cache,
                      use_cache=use_cache)
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        return inputs

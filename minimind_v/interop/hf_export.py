"""`minimind-v export`: a run directory -> a transformers directory that loads without this package.

    hf_dir/
      config.json                   MiniMindVConfig: the VLMConfig, the vision tower's config, auto_map
      model.safetensors             LLM + projector + vision tower, keys `model.<package names>`
      generation_config.json        EOS / pad / BOS ids
      tokenizer.json, tokenizer_config.json (chat template inside), preprocessor_config.json, processor_config.json
      configuration_minimind_v.py, modeling_minimind_v.py, processing_minimind_v.py   (hf_modeling/ templates)
      mmv_config.py, mmv_llm.py, mmv_moe.py, mmv_kv_cache.py, mmv_projector.py, mmv_vision.py, mmv_vlm.py

The model code is not a second implementation: the mmv_*.py files are the package's own source files, copied at
export time with their imports rewritten to sibling files. So an export always runs the code that trained it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors.torch import save_file

from ..data.tokenizer import save_tokenizer
from ..runs import is_llm_run

PACKAGE = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).resolve().parent / "hf_modeling"
# package module (path under minimind_v/) -> short name; exported as mmv_<name>.py
MODEL_SOURCES = {"config": "config.py", "llm": "model/llm.py", "moe": "model/moe.py",
                 "kv_cache": "model/kv_cache.py", "projector": "model/projector.py",
                 "vision": "model/vision.py", "vlm": "model/vlm.py", "encoder_files": "encoder_files.py"}
TEMPLATE_FILES = ("configuration_minimind_v.py", "modeling_minimind_v.py", "processing_minimind_v.py")
AUTO_MAP = {
    "AutoConfig": "configuration_minimind_v.MiniMindVConfig",
    "AutoModel": "modeling_minimind_v.MiniMindVForCausalLM",
    "AutoModelForCausalLM": "modeling_minimind_v.MiniMindVForCausalLM",
    "AutoModelForImageTextToText": "modeling_minimind_v.MiniMindVForCausalLM",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_minimind_v.MiniMindVProcessor"}
# `from minimind_v.config import`, `from ..config import`, `from .llm import`, `from minimind_v.model.moe import`
_IMPORT = re.compile(r"^(\s*)from\s+(minimind_v\.[\w.]+|\.+[\w.]*)\s+import\b", re.M)
_ANY_PACKAGE_IMPORT = re.compile(r"^\s*import\s+minimind_v\b", re.M)


def localize_imports(source: str, filename: str) -> str:
    """Point the package imports of one model file at the exported siblings (`from .mmv_llm import ...`)."""
    def repl(m: re.Match) -> str:
        module = re.sub(r"^(minimind_v\.|\.+)", "", m.group(2))
        name = module[len("model."):] if module.startswith("model.") else module
        if name not in MODEL_SOURCES:
            raise ValueError(f"{filename} imports {m.group(2)!r}, which the export does not carry; the exported "
                             f"model code may only use {sorted(MODEL_SOURCES)}")
        return f"{m.group(1)}from .mmv_{name} import"

    if _ANY_PACKAGE_IMPORT.search(source):
        raise ValueError(f"{filename}: `import minimind_v...` cannot be rewritten; use `from ... import`")
    return _IMPORT.sub(repl, source)


def remote_code_files() -> dict[str, str]:
    """File name -> text of every Python file an export carries."""
    files = {f"mmv_{name}.py": localize_imports((PACKAGE / rel).read_text(), rel) for name, rel in MODEL_SOURCES.items()}
    files.update({name: (TEMPLATES / name).read_text() for name in TEMPLATE_FILES})
    return files


def export_hf(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the transformers directory for the run at `run_dir`; returns `out_dir`."""
    from ..model.checkpoint import load_run

    run, out = Path(run_dir), Path(out_dir)
    if out.resolve() == run.resolve():
        raise ValueError("--out must be a new directory, not the run directory itself")
    if is_llm_run(run):
        raise ValueError(f"{str(run)!r} holds an LLM without vision; export it with --llm-only")
    model, tok = load_run(run)
    cfg = model.cfg
    out.mkdir(parents=True, exist_ok=True)

    sd = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    if cfg.llm.tie_embeddings:
        sd.pop("model.llm.lm_head.weight")  # transformers re-ties it from _tied_weights_keys
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})

    vlm = cfg.to_dict()
    vlm["vision"]["path"] = ""  # the tower is rebuilt from `vision_tower` below, its weights are in the file
    tower_cfg = model.vision.tower.config.to_dict()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or 0)
    config = {"model_type": "minimind_v", "architectures": ["MiniMindVForCausalLM"], "auto_map": AUTO_MAP,
              "vlm": vlm, "vision_tower": tower_cfg, "tie_word_embeddings": cfg.llm.tie_embeddings,
              "dtype": "float32", "use_cache": True, **ids}
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {**ids, "do_sample": False})

    tok.padding_side = "left"  # generation pads on the left, so every row's next token shares one column
    save_tokenizer(tok, out)
    model.vision.processor.save_pretrained(str(out))
    _write_json(out / "processor_config.json", {
        "processor_class": "MiniMindVProcessor", "auto_map": PROCESSOR_AUTO_MAP, "image_token": cfg.image_token,
        "tokens_per_image": model.tokens_per_image, "image_marker": cfg.image_marker})

    for name, text in remote_code_files().items():
        (out / name).write_text(text)
    _write_readme(out, run)
    return out


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _write_readme(out: Path, run: Path) -> None:
    (out / "README.md").write_text(f"""# MiniMind-V (exported from `{run.name}`)

```python
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{out.name}", trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained("{out.name}")
processor = AutoProcessor.from_pretrained("{out.name}", trust_remote_code=True)
messages = [{{"role": "user", "content": "<image>\\nDescribe the image."}}]
text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
inputs = processor(text=text, images=[Image.open("picture.png").convert("RGB")])
out = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Write one `<image>` per image; text-only prompts need no `images`. The model code is in this folder
(`modeling_minimind_v.py` and the `mmv_*.py` files it imports), hence `trust_remote_code=True`.
""")


"""Interoperability: import the official MiniMind-V / MiniMind weights, export to transformers.

    official.py     official state-dict layouts -> ours (key names, RoPE row order, config from shapes)
    importer.py     `minimind-v import`: write a run directory from an official release
    hf_export.py    `minimind-v export`: a trust_remote_code transformers directory (hf_modeling/ templates)
    hf_llm.py       `minimind-v export --llm-only`: a plain Llama / Qwen3 / Qwen3-MoE / Mixtral checkpoint
"""

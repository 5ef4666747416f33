"""`minimind-v import` (official MiniMind-V / MiniMind weights -> run directory), `minimind-v export`
(run directory -> transformers directory) and `minimind-v merge` (run + LoRA adapter -> run)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert official MiniMind-V / MiniMind weights into a run directory",
                       description="Convert an official .pth (loaded with weights_only=True) into a run directory "
                                   "that every minimind-v command can use.")
    p.add_argument("--format", required=True, choices=["minimind2-v", "minimind3-v", "minimind-llm", "hf-llm"],
                   help="minimind2-v: MiniMind2-V (CLIP, '@' x 196); minimind3-v: minimind-3v (SigLIP2, "
                        "<|image_pad|> x 64); minimind-llm: an LLM alone (llm_512.pth style), a base for VLM training; "
                        "hf-llm: a transformers Llama / SmolLM2 / Qwen3 folder as that base")
    p.add_argument("--weights", required=True, help="the official .pth file (hf-llm: the transformers folder)")
    p.add_argument("--vision", help="local vision encoder folder (CLIP ViT-B/16 or SigLIP2 P32); not for minimind-llm")
    p.add_argument("--tokenizer", default=None,
                   help="the release's tokenizer folder (tokenizer.json, ...); hf-llm: the model folder's own")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--n-heads", type=int, default=None,
                   help="attention heads (MiniMind2 weights do not record it; default 8, the official value)")
    p.add_argument("--top-k", type=int, default=None, help="MoE experts per token (default: the release's, 2 or 1)")
    p.add_argument("--copy-vision", action="store_true",
                   help="copy the encoder into the run directory instead of referencing its folder")
    p.set_defaults(func=run_import)

    e = sub.add_parser("export", help="write a run directory as a transformers model directory",
                       description="Write a transformers directory: AutoModelForCausalLM / AutoProcessor with "
                                   "trust_remote_code=True, or with --llm-only a plain Llama / Qwen3 checkpoint.")
    e.add_argument("--model", required=True, help="run directory")
    e.add_argument("--out", default=None, help="directory to write (not with --gguf)")
    e.add_argument("--gguf", default=None, metavar="FILE",
                   help="write the language model as one GGUF file for llama.cpp / ollama instead")
    e.add_argument("--gguf-type", default="f16", choices=["f32", "f16", "q8_0"], help="GGUF weight type (default f16)")
    e.add_argument("--llm-only", action="store_true",
                   help="the language model alone, loadable without remote code (Llama / Qwen3 / Qwen3-MoE / "
                        "Mixtral, whichever computes the same thing)")
    e.set_defaults(func=run_export)

    m = sub.add_parser("merge", help="fold a LoRA adapter into its run's weights: an ordinary run directory",
                       description="Fold a LoRA adapter (train ... --lora-rank R) into the weights of the run it was "
                                   "trained on and write the result as a new run directory.")
    m.add_argument("--model", required=True, help="the run the adapter was trained on (VLM or LLM run)")
    m.add_argument("--adapter", required=True, help="the adapter folder (adapter.safetensors + adapter_config.json)")
    m.add_argument("--out", required=True, help="run directory to write")
    m.set_defaults(func=run_merge)


def run_import(args: argparse.Namespace) -> int:
    if args.format == "hf-llm":
        from .hf_import import import_hf_llm

        out = import_hf_llm(args.weights, args.out)
        print(f"wrote the LLM run directory {out}: start VLM training from it with --from-llm {out}")
        return 0
    if not args.tokenizer:
        raise ValueError(f"--format {args.format} needs --tokenizer: the release's tokenizer folder")
    from .importer import import_official

    out = import_official(args.format, args.weights, args.out, vision=args.vision, tokenizer=args.tokenizer,
                          n_heads=args.n_heads, top_k=args.top_k, copy_vision=args.copy_vision)
    if args.format == "minimind-llm":
        print(f"wrote the LLM run directory {out}: start VLM training from it with --from-llm {out}, "
              f"or export it with: minimind-v export --llm-only --model {out} --out DIR")
    else:
        print(f"wrote {out}; try: minimind-v ask --model {out} --image picture.png \"<image>\\n描述一下这个图像的内容。\"")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..model.checkpoint import load_run, save_llm_run, save_run
    from ..model.lora import load_adapter, merge_lora
    from ..runs import read_config

    extra = {"merged_from": {"run": str(args.model), "adapter": str(args.adapter)}}
    if read_config(args.model)[1].get("kind") == "llm":
        from ..train.lm_only import load_llm_run  # the same wrapper training adapted, so the base hash matches

        model, tok = load_llm_run(args.model)
        load_adapter(model, args.adapter)
        merge_lora(model)
        out = save_llm_run(model.llm, tok, args.out, extra=extra)
    else:
        model, tok = load_run(args.model, adapter=args.adapter)
        out = save_run(model, tok, args.out, extra=extra)
    print(f"wrote {out}: {args.model} with the adapter {args.adapter} folded into its weights")
    return 0


def run_export(args: argparse.Namespace) -> int:
    if args.gguf:
        from .gguf_export import export_gguf

        out = export_gguf(args.model, args.gguf, args.gguf_type)
        print(f"wrote {out}: llama-cli -m {out} (or an ollama Modelfile: FROM {out})")
        return 0
    if not args.out:
        raise ValueError("export needs --out DIR (or --gguf FILE)")
    if args.llm_only:
        from .hf_llm import export_llm_only

        out = export_llm_only(args.model, args.out)
        print(f"wrote {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}) loads it without remote code")
    else:
        from .hf_export import export_hf

        out = export_hf(args.model, args.out)
        print(f"wrote {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0

"""Let lmms-eval drive a minimind-v model: its `lmms` model class, without needing lmms-eval to import this file.

With internet and `pip install lmms-eval`, any of its image tasks runs on a run directory:

    python -m minimind_v.eval.lmms --model_args pretrained=runs/quickstart --tasks mme --batch_size 8 \\
        --output_path logs/

(this registers the class under the name `minimind_v` and hands every argument to lmms-eval's own CLI).

The class follows lmms-eval's "simple" model interface: requests carry `args`; for `generate_until` these are
(context, generation kwargs, doc_to_visual, doc_id, task, split) and for `loglikelihood`
(context, doc_to_target, doc_to_visual, doc_id, task, split); the visuals come from
`doc_to_visual(self.task_dict[task][split][doc_id])`, a list of PIL images.
"""
from __future__ import annotations

import sys
from typing import Any

import torch

from ..config import IMAGE_MARKER

try:  # the real base class when lmms-eval is installed; a minimal stand-in keeps this file importable without it
    from lmms_eval.api.model import lmms as _LMMSBase
except ImportError:  # pragma: no cover - depends on the environment
    class _LMMSBase:  # type: ignore[no-redef]
        """What lmms-eval's base class provides to a model: task_dict, rank and world_size."""

        def __init__(self) -> None:
            self.task_dict: dict = {}
            self._rank, self._world_size = 0, 1

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size

NAME = "minimind_v"


class MiniMindVLMMS(_LMMSBase):
    """A minimind-v run directory as an lmms-eval model. `vlm` (a VLMChat) may be passed instead of `pretrained`."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, device: str = "auto", batch_size: int | str = 1,
                 max_new_tokens: int = 64, vlm: Any = None, weights: str = "fp32", **kwargs: Any) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"unknown model_args for {NAME}: {sorted(kwargs)}")
        if vlm is None:
            if not pretrained:
                raise ValueError(f"{NAME} needs model_args pretrained=<run directory>")
            from ..infer.api import load

            vlm = load(pretrained, device=device, weights=weights)  # weights=bf16: half the memory
        self.vlm, self.batch_size = vlm, int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    # -- helpers ------------------------------------------------------------------------------------------------

    def _visuals(self, doc_to_visual: Any, doc_id: Any, task: str, split: str) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        out = []
        for v in visuals:
            if not hasattr(v, "convert"):
                raise ValueError(f"{NAME} reads images only; task {task!r} gave a {type(v).__name__}")
            out.append(v.convert("RGB"))
        return out

    @staticmethod
    def _question(context: str, n_images: int) -> str:
        """lmms-eval contexts rarely hold image markers: put one per image in front, as training did."""
        if context.count(IMAGE_MARKER) == n_images:
            return context
        return (IMAGE_MARKER + "\n") * n_images + context.replace(IMAGE_MARKER, "")

    # -- the interface ------------------------------------------------------------------------------------------

    def generate_until(self, requests: list) -> list[str]:
        """Greedy answers (temperature from the task's kwargs), cut at the first `until` string."""
        out: list[str] = []
        for i in range(0, len(requests), self.batch_size):
            chunk = [r.args for r in requests[i:i + self.batch_size]]
            # one batched call per distinct set of generation kwargs
            groups: dict[str, list[int]] = {}
            for j, args in enumerate(chunk):
                groups.setdefault(repr(sorted(dict(args[1] or {}).items())), []).append(j)
            answers: list[str] = [""] * len(chunk)
            for idx in groups.values():
                kw = dict(chunk[idx[0]][1] or {})
                until = kw.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                items = []
                for j in idx:
                    context, _, doc_to_visual, doc_id, task, split = chunk[j]
                    ims = self._visuals(doc_to_visual, doc_id, task, split)
                    items.append((ims, self._question(context, len(ims))))
                # transformers' convention: without do_sample the answer is greedy whatever the temperature
                temperature = float(kw.get("temperature") or 0.0) if kw.get("do_sample") else 0.0
                texts = self.vlm.answer_batch(items, max_new_tokens=int(kw.get("max_new_tokens", self.max_new_tokens)),
                                              temperature=temperature)
                for j, text in zip(idx, texts):
                    for stop in until:
                        if stop and stop in text:
                            text = text[:text.index(stop)]
                    answers[j] = text
            out += answers
        return out

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        """(log P(continuation | context, images), whether greedy decoding would produce exactly it)."""
        from ..data.chat import encode_prompt

        model, tok = self.vlm.model, self.vlm.tokenizer
        out = []
        for r in requests:
            context, target, doc_to_visual, doc_id, task, split = r.args
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            ims = self._visuals(doc_to_visual, doc_id, task, split)
            prompt = encode_prompt(tok, [{"role": "user", "content": self._question(context, len(ims))}],
                                   tokens_per_image=model.tokens_per_image, image_token=model.cfg.image_token)
            cont = tok.encode(continuation, add_special_tokens=False)
            if not cont:
                out.append((0.0, True))
                continue
            ids = torch.tensor([prompt + cont], device=self.vlm.device)
            pixels = self.vlm._pixels(ims)
            with torch.inference_mode():
                logits = model(ids, pixels).logits[0, len(prompt) - 1:-1].float()
            logp = logits.log_softmax(-1)
            target_ids = torch.tensor(cont, device=logp.device)
            total = float(logp.gather(1, target_ids[:, None]).sum())
            out.append((total, bool((logp.argmax(-1) == target_ids).all())))
        return out

    def generate_until_multi_round(self, requests: list) -> list[str]:
        raise NotImplementedError(f"{NAME} answers single-round tasks only (generate_until / loglikelihood)")


def manifest() -> Any:
    """The entry point lmms-eval looks for in the `lmms_eval.models` group (needs lmms-eval installed)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=NAME, simple_class_path=f"{__name__}.MiniMindVLMMS")


def main(argv: list[str] | None = None) -> None:
    """Register the model with lmms-eval, then run lmms-eval's command line with `--model minimind_v`."""
    try:
        from lmms_eval import models as lm_models
        from lmms_eval.__main__ import cli_evaluate
    except ImportError:
        sys.exit("lmms-eval is not installed: pip install lmms-eval (it downloads its benchmarks when run)")
    lm_models.MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--model" not in argv:
        argv = ["--model", NAME] + argv
    sys.argv = [sys.argv[0]] + argv
    cli_evaluate()


if __name__ == "__main__":
    main()

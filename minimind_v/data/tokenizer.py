"""A byte-level BPE tokenizer with ChatML special tokens, trained here in seconds.

Byte-level means the base alphabet is the 256 byte values, so any UTF-8 text (Chinese, emoji, control
characters) encodes and decodes back exactly, and nothing is ever "unknown". The four special tokens come
first so their ids are fixed whatever the corpus: 0 pads, 1 opens a turn, 2 closes it, 3 stands for one image
feature. The result is an ordinary transformers tokenizer directory, so `AutoTokenizer.from_pretrained`
loads it without this package.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ..config import IMAGE_TOKEN
from ..runs import write_tokenizer

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN]  # ids 0, 1, 2, 3

# ChatML, one message per block. The content goes in untouched: an `<image>` marker stays text here and is
# expanded into image tokens by `minimind_v.data.chat`, which builds the same token sequence piece by piece.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)

# 256 byte symbols plus the special tokens: a smaller vocabulary could not represent every input.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 6400, out_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Learn BPE merges from `texts` and return a transformers tokenizer (saved to `out_dir` if given).

    A small corpus may run out of merges before `vocab_size`; `len(tok)` is the real size.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: a byte-level tokenizer needs at least {MIN_VOCAB_SIZE} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    backend = Tokenizer(models.BPE())
    # No prefix space: " hello" and "hello" stay different, and decoding gives back exactly what went in.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, even ones the corpus lacks
        show_progress=False,
    )
    backend.train_from_iterator(_checked(texts), trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):  # the trainer puts them first; the rest of the code relies on it
        assert backend.token_to_id(token) == i, f"{token} got id {backend.token_to_id(token)}, expected {i}"

    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,  # byte-level: nothing is unknown
        additional_special_tokens=[IMAGE_TOKEN],
        clean_up_tokenization_spaces=False,  # keep decode(encode(x)) == x
        model_max_length=1 << 30,
    )
    tok.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        save_tokenizer(tok, out_dir)
    return tok


def turn_start_id(tok: PreTrainedTokenizerFast) -> int:
    """The id of the token that opens every chat turn (`<|im_start|>`), which "turn" attention counts turns by."""
    tid = tok.convert_tokens_to_ids(BOS_TOKEN)
    if tid is None or tid == tok.unk_token_id:
        raise ValueError(f"the tokenizer has no {BOS_TOKEN} token to find chat turns by; use --attention causal")
    return int(tid)


def attention_fields(tok: PreTrainedTokenizerFast, attention: str) -> dict[str, Any]:
    """VLMConfig's `attention` and `turn_start_id` for this tokenizer: the turn opener is looked up only for
    "turn" attention (a tokenizer without one still builds a causal model)."""
    return {"attention": attention, "turn_start_id": turn_start_id(tok) if attention == "turn" else -1}


def save_tokenizer(tok: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    """Write the tokenizer directory, with the chat template inside tokenizer_config.json.

    Keeping the template in the JSON (not a separate .jinja file) lets older transformers versions read it too;
    each file is written atomically (runs.py).
    """
    write_tokenizer(tok, Path(out_dir))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer directory written by `train_tokenizer` (or any transformers fast tokenizer)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"tokenizer directory {str(path)!r} does not exist")
    if not (path / "tokenizer.json").is_file():
        raise ValueError(f"{str(path)!r} has no tokenizer.json; is it a tokenizer directory?")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # corrupt JSON, unknown tokenizer class, ...: say which directory is at fault
        raise ValueError(f"could not load the tokenizer in {str(path)!r}: {type(e).__name__}: {e}") from e


def _checked(texts: Iterable[str]) -> Iterable[str]:
    if isinstance(texts, str):
        raise ValueError("train_tokenizer expects an iterable of strings, not a single string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"training text #{i} is {type(text).__name__}, expected str")
        yield text

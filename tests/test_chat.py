"""Conversation encoding: ids equal the rendered chat template, labels cover exactly the assistant's words."""
from __future__ import annotations

import pickle
import random
import time

import pytest

from minimind_v.config import IMAGE_MARKER
from minimind_v.data.chat import (
    IGNORE_INDEX,
    SampleTooLong,
    count_markers,
    encode_conversation,
    encode_prompt,
    expand_images,
)
from minimind_v.data.tokenizer import train_tokenizer

IMG = "<|image_pad|>"
WORDS = ("the a red blue green circle square triangle is on left right of above below small big what where "
         "how many shapes are there picture 红色 圆形 图片 左边 有 几个 🙂").split()


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "." for _ in range(400)]
    return train_tokenizer(texts, vocab_size=300)


def rendered_ids(tok, messages, n, *, image_token=IMG, generation_prompt=False):
    """The reference encoding: expand images in the text, render the template, tokenise it in one go."""
    expanded = [dict(m, content=expand_images(m["content"], image_token, n)) for m in messages]
    text = tok.apply_chat_template(expanded, tokenize=False, add_generation_prompt=generation_prompt)
    return tok(text).input_ids


def labelled_spans(ids, labels):
    """Maximal runs of positions with a real label, as lists of ids."""
    spans, run = [], []
    for i, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if run:
                spans.append(run)
            run = []
        else:
            assert label == i, "a label must equal its input id (the shift happens in the loss)"
            run.append(i)
    return spans + ([run] if run else [])


MULTI = [
    {"role": "system", "content": "You describe shapes."},
    {"role": "user", "content": "<image>\nWhat is on the left?"},
    {"role": "assistant", "content": "A small red circle is on the left."},
    {"role": "user", "content": "图片里有几个形状？ 🙂"},
    {"role": "assistant", "content": "有 3 个。\nThree shapes."},
]


def test_expand_and_count():
    assert count_markers("<image>\n<image>\nhi") == 2
    assert count_markers("no images") == 0
    assert expand_images("<image>\nhi", "X", 3) == "XXX\nhi"
    assert expand_images("a<image>b<image>", IMG, 2) == f"a{IMG}{IMG}b{IMG}{IMG}"
    with pytest.raises(ValueError, match="tokens_per_image"):
        expand_images("<image>", IMG, 0)


def test_ids_equal_rendered_template(tok):
    for messages in (MULTI, MULTI[1:3], MULTI[:3], [MULTI[3], MULTI[4]]):
        for n in (1, 4, 64):
            ids, labels = encode_conversation(tok, messages, tokens_per_image=n)
            assert ids == rendered_ids(tok, messages, n)
            assert len(labels) == len(ids)


def test_ids_equal_rendered_template_on_awkward_text(tok):
    """Whitespace and newlines at piece boundaries must tokenise the same piecewise as in one go."""
    rng = random.Random(3)
    alphabet = list("ab 红🙂\n\t.?") + ["<image>", "  ", "\n\n", " the", "circle"]
    for _ in range(100):
        def text():
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) + rng.choice("xy红")
        messages = []
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": text()},
                         {"role": "assistant", "content": text().replace(IMAGE_MARKER, "")}]
        n = rng.randint(1, 5)
        ids, labels = encode_conversation(tok, messages, tokens_per_image=n)
        assert ids == rendered_ids(tok, messages, n), messages
        assert [tok.decode(s) for s in labelled_spans(ids, labels)] == [
            m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]


def test_labels_cover_assistant_content_and_im_end_only(tok):
    ids, labels = encode_conversation(tok, MULTI, tokens_per_image=8)
    spans = labelled_spans(ids, labels)
    assert [tok.decode(s) for s in spans] == [
        "A small red circle is on the left.<|im_end|>",
        "有 3 个。\nThree shapes.<|im_end|>",
    ]
    # Everything unlabelled decodes to system/user turns, headers and the newline after <|im_end|>.
    unlabelled = tok.decode([i for i, label in zip(ids, labels) if label == IGNORE_INDEX])
    assert unlabelled == (
        "<|im_start|>system\nYou describe shapes.<|im_end|>\n"
        f"<|im_start|>user\n{IMG * 8}\nWhat is on the left?<|im_end|>\n<|im_start|>assistant\n\n"
        "<|im_start|>user\n图片里有几个形状？ 🙂<|im_end|>\n<|im_start|>assistant\n\n"
    )
    assert labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX  # header first, final "\n" last
    assert all(label == IGNORE_INDEX for i, label in zip(ids, labels) if i in (0, 1, 3))


def test_images_become_exact_runs_of_image_id(tok):
    messages = [{"role": "user", "content": "<image>\n<image>\nWhich is bigger?"},
                {"role": "assistant", "content": "The first."}]
    for n in (1, 3, 64):
        ids, labels = encode_conversation(tok, messages, tokens_per_image=n)
        runs, run = [], 0
        for i in ids + [None]:
            if i == 3:
                run += 1
            elif run:
                runs.append(run)
                run = 0
        assert runs == [n, n]
        assert all(label == IGNORE_INDEX for i, label in zip(ids, labels) if i == 3)
        assert ids.count(3) == 2 * n


def test_default_system_prompt(tok):
    convo = MULTI[1:3]
    with_default, _ = encode_conversation(tok, convo, tokens_per_image=2, system="Be brief.")
    assert with_default == rendered_ids(tok, [{"role": "system", "content": "Be brief."}, *convo], 2)
    own, _ = encode_conversation(tok, MULTI, tokens_per_image=2, system="Be brief.")
    assert own == rendered_ids(tok, MULTI, 2)  # the conversation's own system message wins
    without, _ = encode_conversation(tok, convo, tokens_per_image=2)
    assert tok.decode(without).startswith("<|im_start|>user\n")


def test_encode_prompt(tok):
    messages = MULTI[:4]
    ids = encode_prompt(tok, messages, tokens_per_image=5)
    assert ids == rendered_ids(tok, messages, 5, generation_prompt=True)
    assert tok.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n")
    single = encode_prompt(tok, [{"role": "user", "content": "<image>\nhi"}], tokens_per_image=4)
    assert tok.decode(single) == f"<|im_start|>user\n{IMG * 4}\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="must end with a user message"):
        encode_prompt(tok, MULTI, tokens_per_image=4)


def test_text_image_token_falls_back_to_expanded_text(tok):
    """An image token that is plain text (like the older format's '@') is tokenised as expanded text."""
    messages = [{"role": "user", "content": "<image>\nhi"}, {"role": "assistant", "content": "a circle"}]
    ids, labels = encode_conversation(tok, messages, tokens_per_image=6, image_token="@")
    assert ids == rendered_ids(tok, messages, 6, image_token="@")
    assert [tok.decode(s) for s in labelled_spans(ids, labels)] == ["a circle<|im_end|>"]


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ([{"role": "bot", "content": "hi"}], "unknown role 'bot'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], "empty content"),
    ([{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}], "empty content"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}], "must be a string"),
    ([{"role": "user"}], "must be a dict"),
    ([{"role": "assistant", "content": "hi"}], "alternate"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
     "alternate"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "assistant", "content": "c"}],
     "only the first message"),
    ([{"role": "user", "content": "hi"}], "must end with the assistant"),
    ([{"role": "system", "content": "s"}], "must end with the assistant"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "see <image>"}],
     "images belong in user messages"),
    ([{"role": "user", "content": "hi<|im_end|>"}, {"role": "assistant", "content": "x"}], "reserved token"),
    ([{"role": "user", "content": f"{IMG}\nhi"}, {"role": "assistant", "content": "x"}], "write <image>"),
])
def test_bad_conversations_raise(tok, messages, match):
    with pytest.raises(ValueError, match=match):
        encode_conversation(tok, messages, tokens_per_image=4)


def test_bad_tokens_per_image(tok):
    for n in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="tokens_per_image"):
            encode_conversation(tok, MULTI, tokens_per_image=n)


def test_too_long_raises_instead_of_truncating(tok):
    ids, _ = encode_conversation(tok, MULTI, tokens_per_image=64)
    assert encode_conversation(tok, MULTI, tokens_per_image=64, max_len=len(ids))[0] == ids
    with pytest.raises(SampleTooLong) as err:
        encode_conversation(tok, MULTI, tokens_per_image=64, max_len=len(ids) - 1)
    assert isinstance(err.value, ValueError)
    assert (err.value.length, err.value.max_len) == (len(ids), len(ids) - 1)
    assert "max_len" in str(err.value)


def test_works_after_pickling(tok):
    """DataLoader workers receive a pickled copy of the tokenizer."""
    copy = pickle.loads(pickle.dumps(tok))
    assert encode_conversation(copy, MULTI, tokens_per_image=3) == encode_conversation(tok, MULTI, tokens_per_image=3)


def test_encoding_is_fast(tok):
    messages = [{"role": "user", "content": "<image>\nWhat shapes are in the picture, and where are they?"},
                {"role": "assistant", "content": "A small red circle is on the left of a big blue square."}]
    ids, _ = encode_conversation(tok, messages, tokens_per_image=16)
    assert 80 <= len(ids) <= 160
    best = float("inf")
    for _ in range(3):  # best of three, so a busy machine does not fail the test
        start = time.perf_counter()
        for _ in range(200):
            encode_conversation(tok, messages, tokens_per_image=16)
        best = min(best, (time.perf_counter() - start) / 200)
    assert best < 1e-3, f"{best * 1e6:.0f} us per conversation"

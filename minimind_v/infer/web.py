"""`minimind-v web`: a gradio chat demo. Upload one or several images, ask, watch the answer stream in.

    minimind-v web --model runs/quickstart --model runs/other     # or --model runs/ for every run inside
    # then open http://127.0.0.1:7860

The page is a gradio ChatInterface: a multimodal textbox (text + image files), the conversation, sampling
controls and a dropdown that switches between the model directories given (each is loaded the first time it is
picked). Every turn re-encodes the whole conversation, so switching models mid-conversation just works.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Iterator

from ..config import IMAGE_MARKER
from .cli_infer import add_server_arguments
from .images import ImageLimits, decode_image
from .registry import ModelPool, find_runs

LIMITS = ImageLimits(max_bytes=16 * 2**20, max_pixels=4096 * 4096, max_images=8)
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page loads nothing remote


def to_conversation(history: list[dict[str, Any]], message: dict[str, Any]) -> tuple[list[dict[str, str]],
                                                                                     list[str]]:
    """Gradio's chat history + the new message -> our messages (with <image> markers) and image paths.

    Gradio stores an uploaded file and the text beside it as separate user entries whose content is a string,
    a list of {"type": "text"|"file", ...} parts, or a {"path": ...} file; consecutive entries of one role are
    one turn for the model. An image becomes a marker line in front of its turn's text."""
    turns: list[tuple[str, list[str], list[str]]] = []  # (role, texts, image paths)
    entries = list(history) + [{"role": "user", "content": [{"type": "file", "file": {"path": p}} for p in
                                                             _paths(message.get("files", []))]
                                + [{"type": "text", "text": message.get("text") or ""}]}]
    for entry in entries:
        role = entry.get("role")
        if role not in ("user", "assistant"):
            continue
        texts, paths = _parts(entry.get("content"))
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(texts)
            turns[-1][2].extend(paths)
        else:
            turns.append((role, texts, paths))
    messages, images = [], []
    for role, texts, paths in turns:
        text = "\n".join(t for t in texts if t.strip()).strip()
        if role == "assistant" and not text:
            continue  # an empty answer cannot be encoded; dropping it keeps the turns alternating
        if role == "user":
            if not text and not paths:
                continue
            text = f"{IMAGE_MARKER}\n" * len(paths) + (text.replace(IMAGE_MARKER, "") or "Describe the image.")
            images += paths
        if messages and messages[-1]["role"] == role:  # a dropped empty answer joined two user turns
            messages[-1]["content"] += "\n" + text
        else:
            messages.append({"role": role, "content": text})
    return messages, images


def _paths(files: list[Any]) -> list[str]:
    return [f.get("path") if isinstance(f, dict) else str(f) for f in files]


def _parts(content: Any) -> tuple[list[str], list[str]]:
    if isinstance(content, str):
        return [content], []
    if isinstance(content, dict):
        content = [content]
    texts, paths = [], []
    for part in content if isinstance(content, (list, tuple)) else []:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            texts.append(part.get("text") or "")
        elif isinstance(part, dict):  # {"type": "file", "file": {"path"}} or a bare {"path"}
            path = (part.get("file") or {}).get("path") if part.get("type") == "file" else part.get("path")
            if path:
                paths.append(path)
    return texts, paths


def chat_fn(pool: ModelPool):
    """The function behind the chat box: streams the growing answer, then the speed line."""
    import gradio as gr

    def respond(message: dict[str, Any], history: list[dict[str, Any]], model: str, temperature: float,
                top_p: float, max_tokens: int) -> Iterator[tuple[str, str]]:
        messages, paths = to_conversation(history, message)
        if not messages:
            raise gr.Error("Type a question or attach an image.")
        if len(paths) > LIMITS.max_images:
            raise gr.Error(f"{len(paths)} images in this conversation; the limit is {LIMITS.max_images}. "
                           f"Clear the chat to start again.")
        try:
            vlm = pool.get(model)
            images = [decode_image(Path(p).read_bytes(), LIMITS) for p in paths]
            room = vlm.context_length - len(vlm.encode_chat(messages, len(images)))
            if room < 1:
                raise ValueError(f"the conversation fills the model's {vlm.context_length}-token context; "
                                 f"clear the chat to start again")
            stream = vlm.stream_chat(messages, images, max_new_tokens=min(int(max_tokens), room),
                                     temperature=float(temperature), top_p=float(top_p))
        except KeyError:
            raise gr.Error(f"unknown model {model!r}") from None
        except (ValueError, OSError) as e:  # ImageError is a ValueError
            raise gr.Error(str(e)) from None
        text = ""
        for piece in stream:
            text += piece
            yield text, ""
        yield text, (f"{model}: {stream.completion_tokens} tokens in {stream.seconds:.2f} s, "
                     f"{stream.tokens_per_second:.1f} tokens/s ({stream.finish_reason})")

    return respond


def build_app(pool: ModelPool) -> Any:
    """The gradio app (a ChatInterface). Launch it with `.launch()` or mount it in another server."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    names = pool.names
    with gr.Blocks(title="minimind-v", analytics_enabled=False) as demo:
        gr.Markdown("## minimind-v\nA super-small vision-language model. Attach one or several images with the "
                    "clip, then ask about them.")
        with gr.Row():
            with gr.Column(scale=1, min_width=220):
                controls = [
                    gr.Dropdown(names, value=names[0], label="model"),
                    gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="temperature (0 = greedy)"),
                    gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p"),
                    gr.Slider(1, 1024, value=128, step=1, label="max new tokens"),
                ]
                stats = gr.Markdown(elem_id="stats")
            with gr.Column(scale=3):
                # concurrency_limit=1: one generation at a time on the one model copy, like the HTTP server.
                gr.ChatInterface(
                    chat_fn(pool),
                    multimodal=True,
                    textbox=gr.MultimodalTextbox(file_types=["image"], file_count="multiple", sources=["upload"],
                                                 placeholder="Ask about the images (attach one or several)..."),
                    chatbot=gr.Chatbot(height=420, label="conversation"),
                    additional_inputs=controls,
                    additional_outputs=[stats],
                    analytics_enabled=False,
                    concurrency_limit=1,
                    api_name="chat",
                    fill_height=False,
                )
    return demo


def launch(pool: ModelPool, host: str = "127.0.0.1", port: int = 7860, **kw: Any) -> Any:
    import gradio as gr

    app = build_app(pool)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
    app.launch(server_name=host, server_port=port, share=False, ssr_mode=False, theme=theme,
               footer_links=[], **kw)
    return app


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web", help="a gradio chat demo in the browser, with image upload")
    add_server_arguments(p, 7860, "run directory, or a folder of them (repeat for several); switch in the page")
    p.set_defaults(func=web)


def web(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the web demo needs gradio: pip install 'minimind-v[web]'") from None
    pool = ModelPool(find_runs(args.model), device=args.device, weights=args.weights,
                     encoder_weights=args.encoder_weights, compile=args.compile, adapter=args.adapter)
    pool.get(pool.names[0])  # load the first model now: a broken run fails before the page opens
    print(f"models: {', '.join(pool.names)}; open http://{args.host}:{args.port}")
    launch(pool, args.host, args.port)
    return 0

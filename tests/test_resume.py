"""Resume: a run killed (SIGKILL) or interrupted (SIGINT) mid-training and resumed ends with exactly the weights
of an uninterrupted run; the checkpoint file is written atomically and holds no pickle."""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minimind_v.data.synthetic import write_text_jsonl
from minimind_v.data.tokenizer import train_tokenizer
from minimind_v.train import cli_train
from minimind_v.train.resume import STATE_FILE, rng_state, set_rng_state
from minimind_v.train.stage import StageOptions, run_stage

STEPS = 8


def _parse(argv: list[str]) -> StageOptions:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    cli_train.add_parser(sub)
    return cli_train.stage_options(p.parse_args(argv))


def _argv(data: Path, tok: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "llm-pretrain", "--data", str(data), "--tokenizer", str(tok), "--preset", "shapes-tiny",
            "--out", str(out), "--steps", str(STEPS), "--batch-size", "4", "--max-len", "48", "--workers", "0",
            "--log-every", "1", "--save-every", "1", "--lr", "3e-3", "--warmup", "2", "--device", "cpu",
            "--threads", "1", *extra]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = write_text_jsonl(root / "text.jsonl", 40, seed=3)
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    train_tokenizer(texts, vocab_size=300, out_dir=root / "tok")
    ref = root / "ref"
    run_stage(_parse(_argv(data, root / "tok", ref)), say=lambda s: None)
    return root, data, load_file(str(ref / "model.safetensors"))


def _spawn(argv: list[str]) -> subprocess.Popen:
    code = ("import sys; from minimind_v.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # its own process group, like a terminal's foreground job: Ctrl-C reaches the trainer and its workers
    return subprocess.Popen([sys.executable, "-c", code, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 60) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"training ended before step {step}: {proc.stdout.read()[-2000:]}")
        if metrics.is_file():
            steps = [json.loads(x).get("step", -1) for x in metrics.read_text().splitlines() if x.strip()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.02)
    proc.kill()
    pytest.fail("training did not reach the step in time")


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming"


def test_sigkill_at_a_random_step_then_resume_matches_uninterrupted(setup):
    root, data, ref = setup
    out = root / "killed"
    k = random.Random().randint(2, STEPS - 3)
    proc = _spawn(_argv(data, root / "tok", out))
    _wait_for_step(proc, out / "metrics.jsonl", k)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    meta = json.loads(_header(out / STATE_FILE)["state"])["meta"]
    assert 1 <= meta["step"] < STEPS, f"killed at logged step {k}, checkpoint at {meta['step']}"
    run_stage(_parse(_argv(data, root / "tok", out, "--resume")), say=lambda s: None)
    _assert_same(load_file(str(out / "model.safetensors")), ref)


def test_ctrl_c_saves_then_resume_matches(setup):
    root, data, ref = setup
    out = root / "interrupted"
    proc = _spawn(_argv(data, root / "tok", out, "--save-every", "1000", "--workers", "2"))
    _wait_for_step(proc, out / "metrics.jsonl", 3)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: DataLoader workers get it too
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output[-2000:]
    meta = json.loads(_header(out / STATE_FILE)["state"])["meta"]
    assert 3 <= meta["step"] < STEPS  # saved on Ctrl-C although no periodic save was due
    assert not list(out.glob(".*.tmp"))  # the temporary file was renamed into place
    run_stage(_parse(_argv(data, root / "tok", out, "--resume")), say=lambda s: None)
    _assert_same(load_file(str(out / "model.safetensors")), ref)


def test_rng_state_round_trip():
    st = rng_state()
    a = (torch.rand(3), random.random())
    set_rng_state(st)
    assert torch.equal(torch.rand(3), a[0]) and random.random() == a[1]


def test_resume_without_checkpoint_is_a_clear_error(setup, tmp_path):
    root, data, _ = setup
    with pytest.raises(FileNotFoundError, match="resume"):
        run_stage(_parse(_argv(data, root / "tok", tmp_path / "none", "--resume")), say=lambda s: None)


def _header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()

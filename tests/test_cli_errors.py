"""Every user error on the command line is one clear line and exit code 2: corrupt weights, an unknown device,
a port out of range, numeric flags that would train on nothing."""
from __future__ import annotations

import shutil

import pytest

from minimind_v.cli import main


def one_line_error(capsys, argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's errors leave through SystemExit
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minimind-v") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv,says", [
    (["ask", "--model", "RUN", "--device", "foo", "hi"], "unknown device 'foo'"),
    (["serve", "--model", "RUN", "--port", "99999"], "a port is 0..65535, got 99999"),
    (["train", "sft", "--accum", "0"], "--accum: must be at least 1, got 0"),
    (["train", "sft", "--steps", "-3"], "--steps: must be at least 1, got -3"),
    (["train", "sft", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["caption", "--model", "RUN", "--batch-size", "0", "."], "--batch-size: must be at least 1, got 0"),
])
def test_bad_flags_are_one_line(capsys, tiny_run, argv, says):
    line = one_line_error(capsys, [str(tiny_run) if a == "RUN" else a for a in argv])
    assert says in line


def test_corrupt_weights_are_one_line(capsys, tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = one_line_error(capsys, ["ask", "--model", str(run), "--device", "cpu", "hi"])
    assert "cannot be read" in line and str(run) in line


def test_ask_with_a_temperature_that_underflows_answers_greedily(capsys, tiny_run):
    args = ["ask", "--model", str(tiny_run), "--device", "cpu", "--max-new-tokens", "4", "What color?"]
    assert main(args + ["--temperature", "1e-40", "--seed", "1"]) == 0
    tiny = capsys.readouterr().out
    assert main(args) == 0
    assert tiny == capsys.readouterr().out  # the same as greedy

"""--dtype auto: the probe's choice, its cache, and that bf16 autocast trains like fp32."""
from __future__ import annotations

import json

import pytest
import torch

from minimind_v import device as dev
from minimind_v.config import llm_preset
from minimind_v.data.batches import PadCollate
from minimind_v.data.robust import SkipCollate
from minimind_v.infer.api import auto_weights, load
from minimind_v.train.distributed import Dist
from minimind_v.train.lm_only import LMOnly
from minimind_v.train.loader import EpochLoader
from minimind_v.train.stage import StageOptions, stage_dtype
from minimind_v.train.trainer import TrainConfig, train

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty probe cache of this test's own, and no MINIMIND_V_DTYPE_PROBE from outside."""
    monkeypatch.setenv(dev.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(dev.PROBE_ENV, raising=False)
    return tmp_path / "cache" / "dtype_probe.json"


def fake_probe(monkeypatch, fp32: float, bf16: float, flags: list[str] | None = None) -> list[tuple]:
    """Replace the timing with fixed speeds, on a CPU with bf16 instructions unless `flags` says otherwise;
    returns the list of calls the timing receives."""
    calls: list[tuple] = []
    cpu_flags = ["avx2", "avx512f", "avx512_bf16"] if flags is None else flags
    monkeypatch.setattr(dev, "machine", lambda: ("Some CPU (AVX512)", cpu_flags))

    def measure(device, dtypes, dim, ffn, tokens=dev.PROBE_TOKENS):
        calls.append((device.type, dtypes, dim, ffn, tokens))
        return {"fp32": fp32, "bf16": bf16}

    monkeypatch.setattr(dev, "measure_matmuls", measure)
    return calls


def no_probe(monkeypatch) -> None:
    def measure(*a, **k):
        raise AssertionError("the probe ran")

    monkeypatch.setattr(dev, "measure_matmuls", measure)


@pytest.mark.parametrize("fp32, bf16, want", [(200.0, 880.0, "bf16"), (100.0, 2.0, "fp32"), (100.0, 125.0, "fp32")])
def test_the_measured_speeds_decide(cache, monkeypatch, fp32, bf16, want):
    fake_probe(monkeypatch, fp32, bf16)
    choice = dev.resolve_dtype("auto", CPU, 64, 192)
    assert choice.dtype == want and choice.weights == want  # weights for decoding follow the same measurement
    assert choice.gflops == {"fp32": fp32, "bf16": bf16} and choice.shape == [dev.PROBE_TOKENS, 64, 192]
    row = choice.row(stage="sft")
    assert row["event"] == "dtype" and row["stage"] == "sft" and row["dtype"] == want and not row["cached"]
    assert want in choice.describe() and f"{fp32:.1f}" in choice.describe()


def test_without_bf16_instructions_a_faster_bf16_is_not_believed(cache, monkeypatch):
    fake_probe(monkeypatch, 0.01, 2.0, flags=["avx2"])  # a loaded machine stalled every short fp32 product
    choice = dev.choose_dtype(CPU, 64, 192)
    assert choice.dtype == "fp32" and "no bf16 instructions" in choice.reason
    monkeypatch.setattr(dev, "machine", lambda: ("Unknown CPU", None))  # no flags to read: the probe decides
    assert dev.choose_dtype(CPU, 64, 192, fresh=True).dtype == "bf16"


def test_cuda_takes_bf16_when_the_gpu_has_it(cache, monkeypatch):
    no_probe(monkeypatch)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.choose_dtype(torch.device("cuda"), 512, 1408).dtype == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    choice = dev.choose_dtype(torch.device("cuda"), 512, 1408)
    assert choice.dtype == "fp32" and "Some GPU" in choice.describe()
    assert not cache.exists()  # nothing measured, nothing cached


def test_the_cache_is_written_read_back_and_keyed(cache, monkeypatch):
    calls = fake_probe(monkeypatch, 100.0, 300.0)
    first = dev.choose_dtype(CPU, 64, 192)
    assert len(calls) == 1 and cache.is_file() and not first.cached
    again = dev.choose_dtype(CPU, 64, 192)
    assert len(calls) == 1 and again.cached and again.dtype == first.dtype == "bf16"
    assert again.gflops == first.gflops and again.cpu_flags == first.cpu_flags
    dev.choose_dtype(CPU, 128, 384)  # other shapes: another key, measured
    assert len(calls) == 2 and len(json.loads(cache.read_text())) == 2
    dev.choose_dtype(CPU, 64, 192, fresh=True)
    monkeypatch.setenv(dev.PROBE_ENV, "fresh")
    dev.choose_dtype(CPU, 64, 192)
    assert len(calls) == 4


def test_a_corrupt_cache_is_measured_again_and_rewritten(cache, monkeypatch):
    calls = fake_probe(monkeypatch, 100.0, 2.0)
    cache.parent.mkdir(parents=True)
    for junk in ("{not json", "[1, 2]", json.dumps({"x": "y"})):
        cache.write_text(junk)
        assert dev.choose_dtype(CPU, 64, 192).dtype == "fp32"
        assert len(json.loads(cache.read_text())) >= 1
    assert len(calls) == 3
    key = next(iter(json.loads(cache.read_text())))
    cache.write_text(json.dumps({key: {"dtype": "bf16", "unknown_field": 1}}))  # another version's entry
    assert dev.choose_dtype(CPU, 64, 192).dtype == "fp32" and len(calls) == 4


def test_explicit_dtypes_skip_the_probe(cache, monkeypatch):
    no_probe(monkeypatch)
    for dt in ("fp32", "bf16", "fp16"):
        assert dev.resolve_dtype(dt, CPU, 64, 192).dtype == dt
    with pytest.raises(ValueError, match="unknown dtype"):
        dev.resolve_dtype("fp8", CPU, 64, 192)
    model = LMOnly(llm_preset("shapes-tiny"))
    opts = StageOptions(stage="llm-pretrain", data="x", out=str(cache.parent), dtype="fp32")
    assert stage_dtype(opts, model, CPU, Dist()).dtype == "fp32"


def test_stage_auto_measures_and_resume_keeps_the_runs_precision(cache, tmp_path, monkeypatch):
    calls = fake_probe(monkeypatch, 100.0, 300.0)
    model = LMOnly(llm_preset("shapes-tiny"))
    opts = StageOptions(stage="llm-pretrain", data="x", out=str(tmp_path / "run"))
    assert stage_dtype(opts, model, CPU, Dist()).dtype == "bf16"
    assert calls[0][2:4] == (model.llm.cfg.dim, model.llm.cfg.ffn_dim)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stage.json").write_text(json.dumps({"train": {"dtype": "fp32"}}))
    resumed = StageOptions(stage="llm-pretrain", data="x", out=str(tmp_path / "run"), resume=True)
    assert stage_dtype(resumed, model, CPU, Dist()).dtype == "fp32"


def test_weights_auto_follows_the_probe(cache, tiny_run, monkeypatch, capsys):
    fake_probe(monkeypatch, 100.0, 300.0)
    assert auto_weights(tiny_run, CPU).weights == "bf16"
    load(str(tiny_run), device="cpu", weights="auto")  # says what it chose, once the model has loaded
    assert "weights bf16" in capsys.readouterr().err
    fake_probe(monkeypatch, 100.0, 2.0)
    assert auto_weights(tiny_run, CPU).weights == "bf16"  # cached: the same machine and shapes
    assert auto_weights(tiny_run, CPU).weights == dev.choose_dtype(CPU, 32, 64).weights
    dev.choose_dtype(CPU, 32, 64, fresh=True)
    assert auto_weights(tiny_run, CPU).weights == "fp32"


def test_the_real_probe_is_short_and_sane(cache):
    import time

    t = time.perf_counter()
    choice = dev.choose_dtype(CPU, 64, 192)
    assert time.perf_counter() - t < 5  # two dtypes, each well under a second (slack for a busy machine)
    assert choice.dtype in ("fp32", "bf16") and all(v > 0 for v in choice.gflops.values())
    assert set(choice.gflops) == {"fp32", "bf16"} and choice.device


class Rows(torch.utils.data.Dataset):
    """Sequences with a learnable pattern: each token follows from the one before."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i):
        ids = (torch.arange(24) * (1 + i % 3) + i) % 200 + 4
        return {"input_ids": ids, "labels": ids.clone()}


def _final_loss(dtype: str) -> tuple[float, float]:
    torch.manual_seed(0)
    model = LMOnly(llm_preset("shapes-tiny", vocab_size=256))
    loader = EpochLoader(Rows(), 8, collate_fn=SkipCollate(inner=PadCollate()))
    rows = train(model, loader, TrainConfig(steps=30, batch_size=8, lr=3e-3, dtype=dtype, log_every=29),
                 device=CPU)
    return rows[0]["loss"], rows[-1]["loss"]


def test_bf16_autocast_reaches_the_fp32_loss(one_thread):
    first32, last32 = _final_loss("fp32")
    first16, last16 = _final_loss("bf16")
    assert last32 < 0.7 * first32 and last16 < 0.7 * first16  # both learnt something: a tie between two
    assert last16 == pytest.approx(last32, rel=0.02)  # untrained models would prove nothing

"""Training switches: per-part learning rates, mixed precision, optional loggers, schedule."""
from __future__ import annotations

import pytest
import torch

from minimind_v.config import LLMConfig, VisionConfig, VLMConfig
from minimind_v.data.batches import PadCollate
from minimind_v.data.robust import SkipCollate
from minimind_v.model.vlm import MiniMindVLM
from minimind_v.train.lm_only import LMOnly
from minimind_v.train.loader import EpochLoader
from minimind_v.train.metrics_log import MetricsLog
from minimind_v.train.optim import lr_at, make_optimizer
from minimind_v.train.freeze import apply_freeze
from minimind_v.train.trainer import TrainConfig, train

TINY = LLMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=64)


def test_per_part_learning_rates_and_no_decay_groups():
    model = MiniMindVLM(VLMConfig(llm=TINY, vision=VisionConfig(image_size=16, patch_size=8, width=16, layers=1,
                                                                 heads=2)))
    apply_freeze(model, freeze_llm=0)
    cfg = TrainConfig(lr=1e-4, lr_projector=1e-3)
    opt = make_optimizer(model, cfg)
    scales = {(g["part"], g["weight_decay"] > 0): g["lr_scale"] for g in opt.param_groups}
    assert scales[("projector", True)] == pytest.approx(10.0) and scales[("llm", True)] == 1.0
    assert ("llm", False) in scales  # norms and the embedding: no weight decay
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)  # frozen vision left out


def test_schedule_warmup_then_cosine_to_the_floor():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))


class Rows(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i):
        ids = torch.arange(4, 20) + i % 7
        return {"input_ids": ids, "labels": ids.clone()}


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(dtype):
    torch.manual_seed(0)
    model = LMOnly(TINY)
    loader = EpochLoader(Rows(), 8, collate_fn=SkipCollate(inner=PadCollate()))
    rows = train(model, loader, TrainConfig(steps=8, batch_size=8, lr=1e-2, dtype=dtype, log_every=7),
                 device=torch.device("cpu"))
    assert rows[-1]["loss"] < rows[0]["loss"] and all(torch.isfinite(p).all() for p in model.parameters())
    assert model.llm.embed_tokens.weight.dtype == torch.float32  # master weights stay fp32


def test_metrics_log_optional_backends(tmp_path):
    with pytest.raises(ValueError, match="unknown --log-to"):
        MetricsLog(None, to="mlflow")
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install tensorboard"):
            MetricsLog(None, to="tensorboard")
    else:
        log = MetricsLog(tmp_path / "m.jsonl", to="tensorboard", log_dir=tmp_path)
        log.log({"stage": "x", "step": 0, "loss": 1.0})
        log.close()
        assert list((tmp_path / "tensorboard").iterdir())


def test_quickstart_style_iterable_still_trains(tmp_path):
    """The plain `train(model, loader, cfg, device=, metrics_path=, stage=)` call of the quickstart."""
    torch.manual_seed(0)
    model = LMOnly(TINY)
    dl = torch.utils.data.DataLoader(Rows(), batch_size=8, collate_fn=PadCollate())
    rows = train(model, dl, TrainConfig(steps=6, batch_size=8, lr=1e-2, log_every=5), device=torch.device("cpu"),
                 metrics_path=tmp_path / "m.jsonl", stage="sft")
    assert [r["step"] for r in rows] == [0, 5] and (tmp_path / "m.jsonl").read_text().count("\n") == 3


def test_validation_loss_is_logged_plotted_and_shown(tmp_path, tiny_run, capsys):
    import json

    from minimind_v.cli import main
    from minimind_v.data.synthetic import synthetic_rows, write_jsonl

    rows, _ = synthetic_rows(16, seed=8, words=(2, 8))
    write_jsonl(rows[:12], tmp_path / "train" / "d.jsonl", tmp_path / "train")  # images beside each file
    write_jsonl(rows[12:], tmp_path / "val" / "d.jsonl", tmp_path / "val")
    assert main(["train", "sft", "--data", str(tmp_path / "train" / "d.jsonl"),
                 "--val-data", str(tmp_path / "val" / "d.jsonl"), "--eval-every", "2", "--val-batches", "1",
                 "--from", str(tiny_run), "--out", str(tmp_path / "o"), "--steps", "5", "--batch-size", "2",
                 "--max-len", "300", "--workers", "0", "--device", "cpu", "--dtype", "fp32"]) == 0
    logged = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in logged if "val_loss" in r]
    assert [r["step"] for r in val] == [1, 3, 4] and all(0 < r["val_loss"] < 20 for r in val)
    assert (tmp_path / "o" / "loss.png").stat().st_size > 1000
    assert "val=" in capsys.readouterr().err  # the progress bar shows it

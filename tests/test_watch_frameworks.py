"""The watcher inside real framework runs on the CPU: Lightning's Trainer.fit and Hugging Face's Trainer.train."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

X = torch.randn(512, 20, generator=torch.Generator().manual_seed(2))
Y = (X[:, :3].sum(1) > 0).long()


def test_lightning_callback_watches_fit_with_accumulation_and_clipping(tmp_path):
    pl = pytest.importorskip("lightning.pytorch", reason="Lightning is not installed (pip install '.[lightning]')")
    from babysitter.lightning import BabysitterCallback

    class Module(pl.LightningModule):
        def __init__(self, fail_at=None):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 2))
            self.fail_at = fail_at

        def training_step(self, batch, i):
            if self.fail_at is not None and self.global_step == self.fail_at:
                raise RuntimeError("a bug in training_step")
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def fit(module, out):
        callback = BabysitterCallback(out=out, every=10)
        trainer = pl.Trainer(max_steps=60, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                             accumulate_grad_batches=2, gradient_clip_val=1.0, callbacks=[callback])
        trainer.fit(module, DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=True))
        return trainer, callback

    trainer, callback = fit(Module(), tmp_path / "ok")
    report = callback.report
    assert report.run["optimizer_steps"] == trainer.global_step == 60 and report.run["backwards"] == 120
    statuses = {c.id: c.status for c in report.checks}
    assert statuses["loss_trend"] == "pass" and statuses["nonfinite"] == "pass", report.checks
    first_loss = report["loss_trend"].plots[0].series[0].y[0]
    assert first_loss == pytest.approx(0.69, abs=0.1)  # ln 2 at init: not divided by the 2 accumulated batches
    assert (tmp_path / "ok" / "report.json").exists()
    with pytest.raises(RuntimeError, match="a bug"):
        fit(Module(fail_at=30), tmp_path / "failed")
    data = json.loads((tmp_path / "failed" / "report.json").read_text())
    assert data["run"]["optimizer_steps"] == 30 and "a bug in training_step" in data["run"]["stopped_by"]


def test_hf_trainer_callback_watches_train(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="the Trainer needs accelerate (pip install '.[hf]')")
    from babysitter.hf import BabysitterTrainerCallback

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    ids = torch.randint(1, 50, (256, 12), generator=torch.Generator().manual_seed(3))
    labels = (ids[:, 0] > 25).long()
    data = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": y} for i, y in zip(ids, labels)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=60, per_device_train_batch_size=16,
                                          learning_rate=1e-3, report_to=[], save_strategy="no", logging_steps=1000,
                                          use_cpu=True, disable_tqdm=True, max_grad_norm=0.0)
    with BabysitterTrainerCallback(out=tmp_path / "report", every=20) as callback:
        transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    report = callback.report
    assert report.run["optimizer_steps"] == 60
    statuses = {c.id: c.status for c in report.checks}
    assert statuses["nonfinite"] == "pass" and statuses["loss_trend"] in ("pass", "warn"), report.checks
    assert report["loss_trend"].metrics["steps"] == 60  # a loss for every step, from the model's outputs
    assert report["grad_norms"].metrics["suggested_clip"] > 0
    assert not any(m._forward_hooks for m in model.modules())
    assert (tmp_path / "report" / "report.html").exists()

"""Training: summed per-task logistic loss with task masks, plus score regularization.

Loss per batch = sum over tasks of the masked mean binary cross-entropy (a task
contributes only where it can happen: no video_view_10s on organic items) +
``distill_weight`` x a distillation term toward a teacher model's scores (squared
logit difference by default, or cross-entropy toward its probabilities; see
``training_loss``). That term is the Closeup post's score regularization: it keeps
a retrained model's scores close to its predecessor's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from features.assembly import FeatureSpec

from .dataset import RowSet
from .model import ModelConfig, RankingModel, build_model
from .progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and loss knobs; stored in the artifact card."""

    epochs: int = 2
    batch_size: int = 512
    lr: float = 3e-3
    distill_weight: float = 0.0
    distill: str = "logit_mse"  # or "bce"
    seed: int = 0
    threads: int = 2
    progress: bool = True

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def to_tensors(arrays: Dict[str, np.ndarray]) -> Dict[str, Tensor]:
    """Numpy model inputs -> tensors (int64 ids, bool masks, float32 dense)."""
    out: Dict[str, Tensor] = {}
    for k, v in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if t.dtype in (torch.int32, torch.int16, torch.uint8) and k != "seq_mask":
            t = t.long()
        out[k] = t
    return out


def masked_bce(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Sum over tasks of the mean BCE over rows where ``mask`` is 1. All ``[B, T]``; returns a scalar."""
    per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * mask
    return (per.sum(0) / mask.sum(0).clamp_min(1.0)).sum()


def masked_logit_mse(logits: Tensor, teacher_logits: Tensor, mask: Tensor) -> Tensor:
    """Sum over tasks of the mean squared logit difference over valid rows. ``[B, T]`` -> scalar."""
    per = (logits - teacher_logits).square() * mask
    return (per.sum(0) / mask.sum(0).clamp_min(1.0)).sum()


def training_loss(logits: Tensor, labels: Tensor, mask: Tensor, teacher_logits: Tensor | None = None,
                  distill_weight: float = 0.0, distill: str = "logit_mse") -> Tensor:
    """Summed per-task logistic loss + ``distill_weight`` x a distillation term toward the teacher.

    ``distill``: ``logit_mse`` (squared logit difference: pulls the score scale itself,
    strong even where probabilities are small) or ``bce`` (cross-entropy toward the
    teacher's probabilities).
    """
    loss = masked_bce(logits, labels, mask)
    if teacher_logits is not None and distill_weight > 0:
        term = (masked_logit_mse(logits, teacher_logits, mask) if distill == "logit_mse"
                else masked_bce(logits, torch.sigmoid(teacher_logits), mask))
        loss = loss + distill_weight * term
    return loss


@torch.inference_mode()
def predict_logits(model: RankingModel, rows: RowSet, batch_size: int = 4096) -> np.ndarray:
    """Raw logits ``[R, T]`` of ``model`` on every row."""
    model.eval()
    out = [model(to_tensors(rows.batch(np.arange(i, min(i + batch_size, len(rows)))))).numpy()
           for i in range(0, len(rows), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 6), dtype=np.float32)


def train_model(rows: RowSet, spec: FeatureSpec, model_config: ModelConfig, config: TrainConfig,
                teacher: RankingModel | None = None) -> tuple[RankingModel, list[dict[str, float]]]:
    """Train a fresh model on ``rows``; returns the model (eval mode) and per-epoch history."""
    torch.set_num_threads(config.threads)
    model = build_model(spec, model_config, seed=config.seed)
    all_idx = np.arange(len(rows))
    stats = rows.batch(all_idx[: min(len(rows), 50_000)], dedupe=False)
    model.set_normalization(torch.from_numpy(stats["user_dense"]), torch.from_numpy(stats["cand_dense"]))
    if rows.content is not None:
        model.set_content(torch.from_numpy(rows.content))
    elif model_config.use_content:
        log.warning("training rows carry no item content table: every item reads as 'no content'")
    teacher_logits = torch.from_numpy(predict_logits(teacher, rows)) if teacher is not None else None
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    labels, mask = torch.from_numpy(rows.labels), torch.from_numpy(rows.mask)
    rng = np.random.default_rng(config.seed)
    steps = len(rows.request_batches(config.batch_size, np.random.default_rng(0)))
    total = steps * config.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(total, 1), pct_start=0.1)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    progress = Progress("train", total, "steps", enabled=config.progress)
    for epoch in range(config.epochs):
        model.train()
        run = 0.0
        for s, idx in enumerate(rows.request_batches(config.batch_size, rng)):
            logits = model(to_tensors(rows.batch(idx)))
            tl = teacher_logits[idx] if teacher_logits is not None else None
            loss = training_loss(logits, labels[idx], mask[idx], tl, config.distill_weight, config.distill)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run = 0.98 * run + 0.02 * float(loss.detach()) if s else float(loss.detach())
            if config.progress:
                done = epoch * steps + s + 1
                rate = done * config.batch_size / (time.perf_counter() - t0)
                progress.update(done, f"epoch {epoch + 1}/{config.epochs} loss {run:.4f} {rate:,.0f} rows/s")
        history.append({"epoch": epoch + 1, "loss": run, "seconds": time.perf_counter() - t0})
    progress.close()
    model.eval()
    log.info("trained %s on %d rows in %.1fs", model_config.arch, len(rows), time.perf_counter() - t0)
    return model, history


__all__ = ["TrainConfig", "masked_bce", "masked_logit_mse", "predict_logits", "to_tensors", "train_model", "training_loss"]

"""The one training loop, for every model the loop trains (classifiers and denoisers).

It owns what every task needs: epochs of Adam steps under bf16 autocast, the learning-rate
schedule (``none | cosine | step``: one 10× drop after ``step_at`` of the epochs), the kept
weights (the best validation score; a later epoch must be strictly better), early stopping (stop
once ``early_stopping`` epochs in a row brought no better score), a resume state written
atomically after every epoch, a progress bar and the per-epoch history. A :class:`Task` brings
only what differs: how a batch is drawn, the loss, and the validation score.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.training.checkpoint import StateStore, capture_rng, restore_rng
from pipeline.training.common import autocast

log = logging.getLogger(__name__)


class Task(Protocol):
    """What a training task supplies to :func:`fit`."""

    score: str
    """Key of the validation score in :meth:`validate`'s row; higher is better."""
    samples_per_epoch: int

    def generators(self) -> dict[str, torch.Generator]:
        """The task's random generators, saved in and restored from the resume state."""

    def batches(self, epoch: int) -> Iterable[Any]:
        """The batches of one epoch."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch (run under autocast) and tensors to sum over the epoch."""

    def train_row(self, sums: dict[str, float]) -> dict[str, float]:
        """The epoch's training figures from the summed tensors."""

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Validation figures after an epoch (with ``score``), or {} without validation."""


class LoopConfig(Protocol):
    epochs: int
    lr: float
    weight_decay: float
    schedule: str
    step_at: float
    early_stopping: int


@dataclass
class FitResult:
    state_dict: dict
    best_epoch: int
    best_score: float | None
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    samples_per_s: float = 0.0
    stopped_early: bool = False
    resumed_from: int | None = None
    batching: str = ""
    """How batches were drawn (the classifier's tiles or patches), for the reports."""
    extra: dict = field(default_factory=dict)
    """Task-specific figures for the reports (e.g. the denoiser's initial validation PSNR)."""


def make_schedule(opt: torch.optim.Optimizer, cfg: LoopConfig):
    """``cosine`` anneals to 0 over the epochs; ``step`` drops the rate 10× once, after
    ``ceil(step_at · epochs)`` epochs (DnCNN's drop at 60 %: SaoYan's epoch 30 of 50)."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        at = max(1, math.ceil(cfg.step_at * cfg.epochs))
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[at], gamma=0.1)
    return None


def _copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def fit(
    model: nn.Module,
    task: Task,
    cfg: LoopConfig,
    *,
    device: torch.device | str = "cpu",
    amp: bool = True,
    store: StateStore | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """Train ``model`` (already on ``device``) on ``task``; it ends holding the kept weights.

    With ``store``, the state after every epoch is saved there, and a state found there at the
    start (same fingerprint) is resumed: on CPU the result equals an uninterrupted run's.
    """
    device = torch.device(device)
    opt_kw = {"fused": True} if device.type in ("cpu", "cuda") else {}
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **opt_kw)
    sched = make_schedule(opt, cfg)
    res = FitResult(state_dict=_copy(model.state_dict()), best_epoch=0, best_score=None)
    history: list[dict] = []
    first, elapsed, since_best = 1, 0.0, 0
    state = store.load() if store is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        restore_rng(state["rng"], task.generators())
        history, since_best = list(state["history"]), int(state["since_best"])
        res.best_epoch, res.best_score = int(state["best_epoch"]), state["best_score"]
        res.state_dict = dict(state["best_state_dict"])
        first, elapsed = int(state["epoch"]) + 1, float(state["elapsed_s"])
        res.resumed_from = first
        log.info("%s: resuming from epoch %d", desc, first)
    t0 = time.perf_counter() - elapsed
    t_here, epochs_here = time.perf_counter(), 0
    bar = tqdm(
        range(first, cfg.epochs + 1),
        desc=desc,
        unit="epoch",
        initial=first - 1,
        total=cfg.epochs,
        disable=not progress,
    )
    res.stopped_early = bool(cfg.early_stopping) and first > 1 and since_best >= cfg.early_stopping
    for epoch in [] if res.stopped_early else bar:
        model.train()
        sums: dict[str, torch.Tensor] = {}
        for batch in task.batches(epoch):
            with autocast(device, amp, cpu=True):
                loss, stats = task.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in stats.items():
                sums[k] = sums[k] + v.detach() if k in sums else v.detach()
        if sched is not None:
            sched.step()
        lr = opt.param_groups[0]["lr"]  # after the epoch's step: the rate the next epoch uses
        row = {"epoch": epoch, **task.train_row({k: v.item() for k, v in sums.items()})}
        row |= task.validate(model)
        row |= {"lr": lr, "time_s": time.perf_counter() - t0}
        history.append(row)
        epochs_here += 1
        score = row.get(task.score)
        if res.best_epoch == 0 or score is None or score > res.best_score:
            res.best_epoch, res.best_score, since_best = epoch, score, 0
            res.state_dict = _copy(model.state_dict())
        else:
            since_best += 1
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in ("epoch", "time_s")})
        if store is not None:
            store.save(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else {},
                    "rng": capture_rng(task.generators()),
                    "history": history,
                    "since_best": since_best,
                    "best_epoch": res.best_epoch,
                    "best_score": res.best_score,
                    "best_state_dict": res.state_dict,
                    "elapsed_s": time.perf_counter() - t0,
                }
            )
        if on_epoch is not None:
            on_epoch(row)
        if cfg.early_stopping and score is not None and since_best >= cfg.early_stopping:
            res.stopped_early = True
            break
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    res.wall_time_s = time.perf_counter() - t0
    here = time.perf_counter() - t_here
    res.samples_per_s = task.samples_per_epoch * epochs_here / here if here > 0 else 0.0
    res.history = history
    model.load_state_dict(res.state_dict)
    return res

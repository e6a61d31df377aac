"""Training on long-tailed CIFAR: SGD with a per-epoch schedule, final-epoch evaluation and data
parallelism under ``torchrun``, on the shared loop of :mod:`npe_models.runs` (a checkpoint every
epoch, exact resumption, a JSON-lines log).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..data import LongTailedData, load_long_tailed
from ..distributed import DistributedContext, all_reduce_sum, barrier, bf16_autocast, init_distributed
from ..runs import (
    LOG_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    NonFiniteLossError,
    TrainingLoop,
    check_run_dir,
    read_json,
    read_jsonl,
    write_json,
)
from .checkpoint import build_model, save_weights, set_label_names
from .config import TrainConfig
from .evaluate import ProgressFactory, evaluate_model, group_accuracy, summary
from .methods import TrainingMethod, make_method
from .plots import save_evaluation_plots

__all__ = ["train", "TrainResult", "NonFiniteLossError", "ProgressFactory", "TENSORBOARD_DIR"]

logger = logging.getLogger(__name__)

_CHECK_EVERY = 20  # steps between the loss's read-backs (finiteness check, step bar)
TENSORBOARD_DIR = "tensorboard"  # the run directory's folder of TensorBoard event files
_NOT_SCALARS = ("epoch", "images")  # log fields that are not worth a TensorBoard chart (the step, a constant)


@dataclass
class TrainResult:
    """Where the run lives, how many epochs it has completed and its final metrics (``None`` until finished)."""

    run_dir: Path
    epochs_done: int
    metrics: Optional[dict[str, Any]]
    already_finished: bool = False


class _TrainingForward(nn.Module):
    """The method's training forward pass as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: nn.Module, method: TrainingMethod) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, images: Tensor) -> Any:
        return self.method.forward(self.model, images)


@contextlib.contextmanager
def _determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels (and no cuDNN autotuning) for the duration of a run, restoring the previous settings.

    On the CPU every kernel the engine uses is deterministic. On CUDA some backward kernels (e.g.
    adaptive average pooling) have no deterministic version: they warn instead of failing.
    """
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    if enabled and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=device.type == "cuda")
    torch.backends.cudnn.benchmark = device.type == "cuda" and not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]


def _training_accuracy(correct: np.ndarray, seen: np.ndarray, train_counts: np.ndarray) -> dict[str, Optional[float]]:
    """Training accuracy overall and per group (mean per-class accuracy over the classes seen)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(seen > 0, 100.0 * correct / seen, np.nan)
    return {"top1": float(100.0 * correct.sum() / max(1, seen.sum())), **group_accuracy(per_class, train_counts)}


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), gamma=config.gamma)


def _check_compile_mode(mode: Optional[str], device: torch.device) -> None:
    """Fail before any data loads, with the fix, where ``torch.compile(mode=mode)`` cannot work on ``device``
    (inductor would fail only at the first step, deep inside): CUDA graphs need a GPU, CPU code a C++ compiler."""
    if mode == "reduce-overhead" and device.type != "cuda":
        raise ValueError(
            f"--compile reduce-overhead captures CUDA graphs and needs a CUDA device; on {device.type} "
            "use --compile default."
        )
    if mode is not None and device.type == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None:
        raise ValueError(
            "--compile on the CPU needs a C++ compiler (g++, or the one $CXX names); install one or "
            "train without --compile."
        )


class _Run(TrainingLoop):
    """One training run in one process: its data, model, optimiser, schedule and run directory."""

    task = TrainConfig.task
    unit = "epoch"
    restart_hint = "lower the learning rate (--lr) or train without --amp"

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        context: DistributedContext,
        progress: Optional[ProgressFactory],
        summary_writer: Optional[type] = None,
    ) -> None:
        super().__init__(config, run_dir, config.epochs, is_main=context.is_main)
        self.context = context
        self.device = context.device
        self.progress = progress if context.is_main else None
        self.summary_writer = summary_writer if context.is_main else None
        self.run_bar: Any = None  # the run-level bar, from begin()
        self.writer: Any = None  # the TensorBoard SummaryWriter, from begin()
        self.final_metrics: Optional[dict[str, Any]] = None  # the last epoch's evaluation
        _check_compile_mode(config.compile, self.device)
        if config.batch_size % (context.world_size * config.accum_steps):
            raise ValueError(
                f"batch_size {config.batch_size} (the global batch) must be divisible by the {context.world_size} "
                f"processes times {config.accum_steps} accumulation steps."
            )
        self.data: LongTailedData = load_long_tailed(
            config.dataset,
            config.data_dir,
            rho=config.rho,
            max_per_class=config.max_per_class,
            download=config.download,
            split_dir=config.split_dir,
            image_size=config.image_size,
            workers=config.workers,
        )
        counts = torch.as_tensor(self.data.counts, dtype=torch.float32)
        log_prior = torch.log(counts / counts.sum()).to(self.device)
        torch.manual_seed(config.seed)
        self.model = build_model(config, self.data.num_classes)
        if self.data.class_names is not None:
            set_label_names(self.model, self.data.class_names)
        self.method = make_method(config, log_prior)
        parameters = self.method.setup(self.model)
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.model.to(self.device, memory_format=memory_format)
        self.optimizer = torch.optim.SGD(
            parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.scheduler = _make_scheduler(self.optimizer, config)
        forward: nn.Module = _TrainingForward(self.model, self.method)
        self.ddp = DistributedDataParallel(forward) if context.enabled else None
        forward = self.ddp or forward
        self.forward = torch.compile(forward, mode=config.compile) if config.compile else forward
        self.stream = self.data.training_batches(
            self.model,
            config.batch_size // (context.world_size * config.accum_steps),
            device=self.device,
            sampling=self.method.sampling,
            seed=config.seed,
            rank=context.rank,
            world_size=context.world_size,
            channels_last=config.channels_last,
        )

    def checkpointed(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}

    def _gradient_sync(self, steps_now: bool) -> contextlib.AbstractContextManager:
        """DDP's all-reduce only on the micro-batch that ends an accumulation group."""
        if steps_now or self.ddp is None:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def begin(self, start: int) -> None:
        """The run-level bar (epochs, starting at the resumed one) and the TensorBoard writer, on the main process."""
        if self.progress is not None:
            self.run_bar = self.progress(total=self.total, initial=start, desc="training", unit="epoch", position=0)
        if self.summary_writer is not None:
            self.writer = self.summary_writer(str(self.run_dir / TENSORBOARD_DIR))

    def close(self) -> None:
        """Close the run-level bar and the TensorBoard writer (also when the run stops early)."""
        for opened in (self.run_bar, self.writer):
            if opened is not None:
                opened.close()

    def _check_running_loss(self, epoch: int, loss_sums: Tensor, images: int, bar: Any) -> None:
        """Every ``_CHECK_EVERY`` steps, from one read-back of the loss sums: stop on a non-finite loss (without
        DDP, where one process raising alone would hang the others) and show the running loss and lr in the step bar."""
        if self.context.enabled and bar is None:
            return
        sums = loss_sums.tolist()
        if not self.context.enabled and not all(map(math.isfinite, sums)):
            raise self.non_finite(epoch, sums[0])
        if bar is not None:
            bar.set_postfix(loss=f"{sums[0] / max(1, images):.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.4g}")

    def _step_bar(self, epoch: int) -> Any:
        """The bar over epoch ``epoch``'s steps, beneath the run-level one; None without progress bars."""
        if self.progress is None:
            return None
        desc = f"epoch {epoch + 1}/{self.config.epochs}"
        return self.progress(self.stream, total=len(self.stream), desc=desc, leave=False, position=1)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training stream; returns the epoch's log fields."""
        num_classes = self.data.num_classes
        parts = self.method.loss_parts
        loss_sums = torch.zeros(1 + len(parts), device=self.device)
        correct = torch.zeros(num_classes, dtype=torch.long, device=self.device)
        seen = torch.zeros(num_classes, dtype=torch.long, device=self.device)
        self.stream.set_epoch(epoch)
        self.method.set_train_mode(self.model)
        bar = self._step_bar(epoch)
        batches: Iterable = self.stream if bar is None else bar
        images_seen = 0  # on this process, counted on the host
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for step, (images, labels) in enumerate(batches):
            steps_now = (step + 1) % self.config.accum_steps == 0 or step + 1 == len(self.stream)
            with self._gradient_sync(steps_now):
                with bf16_autocast(self.device, self.config.amp):
                    output = self.forward(images)
                    loss, loss_parts = self.method.loss(output, labels)
                (loss / self.config.accum_steps).backward()
            if steps_now:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                values = torch.stack([loss.detach(), *(loss_parts[name].detach() for name in parts)]).float()
                loss_sums += values * len(labels)
                predicted = self.method.logits(output).detach().argmax(1)
                correct.index_add_(0, labels, (predicted == labels).long())  # no bincount / masking: no host sync
                seen.index_add_(0, labels, torch.ones_like(labels))
            images_seen += len(labels)
            if step % _CHECK_EVERY == 0:
                self._check_running_loss(epoch, loss_sums, images_seen, bar)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        for tensor in (loss_sums, correct, seen):
            all_reduce_sum(tensor, self.context)
        if not torch.isfinite(loss_sums).all():
            raise self.non_finite(epoch, loss_sums[0].item())
        images = int(seen.sum().item())
        means = (loss_sums / max(1, images)).tolist()
        record: dict[str, Any] = {"loss": means[0], **{f"loss_{name}": value for name, value in zip(parts, means[1:])}}
        record.update(
            seconds=seconds,
            images=images,
            images_per_s=images / seconds if seconds > 0 else None,
            device=str(self.device),
            train=_training_accuracy(correct.cpu().numpy(), seen.cpu().numpy(), self.data.counts),
        )
        return record

    def evaluate(self, sets: Optional[list[str]] = None) -> dict[str, Any]:
        """The evaluation of ``sets`` (default: all), its bar beneath the run-level one. In fp32 whatever ``--amp``
        says: the run records what its fp32 weights score as they are loaded (bf16 logits flip a few predictions)."""
        return evaluate_model(
            self.model,
            self.data,
            self.device,
            self.config.eval_batch_size,
            channels_last=self.config.channels_last,
            sets=sets,
            progress=None if self.progress is None else functools.partial(self.progress, position=1),
        )

    def train_unit(self, index: int) -> dict[str, Any]:
        """Epoch ``index``: training, the test-set evaluation when due (main process), the schedule's step."""
        config = self.config
        record = {"epoch": index + 1, "lr": self.optimizer.param_groups[0]["lr"], **self.train_epoch(index)}
        last = index + 1 == config.epochs
        if self.is_main and (last or (config.eval_every and (index + 1) % config.eval_every == 0)):
            metrics = self.evaluate() if last else self.evaluate(_monitored_sets(self.data))
            record.update(_log_test_summary(metrics))
            self.final_metrics = metrics if last else None
        self.scheduler.step()
        return record

    def after_unit(self, done: int, record: dict[str, Any]) -> None:
        if self.is_main:
            top1 = next(iter(record["test"].values()))["top1"] if "test" in record else None
            logger.info(
                "epoch %d/%d loss %.4f %.1f images/s%s",
                done,
                self.config.epochs,
                record["loss"],
                record["images_per_s"],
                "" if top1 is None else f" test top-1 {top1:.2f}",
            )
            self._report(done, record, top1)
        barrier(self.context)

    def _report(self, done: int, record: dict[str, Any], top1: Optional[float]) -> None:
        """The epoch in the run-level bar (loss, lr, test top-1 when scored) and its log fields in TensorBoard."""
        if self.run_bar is not None:
            shown = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.4g}"}
            self.run_bar.set_postfix({**shown, **({} if top1 is None else {"top1": f"{top1:.2f}"})}, refresh=False)
            self.run_bar.update(1)
        if self.writer is not None:
            for tag, value in _scalars(record):
                self.writer.add_scalar(tag, value, done)
            self.writer.flush()

    def finish(self, record: Optional[dict[str, Any]]) -> TrainResult:
        """The final weights, metrics.json and plots (main process)."""
        metrics = _finish(self, self.final_metrics) if self.is_main else None
        barrier(self.context)
        return TrainResult(self.run_dir, self.config.epochs, metrics)


def _monitored_sets(data: LongTailedData) -> list[str]:
    """The sets scored at intermediate epochs: CIFAR's full and exact test sets, else every evaluation set."""
    return [name for name in ("full", "exact") if name in data.eval_sets] or list(data.eval_sets)


def _log_test_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The per-epoch log's test fields: primary variant per set, and for NPE models the unadjusted one and how the
    estimate correlates with the log training count."""
    fields: dict[str, Any] = {"test": summary(metrics)}
    if metrics["primary"] != "plain":
        fields["test_unadjusted"] = summary(metrics, "plain")
    estimate = {
        name: {key: scores["prior"][key] for key in ("pearson", "spearman", "slope")}
        for name, scores in metrics["sets"].items()
        if "prior" in scores
    }
    if estimate:
        fields["test_estimate"] = estimate
    return fields


def _scalars(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """The numbers of a log record as TensorBoard tags: its field names, nested ones joined by ``/``
    (``test/full/top1``); ``None`` values and bookkeeping fields are left out."""
    for key, value in record.items():
        if isinstance(value, Mapping):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and f"{prefix}{key}" not in _NOT_SCALARS:
            yield f"{prefix}{key}", float(value)


def _summary_writer_class() -> type:
    """TensorBoard's ``SummaryWriter``; a clear ImportError naming the extra to install when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "TensorBoard logging (--tensorboard) needs the tensorboard package: pip install npe-models[tensorboard]"
        ) from error
    return SummaryWriter


def _training_totals(log_path: Path) -> dict[str, Any]:
    records = read_jsonl(log_path)
    seconds = sum(r["seconds"] for r in records)
    images = sum(r["images"] for r in records)
    return {
        "epochs": len(records),
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else None,
        "devices": sorted({r["device"] for r in records}),
    }


def _finish(run: _Run, metrics: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Write the final weights, metrics.json and plots (main process)."""
    run_dir, config = run.run_dir, run.config
    metrics = metrics if metrics is not None else run.evaluate()
    metrics = {
        "model": config.model,
        "method": config.method,
        "dataset": config.dataset,
        "rho": config.rho,
        **metrics,
        "training": _training_totals(run_dir / LOG_FILE),
        "config": config.to_dict(),
    }
    save_weights(run_dir / WEIGHTS_FILE, run.model, config)
    title = f"{config.model} {config.method} {run.data.title}"
    save_evaluation_plots(metrics, run_dir, next(iter(metrics["sets"])), title, read_jsonl(run_dir / LOG_FILE))
    write_json(run_dir / METRICS_FILE, metrics)
    return metrics


def _train(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    context: DistributedContext,
    progress: Optional[ProgressFactory],
    summary_writer: Optional[type],
) -> TrainResult:
    check_run_dir(run_dir, config, resume)
    if (run_dir / METRICS_FILE).is_file() and (run_dir / WEIGHTS_FILE).is_file():
        return TrainResult(run_dir, config.epochs, read_json(run_dir / METRICS_FILE), already_finished=True)
    barrier(context)
    run = _Run(config, run_dir, context, progress, summary_writer)
    logger.info(
        "%s (%s) on %s: %d training images, %d epochs, device %s, %d process(es) -> %s",
        config.model,
        config.method,
        run.data.title,
        len(run.data.train),
        config.epochs,
        context.device,
        context.world_size,
        run_dir,
    )
    try:
        return run.run(resume)
    finally:
        run.close()


def train(
    config: TrainConfig,
    out_dir: Union[str, Path],
    resume: bool = False,
    progress: Optional[ProgressFactory] = None,
    tensorboard: bool = False,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run ``config`` describes in ``out_dir``; return its final metrics.

    ``progress`` (e.g. ``tqdm.tqdm``) shows a run-level bar over the epochs and each epoch's and
    evaluation's bar beneath it. ``tensorboard`` writes each epoch's log fields as TensorBoard scalars to
    ``out_dir/tensorboard`` (it needs the ``tensorboard`` extra; without it this fails before any work).
    Under ``torchrun`` every process calls this; rank 0 writes the run directory and shows the bars.
    Raises :class:`NonFiniteLossError` when the loss diverges (the last good checkpoint stays).
    """
    config.validate()
    summary_writer = _summary_writer_class() if tensorboard else None
    run_dir = Path(out_dir)
    started_group = not dist.is_initialized()
    context = init_distributed(config.device)
    try:
        with _determinism(config.deterministic, context.device):
            return _train(config, run_dir, resume, context, progress, summary_writer)
    finally:
        if context.enabled and started_group and dist.is_initialized():
            dist.destroy_process_group()

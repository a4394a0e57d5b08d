"""One training loop for every model: writes the run directory, checkpoints, resumes exactly.

Usage::

    result = train_run(config_from_recipe("default", ["train.epochs=3"]), out_root="runs")
    result = resume_run("runs/20261121-101500-cnn-default")     # after a kill

Neural models: seeded batches from memory, optional batch augmentation, a per-step lr schedule,
label smoothing, gradient clipping, an EMA of the weights, early stopping on validation, bf16
autocast where it pays. The weights kept are those of the best validation epoch (a fine-tune's last); the test split
is evaluated once, at the end, and chooses nothing. Classical models are fitted on the same
training split and saved with skops.

Under torchrun (``WORLD_SIZE`` > 1) the same loop runs data-parallel with DistributedDataParallel:
every rank takes its share of each global batch of the single-process order, the loss is scaled so
the all-reduced gradient is the global batch's mean, validation counts are summed over ranks, and
rank 0 alone writes the run directory and shows progress. A checkpoint holds no rank-specific
state, so a run written by N ranks resumes with M.
"""

import contextlib
import errno
import io
import math
import os
import platform
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from digitlab import __version__
from digitlab.core.config import ConfigError, RunConfig, dump_config, load_yaml, resolve_config
from digitlab.core.errors import DigitlabError
from digitlab.core.fileio import atomic_path
from digitlab.core.rundir import RunDir, RunDirError
from digitlab.data.batching import BatchLoader
from digitlab.data.labelled import USER_DIGITS_FILE, UserDigits, load_user_digits, mix_user_digits, save_user_digits
from digitlab.data.loading import Dataset, load_dataset
from digitlab.data.nondigits import cached_nondigits
from digitlab.data.preprocess import PreprocessSpec, compute_preprocess_spec
from digitlab.data.splits import run_split
from digitlab.data.string_batches import (
    USER_STRINGS_FILE,
    StringBatches,
    StringSet,
    UserStrings,
    load_user_strings,
    save_user_strings,
)
from digitlab.data.styles import synthetic_digits
from digitlab.models.registry import count_parameters, create_model, get_entry, make_config
from digitlab.models.runtime import autocast_dtype, predict_logits, resolve_device
from digitlab.training.augment import build_augmenter
from digitlab.training.distributed import Dist, DistributedError, env_dist, init_distributed, shutdown
from digitlab.training.finetune import FinetuneError, load_init_weights
from digitlab.training.optim import build_optimizer, build_scheduler
from digitlab.training.sequence import (
    KEPT_ACCURACY,
    MIN_POLICY_STRINGS,
    READING_FILE,
    check_sequence_config,
    ctc_loss_sum,
    eval_strings,
    exact_matches,
    fit_min_confidence,
    score_strings,
    string_loader,
)

CHECKPOINT_FILE = "state.pt"
NOMINAL_LINE_WIDTH = 128  # a string model's nominal input width (it reads any width; exports start from this)
PROGRESS_EVERY = 20  # batches between progress-bar refreshes (each one syncs a loss value)


@dataclass
class TrainResult:
    """What a finished run reports (also written to ``results.json``)."""

    run_dir: str
    model: str
    n_params: int
    best_val_acc: float
    best_epoch: int
    test_acc: float | None  # None when the run was told not to touch the test split (tuning trials)
    test_errors: int | None
    n_test: int
    train_seconds: float
    epochs_run: int
    device: str
    world_size: int = 1  # processes that trained it (data-parallel ranks)


class TrainingInterrupted(DigitlabError):
    """Ctrl-C (or SIGTERM: exit code 143) during training: the last epoch's checkpoint is intact and the run
    can resume."""

    exit_code = 130


class CheckpointWriteError(RunDirError):
    """An epoch's metrics or checkpoint cannot be written (a full or read-only disk); the previous one is intact."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM during training, handled as Ctrl-C is."""


class _SigtermGate:
    """Where SIGTERM stops training: at once, or, inside ``finishing()`` (an epoch's checkpoint being
    written), as soon as that block ends, so the checkpoint is finished first."""

    def __init__(self) -> None:
        self.finishing = False
        self.pending = False

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        self.finishing = True
        try:
            yield
        finally:
            self.finishing = False
        if self.pending:
            raise _Terminated

    def stop(self) -> None:
        if self.finishing:
            self.pending = True
        else:
            raise _Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[_SigtermGate]:
    """While training runs, SIGTERM raises ``_Terminated`` (a KeyboardInterrupt), so that it ends as Ctrl-C does:
    the checkpoint being written finished, the last one kept, the ``--resume`` command printed. The previous
    handler is restored after, and a second SIGTERM meets it. Only the main thread can own signals; elsewhere
    nothing changes."""
    gate = _SigtermGate()
    if threading.current_thread() is not threading.main_thread():
        yield gate
        return
    previous = signal.getsignal(signal.SIGTERM)

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, previous)
        gate.stop()

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield gate
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class EpochEnd:
    """What a callback sees after each epoch (the checkpoint is already written)."""

    epoch: int
    metrics: dict[str, Any]
    model: nn.Module  # the model validation used (the EMA when enabled)
    spec: PreprocessSpec
    device: torch.device


EpochCallback = Callable[[EpochEnd], None]


@dataclass
class Split:
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], Any], None]:
    """EMA step with the usual warm-up: the effective decay is ``min(decay, (1 + n) / (10 + n))``
    after ``n`` updates, so early epochs are not dominated by the random initial weights."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: Any) -> None:
        n = float(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - d)
        for a, c in zip(averaged, current, strict=True):  # integer buffers (BN's batch count): copy
            if not a.is_floating_point():
                a.copy_(c)

    return update


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_split(cfg: RunConfig, ds: Dataset) -> Split:
    """Train/validation carved from train (stratified, seeded); test untouched."""
    train_idx, val_idx = run_split(ds.train_labels, n_val=cfg.data.n_val, seed=cfg.data.split_seed,
                                   train_subset=cfg.data.train_subset)
    return Split(ds.train_images[train_idx], ds.train_labels[train_idx], ds.train_images[val_idx],
                 ds.train_labels[val_idx], ds.test_images, ds.test_labels)


def _with_user_digits(split: Split, digits: UserDigits, user_share: float) -> Split:
    """A fine-tuning split: the user's training digits repeated into the training set, theirs held out added to
    validation (so the best epoch is chosen on both); the test split stays MNIST's."""
    train_images, train_labels = mix_user_digits(split.train_images, split.train_labels, digits,
                                                 user_share=user_share)
    return Split(train_images, train_labels, np.concatenate([split.val_images, digits.val_images]),
                 np.concatenate([split.val_labels, digits.val_labels.astype(split.val_labels.dtype)]),
                 split.test_images, split.test_labels)


def _with_styles(split: Split, cfg: RunConfig) -> Split:
    """The training digits and ``data.synthetic_styles`` synthetic digits in writing styles MNIST lacks
    (``data.styles``), drawn from the run's seed: the same set every time, so a resumed run sees it too."""
    n = cfg.data.synthetic_styles
    if not n:
        return split
    images, labels = synthetic_digits(n, seed=cfg.seed)
    return replace(split, train_images=np.concatenate([split.train_images, images.numpy()]),
                   train_labels=np.concatenate([split.train_labels, labels.numpy().astype(split.train_labels.dtype)]))


def _accuracy_and_loss(logits: torch.Tensor, labels: np.ndarray) -> tuple[float, float, int]:
    y = torch.as_tensor(labels, dtype=torch.int64)
    if len(y) == 0:
        return float("nan"), float("nan"), 0
    errors = int((logits.argmax(1) != y).sum())
    return 1 - errors / len(y), float(F.cross_entropy(logits, y)), errors


def _model_kwargs(cfg: RunConfig, ds: Dataset, kind: str) -> dict[str, Any]:
    if kind == "sequence":  # a line of any width, the strings' height; the classes are the model's alphabet
        return {"input_size": (cfg.strings.height, NOMINAL_LINE_WIDTH), **cfg.model.args}
    return {"input_size": ds.spec.image_shape, "n_classes": ds.spec.n_classes, **cfg.model.args}


def _model_json(cfg: RunConfig, ds: Dataset, spec: PreprocessSpec, n_params: int, kind: str) -> dict[str, Any]:
    model_cfg = make_config(cfg.model.name, **_model_kwargs(cfg, ds, kind))
    alphabet = getattr(model_cfg, "alphabet", None)
    return {
        "name": cfg.model.name,
        "kind": kind,
        "args": model_cfg.model_dump(mode="json"),
        "n_params": n_params,
        "class_names": ["<blank>", *alphabet] if kind == "sequence" else list(ds.spec.class_names),
        "dataset": ds.spec.name,
        "preprocess": spec.model_dump(mode="json"),
        **({"finetuned_from": cfg.finetune.model_dump(mode="json", exclude_none=True, include={
            "init", "init_sha256", "images", "n_images", "strings", "n_strings"})} if cfg.finetune else {}),
    }


def _environment(device: torch.device) -> dict[str, Any]:
    return {
        "digitlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def _save_checkpoint(run: RunDir, state: dict[str, Any]) -> None:
    # Serialised in memory, then written by Python: a full disk is an OSError with its errno, not torch's
    # RuntimeError ("unexpected pos", "file write failed") that names no cause.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    run.checkpoint_dir.mkdir(exist_ok=True)
    with atomic_path(run.checkpoint_dir / CHECKPOINT_FILE) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def _save_epoch(run: RunDir, row: dict[str, Any], state: dict[str, Any]) -> None:
    """Append the epoch's metrics and write its checkpoint; a failed write is one line saying what is kept.

    Raises:
        CheckpointWriteError: a write failed (the previous checkpoint is intact: every write is atomic).
    """
    try:
        run.append_metrics(row)
        _save_checkpoint(run, state)
    except OSError as e:
        epoch, last = state["epoch"], state["epoch"] - 1
        cause = "no space left" if e.errno == errno.ENOSPC else (e.strerror or str(e)).lower()
        where = Path(e.filename).parent if e.filename else run.path
        fix = "free space" if e.errno == errno.ENOSPC else "make it writable"
        kept = (f"the last checkpoint (epoch {last}) is intact; {fix} and continue with digitlab train --resume "
                f"{run.path}") if last else f"no checkpoint was written yet; {fix} and train again"
        raise CheckpointWriteError(f"{cause} on {where}: epoch {epoch}'s checkpoint was not written; {kept}") from None


def _load_checkpoint(run: RunDir) -> dict[str, Any]:
    path = run.checkpoint_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise RunDirError(f"{run.path}: no checkpoint to resume from ({path} is missing)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain types only
    except Exception as e:
        raise RunDirError(f"{path}: unreadable checkpoint: {' '.join(str(e).split())[:200]}") from None


def train_run(
    cfg: RunConfig,
    *,
    out_root: str | os.PathLike[str] = "runs",
    run: RunDir | None = None,
    resume: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    callbacks: Sequence[EpochCallback] = (),
    evaluate_test: bool = True,
    user_digits: UserDigits | None = None,
    user_strings: UserStrings | None = None,
) -> TrainResult:
    """Train ``cfg`` into a new run directory (or continue ``run`` when ``resume``).

    Args:
        cfg: the resolved config.
        out_root: parent of the new run directory.
        run: an existing run directory (required with ``resume``).
        resume: continue from ``run``'s checkpoint.
        show_progress: a progress bar per epoch on stderr.
        log: receives one line per epoch (for ``--quiet``).
        callbacks: ``fn(EpochEnd)`` after each epoch's checkpoint is written.
        evaluate_test: measure the test split once at the end; False leaves it unread (tuning).
        user_digits: a fine-tuning run's (``cfg.finetune``) prepared user digits; kept in the run directory, from
            where a resumed run reads them.
        user_strings: likewise, a string model's fine-tuning run's prepared user strings.

    Everything that can fail on the config (data, split, model, batches, optimizer, schedule) runs before a new
    run directory is created; while it trains, the run is locked (``RunDir.locked``); SIGTERM ends it as
    Ctrl-C does.

    Raises:
        DigitlabError: bad config, missing data, or an unusable run directory. RunLockedError: another process
            trains in ``run``. TrainingInterrupted: Ctrl-C or SIGTERM (the run can resume).
            CheckpointWriteError: a full or read-only disk.
    """
    entry = get_entry(cfg.model.name)
    if entry.kind == "sequence":
        check_sequence_config(cfg)
    d = env_dist()
    if d.enabled and entry.kind == "classical":
        raise DistributedError(f"{cfg.model.name} is a classical model: it trains in one process, not under "
                               f"torchrun or --nproc")
    seed_everything(cfg.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = d.device(resolve_device(cfg.train.device)) if entry.kind != "classical" else torch.device("cpu")
    d = init_distributed(device, cfg.train.dist_timeout)
    try:
        with _sigterm_as_interrupt() as gate, contextlib.ExitStack() as held:
            if not d.is_main:
                log = None
            if run is not None and d.is_main:  # a second process resuming this run stops before loading anything
                held.enter_context(run.locked())
            ds = load_dataset(cfg.data.dataset, cfg.data.data_dir)
            split = prepare_split(cfg, ds)
            if cfg.finetune is not None and cfg.finetune.strings is not None:  # a string model on the user's strings
                if user_strings is None:
                    if run is None:
                        raise FinetuneError("a fine-tuning config on strings needs the user's strings: use "
                                            "digitlab train --init RUN --strings DIR")
                    user_strings = load_user_strings(run.file(USER_STRINGS_FILE))
                spec = user_strings.spec
            elif cfg.finetune is not None:  # the init run's spec and weights; the user's digits mixed in
                if user_digits is None:
                    if run is None:
                        raise FinetuneError("a fine-tuning config (finetune:) needs the user's digits: use "
                                            "digitlab train --init RUN --images DIR")
                    user_digits = load_user_digits(run.file(USER_DIGITS_FILE))
                split = _with_user_digits(split, user_digits, cfg.finetune.user_share)
                spec = user_digits.spec
            else:
                spec = compute_preprocess_spec(split.train_images, dataset=ds.spec.name)
            split = _with_styles(split, cfg)  # after the spec: MNIST's statistics normalise every input
            model = create_model(cfg.model.name, **_model_kwargs(cfg, ds, entry.kind))
            if cfg.finetune is not None and not resume:  # a resumed run takes its weights from its checkpoint
                load_init_weights(model, cfg)
            user = {} if user_strings is None or cfg.finetune is None else {
                "user_strings": user_strings.train, "user_val": user_strings.val,
                "user_share": cfg.finetune.user_share}
            setup = _setup_torch(cfg, split, spec, model, d, device, entry.kind, **user) \
                if entry.kind != "classical" else None
            if run is None:  # only now: a config that fails above leaves no run directory behind
                tag = "finetune" if cfg.finetune is not None else cfg.recipe if cfg.recipe != cfg.model.name else ""
                run = RunDir.create(out_root, model=cfg.model.name, tag=tag) if d.is_main else None
                if run is not None:
                    held.enter_context(run.locked())
                run = RunDir(d.broadcast(str(run.path) if run is not None else None))
            if log:
                log(f"run directory: {run.path}" + (f" ({d.world_size} processes)" if d.enabled else ""))
            if not resume and d.is_main:
                run.write_text(RunDir.CONFIG, dump_config(cfg))
                if user_digits is not None and cfg.finetune is not None:
                    save_user_digits(run.file(USER_DIGITS_FILE), user_digits)
                if user_strings is not None and cfg.finetune is not None:
                    save_user_strings(run.file(USER_STRINGS_FILE), user_strings)
            if setup is None:
                return _train_classical(cfg, run, ds, split, spec, model, log, evaluate_test)
            return _train_torch(cfg, run, ds, split, spec, setup, d, device, resume=resume,
                                show_progress=show_progress and d.is_main, log=log, callbacks=callbacks,
                                evaluate_test=evaluate_test, gate=gate)
    except KeyboardInterrupt as e:  # one line (typer would turn it into a silent exit 130)
        what = "terminated (SIGTERM)" if isinstance(e, _Terminated) else "interrupted"
        if run is None or not RunDir.is_run(run.path):
            stop = TrainingInterrupted(f"{what} while loading the data and building the model, before any run "
                                       "directory was written")
        else:
            stop = TrainingInterrupted(f"{what} after {len(run.read_metrics())} finished epoch(s): continue with "
                                       f"digitlab train --resume {run.path}")
        if isinstance(e, _Terminated):
            stop.exit_code = 128 + signal.SIGTERM
        raise stop from None
    except RuntimeError as e:
        if not (d.enabled and _lost_peer(e)):
            raise
        where = f"; the last finished epoch's checkpoint in {run.path} is intact: continue with digitlab train " \
                f"--resume {run.path}" if run is not None else ""
        why = re.sub(r"^\[[^\]]*\]\s*", "", str(e).splitlines()[0]).split(". ")[0][:160]  # no source path
        raise DistributedError(f"rank {d.rank}: lost contact with the other ranks ({why}){where}") from None
    finally:
        shutdown()


def _lost_peer(e: RuntimeError) -> bool:
    """A collective that failed because another rank died or hung (gloo raises plain RuntimeErrors)."""
    return isinstance(e, torch.distributed.DistError) or any(k in str(e) for k in ("gloo", "NCCL", "c10d"))


def _finish(run: RunDir, result: TrainResult, device: torch.device) -> TrainResult:
    run.write_json(RunDir.RESULTS, {**asdict(result), "environment": _environment(device)})
    return result


def _train_classical(cfg: RunConfig, run: RunDir, ds: Dataset, split: Split, spec: PreprocessSpec, model: Any,
                     log: Callable[[str], None] | None, evaluate_test: bool) -> TrainResult:
    start = time.perf_counter()
    model.fit(split.train_images, split.train_labels)
    seconds = time.perf_counter() - start
    val_acc = float((model.predict(split.val_images) == split.val_labels).mean()) if len(split.val_labels) else 0.0
    model.save(run.file("model.skops"))
    run.write_json(RunDir.MODEL_JSON, _model_json(cfg, ds, spec, model.n_parameters_, "classical"))
    run.append_metrics({"epoch": 1, "val_acc": val_acc, "seconds": seconds,
                        "images_per_s": len(split.train_labels) / max(seconds, 1e-9)})
    if log:
        log(f"fitted {cfg.model.name} in {seconds:.1f} s: val acc {val_acc:.4f}")
    test_acc, errors, n_test = None, None, 0
    if evaluate_test:
        errors, n_test = int((model.predict(split.test_images) != split.test_labels).sum()), len(split.test_labels)
        test_acc = 1 - errors / n_test
    result = TrainResult(str(run.path), cfg.model.name, model.n_parameters_, val_acc, 1, test_acc, errors, n_test,
                         seconds, 1, "cpu")
    return _finish(run, result, torch.device("cpu"))


def _outlier_bank(cfg: RunConfig, spec: PreprocessSpec, device: torch.device) -> torch.Tensor | None:
    """The synthetic non-digits of outlier exposure, normalised, on the device (None when off)."""
    if not cfg.train.outlier_exposure:
        return None
    bank = cached_nondigits(cfg.train.outlier_bank, seed=cfg.seed)
    return spec.normalize(torch.from_numpy(bank)).to(device)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The random stream of one rank in one epoch (augmentation, dropout) of a data-parallel run:
    distinct per rank, and independent of how many epochs ran before (resumable with any world)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _validate(model: nn.Module, split: Split, spec: PreprocessSpec, d: Dist, device: torch.device,
              t: Any, amp: torch.dtype | None, val_strings: StringSet | None = None) -> tuple[float, float]:
    """Validation accuracy and loss (whole strings for a string model); each rank scores its share and the
    counts are summed."""
    if val_strings is not None:
        share = val_strings.subset(torch.arange(d.rank, len(val_strings), d.world_size))
        scores = score_strings(model, share, spec, device=device, amp=amp)
        right, loss_sum, n = d.all_sum([int(scores.right.sum()), float(scores.loss.sum()), len(share)], device)
        return (right / n, loss_sum / n) if n else (float("nan"), float("nan"))
    images, labels = split.val_images[d.rank::d.world_size], split.val_labels[d.rank::d.world_size]
    logits = predict_logits(model, images, spec, device=device, batch_size=t.eval_batch_size, amp=amp,
                            channels_last=t.channels_last)
    _, loss, errors = _accuracy_and_loss(logits, labels)
    errors, loss_sum, n = d.all_sum([errors, loss * len(labels) if len(labels) else 0.0, len(labels)], device)
    if n == 0:
        return float("nan"), float("nan")
    return 1 - errors / n, loss_sum / n


@dataclass
class _TorchSetup:
    """What a network trains with, built before the run directory exists (each part can fail on the config)."""

    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    amp: torch.dtype | None
    loader: BatchLoader
    outliers: torch.Tensor | None
    n_out: int
    opt: torch.optim.Optimizer
    sched: Any
    ema: AveragedModel | None
    n_params: int
    val_strings: StringSet | None = None  # a string model's validation strings (its loader makes fresh ones)
    user_val: StringSet | None = None  # a fine-tune's held-out user strings (also in val_strings)

    @property
    def reads_strings(self) -> bool:
        return self.val_strings is not None


def _setup_torch(cfg: RunConfig, split: Split, spec: PreprocessSpec, model: nn.Module, d: Dist,
                 device: torch.device, kind: str = "torch", user_strings: StringSet | None = None,
                 user_val: StringSet | None = None, user_share: float = 0.0) -> _TorchSetup:
    t = cfg.train
    amp = autocast_dtype(t.precision, device)
    if t.sync_batchnorm and d.enabled:
        if device.type != "cuda":
            raise ConfigError("train.sync_batchnorm needs CUDA: torch's SyncBatchNorm runs on GPUs only (on CPU "
                              "each rank normalises with its own share of the batch; drop the option)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if d.enabled else model
    val_strings = None
    loader: BatchLoader | StringBatches
    if kind == "sequence":  # strings made from the split's digits: fresh ones to train on, fixed ones to validate
        loader = string_loader(cfg, split.train_images, split.train_labels, spec, device=device, rank=d.rank,
                               world_size=d.world_size, user=user_strings, user_share=user_share)
        val_strings = eval_strings(cfg, split.val_images, split.val_labels, cfg.strings.val, seed=cfg.seed + 1)
        if user_val is not None and len(user_val):
            val_strings = val_strings.concat(user_val)
    else:
        augmenter = build_augmenter(cfg.augment)
        if augmenter is not None:
            augmenter.to(device)
        loader = BatchLoader(split.train_images, split.train_labels, spec, batch_size=t.batch_size, shuffle=True,
                             seed=cfg.seed, drop_last=False, device=device, augment=augmenter, rank=d.rank,
                             world_size=d.world_size)
    outliers = _outlier_bank(cfg, spec, device)
    n_out = max(1, round(t.batch_size * t.outlier_fraction)) if outliers is not None else 0
    opt = build_optimizer(cfg.optim, model.parameters())
    sched = build_scheduler(opt, cfg.schedule, steps_per_epoch=len(loader), n_epochs=t.epochs)
    ema = AveragedModel(model, multi_avg_fn=ema_update(t.ema_decay), use_buffers=True) if t.ema_decay else None
    return _TorchSetup(model, net, amp, loader, outliers, n_out, opt, sched, ema, count_parameters(model),
                       val_strings, user_val if user_val is not None and len(user_val) else None)


def _train_torch(cfg: RunConfig, run: RunDir, ds: Dataset, split: Split, spec: PreprocessSpec, setup: _TorchSetup,
                 d: Dist, device: torch.device, *, resume: bool, show_progress: bool,
                 log: Callable[[str], None] | None, callbacks: Sequence[EpochCallback],
                 evaluate_test: bool, gate: _SigtermGate | None = None) -> TrainResult:
    t = cfg.train
    finishing = gate.holding if gate is not None else contextlib.nullcontext
    model, net, amp, loader, outliers, n_out = setup.model, setup.net, setup.amp, setup.loader, setup.outliers, \
        setup.n_out
    opt, sched, ema, n_params = setup.opt, setup.sched, setup.ema, setup.n_params
    start_epoch, best_acc, best_epoch, stale, elapsed = 0, -1.0, 0, 0, 0.0
    best_state: dict[str, torch.Tensor] | None = None
    if resume:
        state = _load_checkpoint(run)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"])
        start_epoch, best_acc, best_epoch = state["epoch"], state["best_acc"], state["best_epoch"]
        stale, elapsed, best_state = state["stale"], state["elapsed"], state["best_state"]
        if d.is_main:
            run.truncate_metrics(start_epoch)

    writer = _tensorboard(run) if d.is_main else None
    eval_model = ema.module if ema is not None else model
    epochs_run = start_epoch
    for epoch in range(start_epoch, t.epochs):
        if t.early_stopping_patience is not None and stale >= t.early_stopping_patience:
            break
        loader.set_epoch(epoch)
        if d.enabled:
            torch.manual_seed(_epoch_seed(cfg.seed, epoch, d.rank))
        model.train()
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch", leave=False,
                   disable=not show_progress, dynamic_ncols=True)
        for i, (x, y) in enumerate(loader):
            if t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if outliers is not None:  # outlier exposure: non-digits in the batch, trained towards uniform
                pick = torch.randint(len(outliers), (n_out,), device=device)
                x = torch.cat([x, outliers[pick].to(memory_format=torch.channels_last) if t.channels_last
                               else outliers[pick]])
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = net(x)  # a string model: (B, T, C) log-probabilities over its frames
                # The sum over this rank's share, scaled so that DDP's average over ranks is the mean
                # over the global batch (exactly a single process's loss, even for an uneven split).
                ce_sum = ctc_loss_sum(logits, y) if setup.reads_strings else F.cross_entropy(
                    logits[:len(y)].float(), y, label_smoothing=t.label_smoothing, reduction="sum")
                loss = ce_sum * (d.world_size / loader.global_batch_size(i))
                if outliers is not None:
                    loss = loss - t.outlier_exposure * F.log_softmax(logits[len(y):].float(), dim=1).mean()
                    logits = logits[:len(y)]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += ce_sum.detach()
            correct += exact_matches(logits, y) if setup.reads_strings else (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            bar.update(1)
            if show_progress and (i % PROGRESS_EVERY == 0 or i == len(loader) - 1):
                rate = seen / max(time.perf_counter() - epoch_start, 1e-9)
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{int(correct) / seen:.4f}",
                                img_s=f"{rate:,.0f}")
        bar.close()
        loss_total, correct_total, seen = d.all_sum([float(loss_sum), int(correct), seen], device)
        train_seconds = time.perf_counter() - epoch_start
        elapsed += train_seconds
        val_acc, val_loss = _validate(eval_model, split, spec, d, device, t, amp, setup.val_strings)
        epochs_run = epoch + 1
        # A fine-tune keeps its last epoch: MNIST's validation digits outweigh the user's few and would choose the
        # least adapted one (docs/decisions.md#fine-tuning).
        if math.isnan(val_acc) or val_acc > best_acc or cfg.finetune is not None:
            best_acc, best_epoch, stale = val_acc, epoch + 1, 0
            best_state = {k: v.detach().cpu().clone() for k, v in eval_model.state_dict().items()}
        else:
            stale += 1
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_total / max(seen, 1),
            "train_acc": correct_total / max(seen, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": opt.param_groups[0]["lr"],
            "seconds": train_seconds,
            "images_per_s": seen / max(train_seconds, 1e-9),
            "elapsed_seconds": elapsed,
        }
        if not d.is_main:  # the other ranks write nothing
            continue
        if writer is not None:
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
                writer.add_scalar(key, row[key], epoch + 1)
            writer.flush()
        with finishing():  # a SIGTERM now stops training once this epoch's checkpoint is written
            _save_epoch(run, row, {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "best_state": best_state,
                "stale": stale,
                "elapsed": elapsed,
            })
        if log:
            log(f"epoch {epoch + 1}/{t.epochs}: loss {row['train_loss']:.4f} train acc {row['train_acc']:.4f} "
                f"val acc {val_acc:.4f} ({row['images_per_s']:,.0f} images/s, {train_seconds:.1f} s)")
        for callback in callbacks:
            callback(EpochEnd(epoch + 1, row, eval_model, spec, device))
    if writer is not None:
        writer.close()

    if not d.is_main:
        return TrainResult(str(run.path), cfg.model.name, n_params, best_acc, best_epoch, None, None, 0, elapsed,
                           epochs_run, str(device), d.world_size)
    if best_state is not None:
        eval_model.load_state_dict(best_state)
    with atomic_path(run.file(RunDir.WEIGHTS)) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in eval_model.state_dict().items()}, str(tmp))
    kind = "sequence" if setup.reads_strings else "torch"
    run.write_json(RunDir.MODEL_JSON, _model_json(cfg, ds, spec, n_params, kind))
    test_acc, errors, n_test = None, None, 0
    if setup.reads_strings:
        assert setup.val_strings is not None
        # A fine-tune's policy is fitted on the user's held-out strings when there are enough: the synthetic ones
        # are read far more surely than the user's, and a threshold fitted on them rejects nearly all of the user's.
        policy_strings = setup.user_val if setup.user_val is not None and len(setup.user_val) >= MIN_POLICY_STRINGS \
            else setup.val_strings
        val_scores = score_strings(eval_model, policy_strings, spec, device=device, amp=amp)
        run.write_json(READING_FILE, {"min_confidence": fit_min_confidence(val_scores),
                                      "kept_accuracy": KEPT_ACCURACY, "n_val": len(val_scores.right)})
        if evaluate_test and cfg.strings.test:
            test_strings = eval_strings(cfg, split.test_images, split.test_labels, cfg.strings.test, seed=cfg.seed + 2)
            right = score_strings(eval_model, test_strings, spec, device=device, amp=amp).right
            test_acc, errors, n_test = float(right.mean()), int((~right).sum()), len(right)
    elif evaluate_test:
        test_logits = predict_logits(eval_model, split.test_images, spec, device=device,
                                     batch_size=t.eval_batch_size, amp=amp, channels_last=t.channels_last)
        test_acc, _, errors = _accuracy_and_loss(test_logits, split.test_labels)
        n_test = len(split.test_labels)
    result = TrainResult(str(run.path), cfg.model.name, n_params, best_acc, best_epoch, test_acc, errors, n_test,
                         elapsed, epochs_run, str(device), d.world_size)
    return _finish(run, result, device)


def _tensorboard(run: RunDir) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when training
    except ImportError:  # tensorboard is a dependency; a broken install should not stop training
        return None
    return SummaryWriter(log_dir=str(run.file(RunDir.TENSORBOARD)))


def resume_run(path: str | os.PathLike[str], **kwargs: Any) -> TrainResult:
    """Continue the run at ``path`` from its last checkpoint, with its own config.

    Raises:
        RunDirError: not a run directory, or no checkpoint.
    """
    run = RunDir.open(path)
    cfg = resolve_config(load_yaml(run.file(RunDir.CONFIG)))
    return train_run(cfg, run=run, resume=True, **kwargs)

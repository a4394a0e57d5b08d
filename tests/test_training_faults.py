"""Training under faults: a config that fails builds no run directory, a run is trained by one process at a
time, a full disk and SIGTERM end in one line that says what is kept and how to resume."""

import errno
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.core.rundir import RunDir, RunLockedError
from digitlab.data.errors import DataError
from digitlab.training import config_from_recipe, resume_run, train_run, trainer
from digitlab.training.trainer import CheckpointWriteError, EpochEnd, TrainingInterrupted

TINY = ["data.train_subset=400", "data.n_val=200", "train.batch_size=50", "train.eval_batch_size=500"]
DIGITLAB = Path(sys.executable).parent / "digitlab"
runner = CliRunner()


def needs_mnist(test):
    return pytest.mark.mnist(pytest.mark.usefixtures("mnist_dataset")(test))


@needs_mnist
def test_a_config_that_fails_after_loading_the_data_leaves_no_run_directory(tmp_path: Path) -> None:
    cfg = config_from_recipe("fast", [*TINY, "train.epochs=1"])
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": 0})})  # past any validation
    with pytest.raises(DataError, match="batch size must be at least 1"):
        train_run(cfg, out_root=tmp_path, show_progress=False)
    assert not any(tmp_path.iterdir())


def test_ctrl_c_while_loading_the_data_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "load_dataset", interrupted)
    result = runner.invoke(app, ["train", "--recipe", "fast", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 130
    assert result.stderr == ("digitlab: error: interrupted while loading the data and building the model, before "
                             "any run directory was written\n")
    assert not any(tmp_path.iterdir())


HOLD = """
import sys, time
from digitlab.core.rundir import RunDir
with RunDir(sys.argv[1]).locked():
    print("held", flush=True)
    time.sleep(120)
"""


@needs_mnist
def test_a_second_resume_of_a_run_in_training_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config_from_recipe("fast", [*TINY, "train.epochs=2"])

    def stop(end: EpochEnd) -> None:
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train_run(cfg, out_root=tmp_path, show_progress=False, callbacks=[stop])
    (run,) = tmp_path.iterdir()
    metrics = (run / RunDir.METRICS).read_text()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with monkeypatch.context() as m:  # refused at once, before the data is loaded
            m.setattr(trainer, "load_dataset", lambda *a, **k: pytest.fail("loaded the data of a locked run"))
            with pytest.raises(RunLockedError, match=rf"another process is training in this run \(pid {holder.pid}\)"):
                resume_run(run, show_progress=False)
            result = runner.invoke(app, ["train", "--resume", str(run), "--quiet", "--no-calibrate"])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and f"pid {holder.pid}" in result.stderr
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (run / RunDir.METRICS).read_text() == metrics  # nothing interleaved
    assert resume_run(run, show_progress=False).epochs_run == 2  # once the holder is gone


@needs_mnist
def test_a_full_disk_at_the_checkpoint_is_one_line_and_keeps_the_last(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config_from_recipe("fast", [*TINY, "train.epochs=3"])
    real = trainer.atomic_path
    disk_full = threading.Event()

    def atomic_path(target, **kwargs):
        if disk_full.is_set() and Path(target).name == trainer.CHECKPOINT_FILE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return real(target, **kwargs)

    monkeypatch.setattr(trainer, "atomic_path", atomic_path)
    sigterm = signal.getsignal(signal.SIGTERM)
    with pytest.raises(CheckpointWriteError) as e:
        train_run(cfg, out_root=tmp_path, show_progress=False, callbacks=[lambda end: disk_full.set()])
    (run,) = tmp_path.iterdir()
    assert str(e.value) == (f"no space left on {run / 'checkpoint'}: epoch 2's checkpoint was not written; the last "
                            f"checkpoint (epoch 1) is intact; free space and continue with digitlab train --resume "
                            f"{run}")
    assert torch.load(run / "checkpoint" / trainer.CHECKPOINT_FILE, weights_only=True)["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) == sigterm  # the handler is only installed while training runs
    assert not list((run / "checkpoint").glob(".*"))  # no temp file left


@needs_mnist
def test_sigterm_during_training_keeps_the_checkpoint_and_says_how_to_resume(tmp_path: Path) -> None:
    cmd = [str(DIGITLAB), "train", "--recipe", "fast", "--set", "data.train_subset=500", "--set", "train.epochs=50",
           "--quiet", "--no-calibrate", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not lines.get(timeout=max(1.0, deadline - time.monotonic())).startswith("epoch 1/50"):
            pass
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    reader.join(timeout=30)  # the last lines, up to the end of the pipe
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    (run,) = tmp_path.iterdir()
    assert rest[-1].startswith("digitlab: error: terminated (SIGTERM) after ")
    assert rest[-1].endswith(f"finished epoch(s): continue with digitlab train --resume {run}\n")
    state = torch.load(run / "checkpoint" / trainer.CHECKPOINT_FILE, weights_only=True)
    assert 1 <= state["epoch"] < 50
    assert not (run / RunDir.HOLDER).exists()  # the lock was released on the way out


@needs_mnist
def test_sigterm_while_the_checkpoint_is_written_finishes_it_first(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config_from_recipe("fast", [*TINY, "train.epochs=3"])
    real = trainer._save_checkpoint

    def save_checkpoint(run: RunDir, state: dict) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: in the middle of the write
        real(run, state)

    monkeypatch.setattr(trainer, "_save_checkpoint", save_checkpoint)
    with pytest.raises(TrainingInterrupted, match=r"^terminated \(SIGTERM\) after 1 finished epoch\(s\)") as e:
        train_run(cfg, out_root=tmp_path, show_progress=False)
    assert e.value.exit_code == 128 + signal.SIGTERM
    (run,) = tmp_path.iterdir()
    assert torch.load(run / "checkpoint" / trainer.CHECKPOINT_FILE, weights_only=True)["epoch"] == 1

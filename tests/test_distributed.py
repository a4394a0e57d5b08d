"""Data-parallel training: shards, a 2-rank gloo run under torchrun against one process, rank 0 alone
writing, a killed rank ending the job in bounded time, and its checkpoint resumed with another world
size."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import assert_one_line_error
from digitlab.cli import app
from digitlab.data.batching import BatchLoader
from digitlab.data.errors import DataError
from digitlab.data.preprocess import PreprocessSpec
from digitlab.training import config_from_recipe, train_run
from digitlab.training.distributed import DistributedError

pytestmark = pytest.mark.mnist
runner = CliRunner()

# A model without batch norm or dropout, so one process and two ranks compute the same thing. 1,005
# training images in global batches of 100: the last batch (5) splits unevenly, 3 and 2.
TINY = {
    "model": {"name": "mlp", "args": {"hidden_sizes": [32], "dropout": 0.0}},
    "data": {"train_subset": 1005, "n_val": 500},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "train": {"epochs": 2, "batch_size": 100, "label_smoothing": 0.1, "grad_clip": 1.0, "ema_decay": 0.9},
}


def _recipe(tmp_path: Path, **train: object) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg["train"].update(train)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict[str, str]:
    # One thread a rank, as torchrun would set; the data from the test's environment.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _files(root: Path) -> list[str]:
    """Files under the single run directory in ``root``, relative to it (TensorBoard's by folder only)."""
    (run,) = root.iterdir()
    names = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    return sorted("tensorboard/" if n.startswith("tensorboard/") else n for n in names)


def test_rank_shards_of_each_batch_are_the_single_process_batch() -> None:
    images = np.arange(1005 * 4, dtype=np.uint8).reshape(1005, 2, 2)
    labels = np.arange(1005) % 10
    spec = PreprocessSpec(mean=0.0, std=1.0)
    one = BatchLoader(images, labels, spec, batch_size=100, seed=3)
    ranks = [BatchLoader(images, labels, spec, batch_size=100, seed=3, rank=r, world_size=3) for r in range(3)]
    assert len(one) == 11 and all(len(r) == 11 for r in ranks)  # the final 5 images are shared 2/2/1
    for epoch in (0, 4):
        for loader in (one, *ranks):
            loader.set_epoch(epoch)
        for i, (batch, *shards) in enumerate(zip(one, *ranks, strict=True)):
            together = torch.cat([y for _, y in shards])
            assert torch.equal(together, batch[1]), (epoch, i)
            assert sum(len(y) for _, y in shards) == one.global_batch_size(i)
    # A final batch smaller than the world is dropped: every rank must take every step.
    four = [BatchLoader(images[:1002], labels[:1002], spec, batch_size=100, rank=r, world_size=4) for r in range(4)]
    assert all(len(r) == 10 and len(list(r)) == 10 for r in four)
    with pytest.raises(DataError, match="rank 2 is outside"):
        BatchLoader(images, labels, spec, rank=2, world_size=2)
    with pytest.raises(DataError, match="smaller than the 4 ranks"):
        BatchLoader(images, labels, spec, batch_size=3, world_size=4)


def test_two_gloo_ranks_under_torchrun_match_one_process(tmp_path: Path) -> None:
    """Two "machines" (two torchrun agents, one rank each, meeting at a c10d rendezvous endpoint) against
    one process with the same global batch."""
    recipe = _recipe(tmp_path)
    single = train_run(config_from_recipe(str(recipe)), out_root=tmp_path / "one", show_progress=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test", "--max-restarts=0",
           "-m", "digitlab", "train", "--recipe", str(recipe), "--out", str(tmp_path / "two"), "--quiet"]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for _ in range(2)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stderr[-3000:]
    assert sum(out.count("run directory:") for out, _ in outputs) == 1  # rank 1 printed nothing

    (run,) = (tmp_path / "two").iterdir()
    a, b = load_file(Path(single.run_dir) / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:  # the same global batches and the same mean gradient: only float summation order differs
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)
    rows_one = [json.loads(line) for line in (Path(single.run_dir) / "metrics.jsonl").read_text().splitlines()]
    rows_two = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r1, r2 in zip(rows_one, rows_two, strict=True):
        assert r2["val_acc"] == r1["val_acc"] and r2["train_acc"] == r1["train_acc"]
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == 2 and results["test_acc"] == single.test_acc
    # Rank 0 alone wrote: one run directory holding exactly what a single process writes, and the rejection
    # that `digitlab train` fits at its end (train_run alone does not).
    assert _files(tmp_path / "two") == sorted([*_files(tmp_path / "one"), "rejection.safetensors"])


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the ranks through /proc")
def test_killed_rank_ends_the_job_and_its_checkpoint_resumes_with_one_process(tmp_path: Path) -> None:
    epochs = 40
    recipe = _recipe(tmp_path, epochs=epochs)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "digitlab", "train", "--recipe", str(recipe), "--out", str(out), "--quiet",
           "--nproc", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 180
        metrics = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(out.glob("*/metrics.jsonl"))
            if found and found[0].read_text().count("\n") >= 2:
                metrics = found[0]
                break
            time.sleep(0.02)
        assert metrics is not None, "training never finished an epoch"
        ranks = _children(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(max(ranks), signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = proc.communicate(timeout=90)
        ended_in = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert ended_in < 60
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("digitlab: error: distributed training failed: rank ")
    assert "SIGKILL" in last and "--resume" in last
    assert "Traceback" not in stderr

    run = metrics.parent
    finished = len(metrics.read_text().splitlines())
    assert 2 <= finished < epochs
    state = torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    assert state["epoch"] >= 2
    # Written by two ranks, resumed by one.
    result = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert json.loads((run / "results.json").read_text())["epochs_run"] == epochs


def test_distributed_refusals_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_one_line_error(runner.invoke(app, ["train", "--nproc", "0"]), "--nproc")
    # A bad config is refused before any rank starts.
    result = runner.invoke(app, ["train", "--nproc", "2", "--set", "model.args.nope=1", "--out", str(tmp_path)])
    assert_one_line_error(result, "nope")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedError, match="classical model: it trains in one process"):
        train_run(config_from_recipe("svm"), out_root=tmp_path, show_progress=False)


def test_sync_batchnorm_is_refused_on_cpu_in_one_line() -> None:
    from digitlab.core.config import ConfigError
    from digitlab.training.distributed import Dist
    from digitlab.training.trainer import _setup_torch

    cfg = config_from_recipe("default", ["train.sync_batchnorm=true"])
    with pytest.raises(ConfigError, match="sync_batchnorm needs CUDA"):  # before any collective or run directory
        _setup_torch(cfg, None, None, torch.nn.BatchNorm2d(4), Dist(0, 2, 0), torch.device("cpu"))


def test_a_string_model_trains_data_parallel(tmp_path: Path) -> None:
    # The CTC branch of the loop under two gloo ranks: each rank its share of every batch of strings, the
    # validation strings scored by share and summed; the run directory as one process writes it.
    sets = ["model.args.channels=[8,16,16,16]", "model.args.hidden_size=16", "model.args.num_layers=1",
            "strings.per_epoch=64", "strings.val=33", "strings.test=16", "train.batch_size=32",
            "data.train_subset=1000", "data.n_val=300", "data.synthetic_styles=0", "train.epochs=1"]
    cmd = [sys.executable, "-m", "digitlab", "train", "--recipe", "strings", "--out", str(tmp_path), "--quiet",
           "--nproc", "2", *(a for s in sets for a in ("--set", s))]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    (run,) = tmp_path.iterdir()
    assert json.loads((run / "model.json").read_text())["kind"] == "sequence"
    assert (run / "reading.json").is_file()
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == 2 and results["n_test"] == 16

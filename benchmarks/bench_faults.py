"""Faults during training (issue 15, items 3, 4, 12): kill -9, SIGTERM, a full disk, two resumes at once.

Usage (as root for the full-disk case, which mounts a small tmpfs; without root it is skipped and says so)::

    DIGITLAB_DATA_DIR=... .venv/bin/python benchmarks/bench_faults.py [--epoch 2] [--seed 0]

Every case trains the same tiny seeded recipe (``fast``, 2,000 training images, 4 epochs, no calibration):

- reference: one uninterrupted run; its final ``model.safetensors`` is what every other case must reproduce.
- kill -9: SIGKILL once the epoch-k line is printed, then ``digitlab train --resume RUN`` to the end.
- SIGTERM: SIGTERM once the epoch-k line is printed: exit code and the last stderr line (the --resume
  command), then resume to the end.
- full disk: ``--out`` on a tmpfs sized so that the first checkpoint fits and the second cannot be
  written: exit code and message, then the tmpfs is remounted bigger (the message's own --resume command
  then works) and the run resumed.
- double resume: a run stopped by SIGTERM after epoch k, then two ``--resume`` of it started at once:
  the one refused must stop at once with one line naming the holder (the other's pid); the other
  finishes.

For each: exit codes, messages, the checkpoint epoch left by the fault, whether the resumed weights are
byte-identical to the reference (and the largest absolute difference of any tensor), and whether
``metrics.jsonl`` holds each epoch once. Every subprocess has a timeout; mounts and temp folders are
removed in ``finally``. Results: benchmarks/results/faults.json.
"""

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from machine_info import machine

DIGITLAB = str(Path(sys.executable).parent / "digitlab")
EPOCHS = 4
RUN_TIMEOUT = 600  # seconds: a whole tiny run takes under a minute on 2 cores
WEIGHTS = "model.safetensors"


def train_cmd(out: Path, seed: int) -> list[str]:
    return [DIGITLAB, "train", "--recipe", "fast", "--set", "data.train_subset=2000", "--set",
            f"train.epochs={EPOCHS}", "--no-calibrate", "--quiet", "--seed", str(seed), "--out", str(out)]


def resume_cmd(run: Path) -> list[str]:
    return [DIGITLAB, "train", "--resume", str(run), "--no-calibrate", "--quiet"]


def run_to_end(cmd: list[str]) -> dict:
    """Run a command to the end (bounded): exit code, seconds, the last stderr line."""
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    lines = p.stderr.strip().splitlines()
    return {"exit_code": p.returncode, "seconds": round(time.monotonic() - t, 1),
            "last_stderr_line": lines[-1] if lines else "", "stdout": p.stdout.strip().splitlines()}


def run_until_epoch(cmd: list[str], epoch: int, sig: signal.Signals | None) -> dict:
    """Start ``cmd``, send ``sig`` once stderr prints "epoch {epoch}/" (None: let it end), wait (bounded)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    out: list[str] = []

    def read_err() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.put(line.rstrip("\n"))
        lines.put(None)

    readers = [threading.Thread(target=read_err, daemon=True),
               threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)]  # type: ignore[arg-type]
    for r in readers:
        r.start()
    err: list[str] = []
    signalled = False
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            if line is None:
                break
            err.append(line)
            if sig is not None and not signalled and line.startswith(f"epoch {epoch}/"):
                proc.send_signal(sig)
                signalled = True
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    for r in readers:
        r.join(timeout=30)
    return {"exit_code": code, "signalled": signalled, "last_stderr_line": err[-1] if err else "",
            "stdout": [s.rstrip("\n") for s in out]}


def only_run(parent: Path) -> Path:
    runs = [p for p in parent.iterdir() if p.is_dir() and p.name != "lost+found"]
    if len(runs) != 1:
        raise SystemExit(f"expected one run directory in {parent}, found {runs}")
    return runs[0]


def checkpoint_epoch(run: Path) -> int | None:
    state = run / "checkpoint" / "state.pt"
    return int(torch.load(state, weights_only=True)["epoch"]) if state.exists() else None


def metric_epochs(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def compare(run: Path, reference: Path) -> dict:
    """Byte identity of the final weights, and the largest absolute difference of any tensor."""
    weights = run / WEIGHTS
    if not weights.exists():
        return {"weights_written": False, "identical": False, "max_abs_diff": None}
    a, b = load_file(weights), load_file(reference / WEIGHTS)
    diff = 0.0 if a.keys() == b.keys() else float("inf")
    for k in a.keys() & b.keys():
        diff = max(diff, (a[k].double() - b[k].double()).abs().max().item() if a[k].shape == b[k].shape
                   else float("inf"))
    epochs = metric_epochs(run)
    return {"weights_written": True, "identical": weights.read_bytes() == (reference / WEIGHTS).read_bytes(),
            "max_abs_diff": diff, "metrics_epochs": epochs,
            "each_epoch_once": epochs == list(range(1, EPOCHS + 1))}


def case_kill9(tmp: Path, args: argparse.Namespace, reference: Path) -> dict:
    out = tmp / "kill9"
    out.mkdir()
    fault = run_until_epoch(train_cmd(out, args.seed), args.epoch, signal.SIGKILL)
    run = only_run(out)
    fault |= {"checkpoint_epoch": checkpoint_epoch(run), "stale_holder_file": (run / ".lock.pid").exists()}
    resume = run_to_end(resume_cmd(run))
    return {"fault": fault, "resume": resume, **compare(run, reference)}


def case_sigterm(tmp: Path, args: argparse.Namespace, reference: Path) -> dict:
    out = tmp / "sigterm"
    out.mkdir()
    fault = run_until_epoch(train_cmd(out, args.seed), args.epoch, signal.SIGTERM)
    run = only_run(out)
    fault |= {"checkpoint_epoch": checkpoint_epoch(run), "holder_file_left": (run / ".lock.pid").exists(),
              "message_names_resume": fault["last_stderr_line"].endswith(f"digitlab train --resume {run}")}
    resume = run_to_end(resume_cmd(run))
    return {"fault": fault, "resume": resume, **compare(run, reference)}


def case_full_disk(tmp: Path, args: argparse.Namespace, reference: Path) -> dict:
    if os.geteuid() != 0:
        return {"skipped": "not root: mounting a tmpfs needs root"}
    mnt = tmp / "disk"
    mnt.mkdir()
    # The checkpoint (~300 KiB for this model) is written beside the previous one (atomic: temp file, then
    # rename), so the first fits and the second does not.
    checkpoint_kib = (reference / "checkpoint" / "state.pt").stat().st_size // 1024
    size_kib = checkpoint_kib + 160
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mnt)],
                       capture_output=True, text=True, timeout=60)
    if p.returncode:
        return {"skipped": f"mount -t tmpfs not permitted: {p.stderr.strip()}"}
    try:
        fault = run_to_end(train_cmd(mnt, args.seed))
        run = only_run(mnt)
        fault |= {"tmpfs_kib": size_kib, "checkpoint_epoch": checkpoint_epoch(run),
                  "metrics_epochs_at_fault": metric_epochs(run),
                  "temp_files_left": sorted(p.name for p in (run / "checkpoint").glob(".*")),
                  "holder_file_left": (run / ".lock.pid").exists()}
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True, timeout=60)
        resume = run_to_end(resume_cmd(run))
        return {"fault": fault, "resume": resume, "resumed_on": "the same tmpfs, remounted at 64 MiB",
                **compare(run, reference)}
    finally:
        subprocess.run(["umount", str(mnt)], timeout=60, check=False)


def case_double_resume(tmp: Path, args: argparse.Namespace, reference: Path) -> dict:
    out = tmp / "double"
    out.mkdir()
    fault = run_until_epoch(train_cmd(out, args.seed), args.epoch, signal.SIGTERM)
    run = only_run(out)
    fault["checkpoint_epoch"] = checkpoint_epoch(run)
    procs = [subprocess.Popen(resume_cmd(run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    started = time.monotonic()
    ended: dict[int, float] = {}
    results: dict[int, tuple[str, str]] = {}

    def wait(i: int) -> None:
        results[i] = procs[i].communicate(timeout=RUN_TIMEOUT)
        ended[i] = time.monotonic() - started

    waiters = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(2)]
    try:
        for w in waiters:
            w.start()
        for w in waiters:
            w.join(timeout=RUN_TIMEOUT + 30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    rows = []
    for i, proc in enumerate(procs):
        err = results.get(i, ("", ""))[1].strip().splitlines()
        rows.append({"pid": proc.pid, "exit_code": proc.returncode, "seconds": round(ended.get(i, -1), 1),
                     "stderr_lines": len(err), "last_stderr_line": err[-1] if err else ""})
    refused = [r for r in rows if r["exit_code"] != 0]
    finished = [r for r in rows if r["exit_code"] == 0]
    verdict = {"one_refused_one_finished": len(refused) == 1 and len(finished) == 1}
    if verdict["one_refused_one_finished"]:
        verdict |= {"refused_names_holder": f"pid {finished[0]['pid']}" in refused[0]["last_stderr_line"],
                    "refused_one_line": refused[0]["stderr_lines"] == 1,
                    "refused_after_s": refused[0]["seconds"], "finished_after_s": finished[0]["seconds"]}
    return {"fault": fault, "resumes": rows, **verdict, **compare(run, reference)}


CASES = {"kill -9": case_kill9, "SIGTERM": case_sigterm, "full disk": case_full_disk,
         "double resume": case_double_resume}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epoch", type=int, default=2, help="signal once this epoch's line is printed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "faults.json"))
    args = parser.parse_args()
    if not 1 <= args.epoch < EPOCHS:
        raise SystemExit(f"--epoch must be 1 to {EPOCHS - 1}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    try:
        (tmp / "reference").mkdir()
        ref = run_to_end(train_cmd(tmp / "reference", args.seed))
        if ref["exit_code"]:
            raise SystemExit(f"the reference run failed: {ref['last_stderr_line']}")
        reference = only_run(tmp / "reference")
        cases = {}
        for name, case in CASES.items():
            t = time.monotonic()
            cases[name] = case(tmp, args, reference) | {"case_seconds": round(time.monotonic() - t, 1)}
            print(f"{name}: {json.dumps({k: v for k, v in cases[name].items() if k not in ('fault', 'resume')})}",
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "train_command": " ".join(train_cmd(Path("OUT"), args.seed)).replace(DIGITLAB, "digitlab"),
              "signal_after_epoch": args.epoch, "epochs": EPOCHS, "reference": ref, "cases": cases}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Tuning across machines: `digitlab tune` workers sharing one study on a real PostgreSQL server.

The module starts its own server from Debian's PostgreSQL binaries (``make test`` installs them):
initdb in a fresh temporary folder, pg_ctl on 127.0.0.1 and a free port, trust authentication on
that address only, and pg_ctl stop plus the folder removed afterwards. As root the server runs as
the ``postgres`` system user (initdb refuses root). Without PostgreSQL the server tests skip, and
fail under CI=true.
"""

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from conftest import assert_one_line_error
from digitlab.cli import app
from digitlab.tuning import study as study_module
from digitlab.tuning.space import load_space
from digitlab.tuning.study import TuneOptions, _study_lock

runner = CliRunner()
TINY = ["data.train_subset=300", "data.n_val=200", "train.batch_size=50", "train.eval_batch_size=500",
        "train.epochs=2", "model.args.blocks=[{filters: 8}, {filters: 8}]"]  # as in test_tuning.py
TUNE = ["tune", "--space", "seed-grid", "--sampler", "random", "--pruner", "none", "--study", "shared",
        *[x for o in TINY for x in ("--set", o)]]


def _pg_bin() -> Path:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/VERSION/bin."""
    found = shutil.which("initdb"), shutil.which("pg_ctl")
    if all(found):
        return Path(os.path.realpath(found[0])).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3])
                      if Path(p).parts[-3].isdigit() else 0)
    if versions and Path(versions[-1]).with_name("initdb").exists():
        return Path(versions[-1]).parent
    message = "PostgreSQL (initdb, pg_ctl) not found: `make test` installs Debian's postgresql package"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the ``postgres`` system user then."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        runuser = None
    if runuser is None:
        message = "running as root without a `postgres` user (or runuser) to run the PostgreSQL server"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return [runuser, "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], timeout: float) -> None:
    done = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}")


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1; yields ``postgresql+psycopg://postgres@127.0.0.1:PORT``."""
    bindir = _pg_bin()
    # Not under pytest's tmp_path: its folders are private to this user, and the server may run as another.
    root = Path(tempfile.mkdtemp(prefix="digitlab-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    started = False
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
              "--no-sync", "--no-instructions"], timeout=120)
        (data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")  # TCP on loopback only
        for _attempt in range(3):  # the free port may be taken between finding and binding it
            port = _free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            try:
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                      "start"], timeout=90)
            except RuntimeError:
                continue
            started = True
            break
        if not started:
            raise RuntimeError(f"the PostgreSQL server did not start: {log.read_text()[-2000:]}")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"], timeout=90)
        shutil.rmtree(root, ignore_errors=True)


def _create_database(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{server.replace('+psycopg', '')}/postgres", autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


@pytest.mark.mnist
def test_two_machines_share_one_postgres_study_and_resume_continues(mnist_dataset, postgres: str,
                                                                     tmp_path: Path) -> None:
    url = _create_database(postgres, "two_workers")
    # Two "machines": each worker has its own study folder, so no lock file is shared between them
    # and only the database can keep them from over- or under-running the budget.
    procs = [subprocess.Popen([sys.executable, "-m", "digitlab.cli", *TUNE, "--trials", "4", "--storage", url,
                               "--out", str(tmp_path / f"machine{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
             for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out + err
    study = optuna.load_study(study_name="shared", storage=url)
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3], "4 trials between the two workers, none lost or twice"
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.state for t in trials]
    run_dirs = {t.user_attrs["run_dir"] for t in trials}
    assert len(run_dirs) == 4 and all(Path(d).is_dir() for d in run_dirs)
    machines = {Path(d).parents[2].name for d in run_dirs}
    assert machines <= {"machine0", "machine1"}
    for i in range(2):  # each machine writes the whole study's results into its own folder
        assert (tmp_path / f"machine{i}" / "tune-shared" / "summary.json").exists()

    result = runner.invoke(app, [*TUNE, "--trials", "5", "--storage", url, "--resume", "--out",
                                 str(tmp_path / "machine0")])
    assert result.exit_code == 0, result.output
    final = optuna.load_study(study_name="shared", storage=url).get_trials(deepcopy=False)
    assert len(final) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in final)
    assert "4 of 5 trials already finished or running" in result.output and "best recipe:" in result.stdout


def test_a_study_made_for_other_options_or_a_missing_one_is_refused(postgres: str, tmp_path: Path) -> None:
    url = _create_database(postgres, "refusals")
    result = runner.invoke(app, [*TUNE, "--trials", "1", "--storage", url, "--resume", "--out", str(tmp_path)])
    assert_one_line_error(result, "no study 'shared' in postgresql+psycopg://postgres@127.0.0.1:")
    optuna.create_study(study_name="shared", storage=url).set_user_attr("recipe", "fast")
    result = runner.invoke(app, [*TUNE, "--trials", "1", "--storage", url, "--out", str(tmp_path)])
    assert_one_line_error(result, "pick another --study")


def test_an_unreachable_or_wrong_postgres_url_is_one_line(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there: refused at once
    bad = f"postgresql+psycopg://digitlab:s3cret@127.0.0.1:{port}/study"
    result = runner.invoke(app, [*TUNE, "--trials", "1", "--storage", bad, "--out", str(tmp_path)])
    assert_one_line_error(result, f"storage postgresql+psycopg://digitlab:***@127.0.0.1:{port}/study")
    assert "s3cret" not in result.output and "is the database server running" in result.output
    result = runner.invoke(app, [*TUNE, "--trials", "1", "--storage", "postgresql+psycopg//nowhere", "--out",
                                 str(tmp_path)])
    assert_one_line_error(result, "storage postgresql+psycopg//nowhere")


@pytest.mark.parametrize("bad", ["postgresql+psycopg://digitlab:s3cret@127.0.0.1:notaport/study",
                                 "postgresql+psycopg://digitlab:s3cret/study",  # no '@': the password reads as a port
                                 "postgresql+psycopg://digitlab:s3cret@[::1/study"])
def test_a_malformed_postgres_url_is_one_line_and_hides_the_password(tmp_path: Path, bad: str) -> None:
    result = runner.invoke(app, [*TUNE, "--trials", "1", "--storage", bad, "--out", str(tmp_path)])
    assert_one_line_error(result, "storage postgresql+psycopg://")
    assert "s3cret" not in result.output and "malformed URL" in result.output


def test_a_database_that_does_not_exist_is_one_line(postgres: str, tmp_path: Path) -> None:
    started = time.monotonic()
    result = runner.invoke(app, [*TUNE, "--trials", "1", "--storage", f"{postgres}/no_such_db", "--out",
                                 str(tmp_path)])
    assert_one_line_error(result, "no_such_db")
    assert time.monotonic() - started < 30


def test_the_ask_lock_holds_across_machines(postgres: str, tmp_path: Path) -> None:
    """Two study folders (two machines) share no lock file: the database's advisory lock is what orders them."""
    url = _create_database(postgres, "locks")
    order: list[str] = []

    def second() -> None:
        with _study_lock(url, tmp_path / "machine1", "shared", "ask"):
            order.append("second")

    with _study_lock(url, tmp_path / "machine0", "shared", "ask") as release:
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive() and order == [], "the second machine took the lock while the first held it"
        order.append("first")
        release()  # as a worker does once its trial is RUNNING
        thread.join(10)
        assert order == ["first", "second"]
    # Another study's lock is another lock: holding both at once does not wait.
    with _study_lock(url, tmp_path / "machine0", "other-study", "ask"), \
            _study_lock(url, tmp_path / "machine1", "shared", "ask"):
        pass
    assert not list(tmp_path.rglob("*.lock")), "no lock files for PostgreSQL"


def test_many_workers_on_many_folders_run_the_budget_exactly(postgres: str, tmp_path: Path, monkeypatch) -> None:
    """Six workers (threads, each with its own connection pool and study folder) race for 30 short trials."""
    url = _create_database(postgres, "race")

    def quick(trial: optuna.Trial, space, *_args) -> float:
        space.suggest(trial)
        time.sleep(0.01)
        return trial.number / 100

    count = study_module._count

    def slow_count(study: optuna.Study) -> int:  # widens the gap between counting and taking a trial
        n = count(study)
        time.sleep(0.03)
        return n

    monkeypatch.setattr(study_module, "_objective", quick)
    monkeypatch.setattr(study_module, "_count", slow_count)
    space = load_space("seed-grid")
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            opts = TuneOptions(space="seed-grid", trials=30, storage=url, study="race", sampler="random",
                               pruner="none", out_root=str(tmp_path / f"machine{i}"), worker=True)
            study = optuna.load_study(study_name="race", storage=study_module._storage(url))
            study_module._work(study, space, "cnn-32-64", opts, tmp_path / f"machine{i}", url, {"stop": False},
                               lambda _msg: None)
        except BaseException as e:
            errors.append(e)

    optuna.create_study(study_name="race", storage=url, direction="maximize")
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    trials = optuna.load_study(study_name="race", storage=url).get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(30))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)

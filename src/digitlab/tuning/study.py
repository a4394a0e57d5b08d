"""``digitlab tune``: an Optuna study over a recipe and a search space, with pruning and workers.

Usage::

    summary = tune(TuneOptions(recipe="cnn-32-64", space="seed-grid", trials=27, sampler="grid",
                               overrides=["train.epochs=2"]))
    summary["best"]["value"], summary["dir"]          # runs/tune-cnn-32-64-seed-grid/

Each trial trains with the training engine into a child run directory (``DIR/trials/``), reports
validation accuracy after every epoch (the pruner may stop it there), and never reads the test
split. The study lives in a SQLite file in the study directory unless ``storage`` names another
database (any SQLAlchemy URL: ``postgresql+psycopg://`` for workers on several machines). Workers
on one storage share one study: each counts the trials that are finished or running and starts one
only while there are fewer than ``trials``, holding a lock from the count until its trial exists
(RUNNING), so N trials are run once each. The lock is a file in the study folder for SQLite (one
machine) and a PostgreSQL advisory lock named after the study for PostgreSQL (any number of
machines); other databases get the file lock only, which holds on one machine. Ctrl-C lets the
running trial finish and stops; the study resumes with ``resume=True``.
"""

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from digitlab.core.config import dump_config
from digitlab.core.fileio import atomic_path, atomic_write_text
from digitlab.core.rundir import RunDir
from digitlab.training import config_from_recipe, train_run
from digitlab.training.trainer import EpochEnd
from digitlab.tuning.html import write_summary_html
from digitlab.tuning.space import SearchSpace, TuningError, load_space, override

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "none")
STUDY_DB = "study.db"
TRIALS_CSV = "trials.csv"
BEST_RECIPE = "best-recipe.yaml"
SUMMARY_JSON = "summary.json"
_COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


@dataclass
class TuneOptions:
    recipe: str | None = None  # default: the recipe the space names
    space: str = "seed-grid"
    trials: int = 20
    timeout: float | None = None
    storage: str | None = None
    study: str | None = None
    n_jobs: int = 1
    sampler: str = "tpe"
    pruner: str = "median"
    resume: bool = False
    overrides: list[str] = field(default_factory=list)
    out_root: str = "runs"
    seed: int = 0
    worker: bool = False  # a helper process started by --n-jobs: runs trials, writes no results


def _sampler(name: str, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise TuningError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


def _pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_epochs, 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise TuningError(f"unknown pruner {name!r}; choose from {', '.join(PRUNERS)}")


Release = Callable[[], None]
"""Lets the lock go before the end of its ``with`` block (once the trial exists); calling it twice is harmless."""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[Release]:
    """An exclusive lock between processes on this machine, held for the ``with`` block or until released."""
    path.touch(exist_ok=True)
    with open(path) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield lambda: fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(engine: sqlalchemy.Engine, name: str, url: str) -> Iterator[Release]:
    """A PostgreSQL session-level advisory lock named ``name``: exclusive between processes on any machine.

    It lives on its own connection, so the database lets it go as soon as that connection closes: a
    worker killed while holding it blocks nobody, and TCP keepalives on the server's side notice a
    machine that vanished within about a minute.
    """
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)  # a bigint, stable
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise _storage_error(url, e) from None
    try:
        for setting, value in (("tcp_keepalives_idle", 30), ("tcp_keepalives_interval", 10),
                               ("tcp_keepalives_count", 3)):
            conn.execute(sqlalchemy.text(f"SET {setting} = {value}"))
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
    except BaseException:
        conn.close()
        raise

    def release() -> None:
        if conn.closed:
            return
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        finally:
            conn.close()  # closing alone would also release it

    try:
        yield release
    finally:
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
            release()


_URL_ERRORS = (sqlalchemy.exc.ArgumentError, ValueError)  # make_url: unparseable; a port that is not a number


def _shown(url: str) -> str:
    """The URL without its password, for messages. A URL that does not parse is shown up to its ``://``
    only: where the password ends is then unknown (``user:secret/db`` reads as host ``user``, port ``secret``)."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except _URL_ERRORS:
        scheme, sep, _ = url.partition("://")
        return f"{scheme}://***" if sep else url


def _storage_error(url: str, error: BaseException) -> TuningError:
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, ValueError) and not isinstance(error, sqlalchemy.exc.SQLAlchemyError):
        # make_url's ValueError quotes the port it could not read, which may be a password
        line = ("a malformed URL: the port is not a number, or the user or password holds an '@', ':' or '/' "
                "(percent-encode it); expected dialect+driver://user:password@host:port/database")
    elif isinstance(error, ModuleNotFoundError):
        line += " (install the database driver; for PostgreSQL use a postgresql+psycopg:// URL)"
    elif isinstance(error, sqlalchemy.exc.OperationalError):
        line += " (is the database server running, and are the URL's host, port, user and database right?)"
    return TuningError(f"storage {_shown(url)}: {line}")


def _backend(url: str) -> str:
    """``sqlite``, ``postgresql``, ``mysql``, ... for a SQLAlchemy URL; a bad URL is a one-line error."""
    try:
        return sqlalchemy.engine.make_url(url).get_backend_name()
    except _URL_ERRORS as e:
        raise _storage_error(url, e) from None


def _storage(url: str, attempts: int = 3) -> optuna.storages.RDBStorage:
    """Open (creating its tables if new) the study database.

    Workers starting together on a new database race to create its schema; the loser's insert
    fails on a unique constraint although the schema is then complete, so a failed attempt is
    retried before it is reported (the callers also hold the setup lock around this).
    """
    kwargs: dict[str, Any] = {"heartbeat_interval": 30, "grace_period": 120}  # a killed worker's trial fails
    backend = _backend(url)
    if backend == "sqlite":
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # workers wait for the file lock
    elif backend == "postgresql":
        kwargs["engine_kwargs"] = {"pool_pre_ping": True, **_pg_engine_kwargs(url)}
    error: BaseException | None = None
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
                return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as e:  # SQLAlchemy raises many kinds (bad URL, driver missing, cannot connect)
            error = e
            if not isinstance(e, sqlalchemy.exc.IntegrityError) or attempt == attempts - 1:
                break
            time.sleep(0.5 * (attempt + 1))
    raise _storage_error(url, error) from None


def _pg_engine_kwargs(url: str) -> dict[str, Any]:
    """Give up on an unreachable server after 10 s (libpq waits for ever) unless the URL says otherwise."""
    try:
        query = sqlalchemy.engine.make_url(url).query
    except _URL_ERRORS:
        return {}
    return {} if "connect_timeout" in query else {"connect_args": {"connect_timeout": 10}}


@contextlib.contextmanager
def _study_lock(url: str, folder: Path, name: str, what: str) -> Iterator[Release]:
    """The lock that makes one step (``setup`` or ``ask``) exclusive between the study's workers.

    PostgreSQL: an advisory lock named after the study, which holds across machines. Other
    databases: a lock file in the study folder, which holds between the processes of one machine.
    """
    if _backend(url) != "postgresql":
        with _file_lock(folder / f".{what}.lock") as release:
            yield release
        return
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **_pg_engine_kwargs(url))
    except Exception as e:  # bad URL, driver missing
        raise _storage_error(url, e) from None
    try:
        with _advisory_lock(engine, f"digitlab tune {what} {name}", url) as release:
            yield release
    finally:
        engine.dispose()


@contextlib.contextmanager
def _stop_after_trial(flag: dict[str, bool], log: Callable[[str], None]) -> Iterator[None]:
    """First Ctrl-C: finish the running trial, then stop. Second: stop now."""
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag["stop"] = True
        log("Ctrl-C: stopping after the running trial (again to stop now); the study resumes with --resume")

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no signal handling
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _validate(recipe: str, space: SearchSpace, overrides: list[str]) -> int:
    """Check every key (the recipe, the overrides and the space's first values) before any trial; return epochs."""
    first = [override(k, v[0]) for k, v in _first_values(space).items()]
    cfg = config_from_recipe(recipe, [*overrides, *first])
    return cfg.train.epochs


def _first_values(space: SearchSpace) -> dict[str, list[Any]]:
    out = {}
    for key, dist in space.params.items():
        low = getattr(dist, "low", None)
        out[key] = [low] if low is not None else dist.values()[:1]
    return out


def study_dir(opts: TuneOptions, recipe: str, space: SearchSpace) -> tuple[str, Path]:
    name = opts.study or f"{recipe}-{space.name}"
    return name, Path(opts.out_root) / f"tune-{name}"


def tune(opts: TuneOptions, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or continue, or join) a study; write its results; return the summary.

    Raises:
        TuningError, ConfigError: bad options, space or keys, in one line, before any trial runs.
    """
    say = log or (lambda _msg: None)
    space = load_space(opts.space)
    recipe = opts.recipe or space.recipe
    if recipe is None:
        raise TuningError(f"space {space.name} names no recipe: give --recipe")
    if opts.trials < 1 or opts.n_jobs < 1:
        raise TuningError("--trials and --n-jobs must be at least 1")
    max_epochs = _validate(recipe, space, opts.overrides)
    if opts.sampler == "grid" and opts.trials > space.grid_size():
        raise TuningError(f"--trials {opts.trials} is more than the {space.grid_size()} points of the grid")
    name, folder = study_dir(opts, recipe, space)
    folder.mkdir(parents=True, exist_ok=True)
    url = opts.storage or f"sqlite:///{(folder / STUDY_DB).resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    made_for = {"recipe": recipe, "space": space.name, "overrides": list(opts.overrides)}
    with _study_lock(url, folder, name, "setup"):  # workers starting together create the database once
        storage = _storage(url)
        exists = name in optuna.study.get_all_study_names(storage)
        if opts.resume and not exists:
            raise TuningError(f"no study {name!r} in {_shown(url)} to resume")
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                    sampler=_sampler(opts.sampler, space, opts.seed),
                                    pruner=_pruner(opts.pruner, max_epochs))
        if not study.user_attrs:
            for k, v in made_for.items():
                study.set_user_attr(k, v)
    if {k: study.user_attrs.get(k) for k in made_for} != made_for:
        raise TuningError(f"study {name!r} was made for {json.dumps({k: study.user_attrs.get(k) for k in made_for})}"
                          f", not {json.dumps(made_for)}: pick another --study")
    done = _count(study)
    if exists and not opts.worker:
        say(f"study {name}: {done} of {opts.trials} trials already finished or running")

    helpers = [_spawn_worker(opts, name, url) for _ in range(opts.n_jobs - 1)] if not opts.worker else []
    stop = {"stop": False}
    with _stop_after_trial(stop, say):
        _work(study, space, recipe, opts, folder, url, stop, say)
    for proc in helpers:
        if proc.wait() != 0:
            say(f"a worker exited with code {proc.returncode}")
    if opts.worker:
        return {}
    summary = write_results(study, folder, recipe, space, opts)
    summary["interrupted"] = stop["stop"]
    return summary


def _spawn_worker(opts: TuneOptions, name: str, url: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "digitlab.cli", "tune", "--space", opts.space, "--trials", str(opts.trials),
           "--study", name, "--storage", url, "--sampler", opts.sampler, "--pruner", opts.pruner,
           "--out", opts.out_root, "--seed", str(opts.seed), "--worker"]
    if opts.recipe:
        cmd += ["--recipe", opts.recipe]
    if opts.timeout:
        cmd += ["--timeout", str(opts.timeout)]
    for o in opts.overrides:
        cmd += ["--set", o]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)


def _count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=_COUNTED))


def _work(study: optuna.Study, space: SearchSpace, recipe: str, opts: TuneOptions, folder: Path, url: str,
          stop: dict[str, bool], say: Callable[[str], None]) -> None:
    """Take trials until the study has ``opts.trials`` finished or running, the timeout, or Ctrl-C."""
    trials_dir = folder / "trials"
    start = time.monotonic()
    failures = 0
    while not stop["stop"]:
        if opts.timeout is not None and time.monotonic() - start > opts.timeout:
            say(f"timeout of {opts.timeout:g} s reached")
            break
        with _study_lock(url, folder, study.study_name, "ask") as release:  # count and take a trial: one step
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial is no longer counted as running
            if _count(study) >= opts.trials:
                break

            def objective(trial: optuna.Trial, release: Release = release) -> float:
                release()  # the trial exists (RUNNING) and is counted: other workers may go on
                return _objective(trial, space, recipe, opts.overrides, trials_dir, say)

            study.optimize(objective, n_trials=1, catch=(FloatingPointError,))
        last = study.get_trials(deepcopy=False)[-1] if study.trials else None
        failures = failures + 1 if last is not None and last.state == optuna.trial.TrialState.FAIL else 0
        if failures >= 3:
            raise TuningError("three trials in a row failed; see the trial run directories")


def _objective(trial: optuna.Trial, space: SearchSpace, recipe: str, overrides: list[str], trials_dir: Path,
               say: Callable[[str], None]) -> float:
    params = space.suggest(trial)
    cfg = config_from_recipe(recipe, [*overrides, *params])
    run = RunDir.create(trials_dir, model=cfg.model.name, tag=f"trial{trial.number:03d}")
    trial.set_user_attr("run_dir", str(run.path))
    trial.set_user_attr("overrides", [*overrides, *params])

    def report(end: EpochEnd) -> None:
        value = end.metrics["val_acc"]
        trial.report(value, end.epoch)
        if trial.should_prune():
            say(f"trial {trial.number}: pruned after epoch {end.epoch} (val acc {value:.4f})")
            raise optuna.TrialPruned()

    result = train_run(cfg, run=run, show_progress=False, callbacks=[report], evaluate_test=False)
    if math.isnan(result.best_val_acc):
        raise FloatingPointError("validation accuracy is NaN")
    say(f"trial {trial.number}: val acc {result.best_val_acc:.4f} ({', '.join(params)})")
    return result.best_val_acc


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, epochs, seconds, each parameter, run directory."""
    keys = sorted({k for t in study.trials for k in t.params})
    rows = []
    for t in study.trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"number": t.number, "state": t.state.name.lower(), "val_acc": t.value,
                     "epochs": len(t.intermediate_values) or None, "seconds": seconds,
                     **{k: t.params.get(k) for k in keys}, "run_dir": t.user_attrs.get("run_dir")})
    return rows


def _figures(study: optuna.Study, folder: Path) -> dict[str, str]:
    import matplotlib

    # Optuna draws through pyplot. Files only, never a window: Agg, unless the caller already uses pyplot.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    callers = set(plt.get_fignums())  # the caller's open figures stay open

    def close_ours() -> None:
        for num in set(plt.get_fignums()) - callers:
            plt.close(num)

    plots = {"optimization_history": ovm.plot_optimization_history, "param_importances": ovm.plot_param_importances,
             "parallel_coordinate": ovm.plot_parallel_coordinate, "slice": ovm.plot_slice}
    out = {}
    for key, fn in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = fn(study)
            except (ValueError, RuntimeError):  # e.g. importances need two finished trials with varied params
                close_ours()
                continue
        first = axes.ravel()[0] if hasattr(axes, "ravel") else axes
        fig = first.figure
        fig.set_size_inches(max(fig.get_figwidth(), 9), max(fig.get_figheight(), 5))
        with atomic_path(folder / f"{key}.png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        close_ours()
        out[key] = f"{key}.png"
    return out


def write_results(study: optuna.Study, folder: Path, recipe: str, space: SearchSpace,
                  opts: TuneOptions) -> dict[str, Any]:
    """trials.csv, figures, best-recipe.yaml, summary.json and summary.html in the study folder."""
    rows = trial_rows(study)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(folder / TRIALS_CSV, buf.getvalue())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = {
        "study": study.study_name, "dir": str(folder), "recipe": recipe, "space": space.name,
        "sampler": opts.sampler, "pruner": opts.pruner, "overrides": opts.overrides,
        "n_trials": len(study.trials),
        "states": {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running")},
        "best": None, "trials": rows,
    }
    if complete:
        best = study.best_trial
        overrides = best.user_attrs.get("overrides", [])
        cfg = config_from_recipe(recipe, overrides).model_copy(update={
            "recipe": f"{study.study_name}-best",
            "description": f"best of tuning study {study.study_name}: trial {best.number}, validation accuracy "
                           f"{best.value:.4f} ({recipe} with {', '.join(overrides)})"})
        atomic_write_text(folder / BEST_RECIPE, dump_config(cfg))
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "overrides": overrides, "run_dir": best.user_attrs.get("run_dir"),
                           "recipe_file": str(folder / BEST_RECIPE)}
    summary["figures"] = _figures(study, folder) if complete else {}
    atomic_write_text(folder / SUMMARY_JSON, json.dumps(summary, indent=2, default=str) + "\n")
    summary["html"] = str(write_summary_html(summary, folder))
    return summary

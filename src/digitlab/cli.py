"""The ``digitlab`` command: parse, call one library function, print.

Usage: ``digitlab data check --dataset mnist``; ``digitlab --help``.

Expected failures (a ``DigitlabError`` or a bad option) print one line on stderr and exit 2,
never a traceback.
"""

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup, TyperOption

from digitlab import __version__
from digitlab.core.errors import DigitlabError
from digitlab.data.check import check_dataset
from digitlab.data.datasets import get_dataset, list_datasets
from digitlab.data.loading import load_dataset
from digitlab.data.sources import dataset_folder, fetch_dataset
from digitlab.models.registry import get_entry

EXIT_USAGE = 2
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class _Group(TyperGroup):
    """Turns expected failures into one line on stderr and exit code 2, for every subcommand."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as e:  # bad option, missing argument, bad value
            _fail(e.format_message().replace("Value error, ", ""), EXIT_USAGE)
        except DigitlabError as e:
            _fail(str(e), e.exit_code)
        except OSError as e:  # a file or folder the user named is unusable
            where = f"{e.filename}: " if e.filename else ""
            _fail(f"{where}{e.strerror or e}", EXIT_USAGE)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except typer.Abort:
            _fail("aborted", 130)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        # Typer turns Ctrl-C into a silent exit 130 before main() sees it: say it in one line here
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    def get_params(self, ctx: Any) -> list[Any]:
        _show_flags_as_flags(self, ctx)
        return super().get_params(ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _show_flags_as_flags(command, ctx)
        return command


def _show_flags_as_flags(command: Any, ctx: Any) -> None:
    """Typer 0.29's rich help prints every option's type, a flag's too (``--json <bool>``), as if it took a
    value; its plain help leaves it out for flags. An empty metavar is what the panel prints instead."""
    for param in [*command.params, command.get_help_option(ctx)]:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""


def _fail(message: str, code: int) -> None:
    typer.echo(f"digitlab: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


app = typer.Typer(
    cls=_Group,
    name="digitlab",
    help="Handwritten digit recognition: data, training, evaluation, export, serving.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(cls=_Group, help="Fetch, check and explore datasets.")
app.add_typer(data_app, name="data")


def _help_when_bare(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"digitlab {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Handwritten digit recognition: data, training, evaluation, export, serving."""
    _help_when_bare(ctx)


@data_app.callback(invoke_without_command=True)
def _data(ctx: typer.Context) -> None:
    """Fetch, check and explore datasets."""
    _help_when_bare(ctx)


DatasetOpt = Annotated[
    str, typer.Option("--dataset", "-d", help=f"Dataset name ({', '.join(list_datasets())}).")
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder holding the files (or a <dataset> subfolder), searched first.",
                 exists=True, file_okay=False),
]
# Choices as the parser's (spelt here: importing the library's lists would load torch and optuna for --help).
Polarity = Literal["auto", "dark-on-light", "light-on-dark"]  # inference.prepare.POLARITIES
Backend = Literal["auto", "torch", "onnx"]  # Predictor.from_path
Device = Literal["auto", "cpu", "cuda"]  # models.runtime.resolve_device
Split = Literal["test", "val"]
ExportFormat = Literal["onnx", "hub"]
Quantize = Literal["int8"]  # export.onnx.QUANTIZE_CHOICES
Sampler = Literal["tpe", "random", "grid", "cmaes"]  # tuning.study.SAMPLERS
Pruner = Literal["median", "hyperband", "none"]  # tuning.study.PRUNERS


@data_app.command("fetch")
def data_fetch(
    dataset: DatasetOpt = "mnist",
    data_dir: DataDirOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="Do not download; fail if missing.")] = False,
) -> None:
    """Find or download a dataset, verify every file, and say where each came from."""
    spec = get_dataset(dataset)
    found = fetch_dataset(spec, data_dir, download=not offline, show_progress=True)
    table = Table(title=f"{spec.name}: every file verified (SHA-256 of the uncompressed bytes)")
    table.add_column("file")
    table.add_column("source")
    table.add_column("path", overflow="fold")
    for role, f in found.items():
        table.add_row(spec.files[role].filename, f.source, str(f.path))
    out.print(table)


@data_app.command("path")
def data_path(
    dataset: DatasetOpt = "mnist",
    data_dir: DataDirOpt = None,
) -> None:
    """Print the folder that holds the dataset's verified files (found as `fetch` finds them; no download).

    Without --data-dir the folder is named after the dataset, so its parent serves as DIGITLAB_DATA_DIR:
    DIGITLAB_DATA_DIR="$(dirname "$(digitlab data path)")" (as `make test` does).
    """
    typer.echo(dataset_folder(get_dataset(dataset), data_dir))


def _print_check_report(report: Any) -> None:
    style = {"pass": "green", "warn": "yellow", "fail": "bold red"}
    table = Table(title=f"{report.dataset}: integrity checks")
    table.add_column("check")
    table.add_column("status")
    table.add_column("result", overflow="fold")
    for c in report.checks:
        table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.summary)
    out.print(table)

    balance = next(c for c in report.checks if c.name == "class balance").details
    spec = get_dataset(report.dataset)
    classes = Table(title="class balance")
    classes.add_column("class")
    for split in ("train", "test"):
        classes.add_column(f"{split} n", justify="right")
        classes.add_column(f"{split} %", justify="right")
    for k, name in enumerate(spec.class_names):
        row = [name]
        for split in ("train", "test"):
            row += [f"{balance[split]['counts'][k]:,}", f"{balance[split]['percent'][k]:.2f}"]
        classes.add_row(*row)
    out.print(classes)
    verdict = "[green]all checks passed[/]" if report.ok else "[bold red]some checks failed[/]"
    out.print(verdict)


@data_app.command("check")
def data_check(
    dataset: DatasetOpt = "mnist",
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Integrity checks: counts, labels, class balance, blanks, duplicates, leakage, pixel range.

    Exit code 1 when a check fails.
    """
    report = check_dataset(load_dataset(dataset, data_dir, validate=False, verify=False, show_progress=True))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_check_report(report)
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("explore")
def data_explore(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the figures and summary.json.", file_okay=False)
    ],
    dataset: DatasetOpt = "mnist",
    data_dir: DataDirOpt = None,
    seed: Annotated[int, typer.Option(help="Seed for the sampled images.")] = 0,
) -> None:
    """Exploration figures (samples, class distribution, mean images, pixel histogram, ink, PCA)."""
    from digitlab.data.explore import explore_dataset  # matplotlib and scikit-learn: load on demand

    _refuse_run_folder(out_dir)
    summary = explore_dataset(load_dataset(dataset, data_dir, show_progress=True), out_dir, seed=seed)
    out.print(f"[bold]{summary['dataset']}[/]: figures and summary.json written to {out_dir}/")
    for path in summary["figures"].values():
        out.print(f"  {path}")


def _print_named(items: list[tuple[str, str]], title: str) -> None:
    """A (name, description) listing as a table."""
    table = Table(title=title)
    table.add_column("name")
    table.add_column("description", overflow="fold")
    for name, description in items:
        table.add_row(name, description)
    out.print(table)


def _log(line: str) -> None:
    err.print(line, highlight=False)


def _print_keys(cfg: Any) -> None:
    from digitlab.training.recipes import settable_keys

    table = Table(title=f"--set keys (recipe {cfg.recipe}, model {cfg.model.name}; N: a list index)")
    for column in ("key", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for k in settable_keys(cfg):
        table.add_row(k.key, k.type, k.default, k.description)
    out.print(table, highlight=False, markup=False)


@app.command("train")
def train(
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe name (see --list-recipes) or YAML file.")]
    = "default",
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: --set train.epochs=3 (repeatable).")
    ] = None,
    out_root: Annotated[Path, typer.Option("--out", help="Parent folder of the new run directory.",
                                           file_okay=False)] = Path("runs"),
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue this run from its checkpoint.",
                                                exists=True, file_okay=False)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed (same seed, same metrics on CPU).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, only one log line per epoch.")]
    = False,
    list_all: Annotated[bool, typer.Option("--list-recipes", help="List the shipped recipes and exit.")] = False,
    list_keys: Annotated[bool, typer.Option("--list-keys", help="List every --set key with its type and default "
                                            "(model.args.* for the recipe's model) and exit.")] = False,
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="Train data-parallel in N processes on this "
                                              "machine (torchrun's launcher; one per GPU on CUDA).")] = None,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="Fit the rejection (temperature, "
                                            "thresholds, non-digit detector) at the end, as `digitlab calibrate` "
                                            "does.")] = True,
    init: Annotated[Path | None, typer.Option("--init", help="Fine-tune this trained run (its architecture, "
                                              "preprocessing and recipe) on --images or --strings, into a new "
                                              "run.")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="With --init: a labelled folder of your digits "
                                                "(sub-folders 0-9, image files inside).")] = None,
    strings: Annotated[Path | None, typer.Option("--strings", help="With --init RUN of a string model: a folder of "
                                                 "your strings (images and labels.tsv: file, TAB, string).")] = None,
) -> None:
    """Train a recipe into a new run directory; print its best validation and its test accuracy.

    With --init RUN --images DIR, fine-tune RUN on your own labelled digits mixed with MNIST's
    (docs/decisions.md#fine-tuning); the new run's config.yaml records RUN (finetune:). With --init RUN
    --strings DIR, fine-tune a string model (--recipe strings) on your labelled strings, mixed with synthetic ones.
    Also runs unchanged under torchrun (torchrun --nproc-per-node N -m digitlab train ...).
    """
    from digitlab.training import config_from_recipe, list_recipes, resume_run, train_run
    from digitlab.training.distributed import is_main_process, launch_local

    if list_all:
        _print_named(list_recipes(), "recipes (digitlab train --recipe NAME)")
        return
    sets = list(overrides or []) + ([f"seed={seed}"] if seed is not None else [])
    if list_keys:
        _print_keys(config_from_recipe(recipe, sets))
        return
    if resume is not None and sets:
        raise typer.BadParameter("--resume continues a run with its own config: drop --set and --seed")
    folder = images if images is not None else strings
    if (init is None) != (folder is None) or (images is not None and strings is not None):
        raise typer.BadParameter("--init RUN goes with one of --images DIR (your labelled digits) or --strings DIR "
                                 "(your labelled strings)")
    if init is not None and (resume is not None or recipe != "default"):
        raise typer.BadParameter("--init takes the recipe from RUN: drop --recipe and --resume (--set still works)")
    _refuse_run_folder(out_root)
    if nproc is not None:  # run this same command as N ranks, once the config is known to be good
        from digitlab.core.rundir import RunDir
        from digitlab.models.registry import make_config

        if resume is not None:
            RunDir.open(resume)
        elif init is not None:
            from digitlab.training.finetune import init_spec

            init_spec(init)
        else:
            cfg = config_from_recipe(recipe, sets)
            make_config(cfg.model.name, **cfg.model.args)
        args = ["train", "--recipe", recipe, "--out", str(out_root), *(a for s in sets for a in ("--set", s))]
        args += (["--resume", str(resume)] if resume is not None else []) + (["--quiet"] if quiet else [])
        args += [] if calibrate else ["--no-calibrate"]
        args += ["--init", str(init), "--images" if images is not None else "--strings", str(folder)] \
            if init is not None else []
        launch_local(nproc, args)
        return
    # One line per epoch always; the live bar only on a terminal (in a log file it is noise).
    show_bar = not quiet and sys.stderr.isatty()
    if resume is not None:
        result = resume_run(resume, show_progress=show_bar, log=_log)
    elif init is not None and strings is not None:
        from digitlab.api import prepare_finetune_strings

        cfg, user = prepare_finetune_strings(init, strings, sets, log=_log)
        result = train_run(cfg, out_root=out_root, show_progress=show_bar, log=_log, user_strings=user)
    elif init is not None and images is not None:
        from digitlab.api import prepare_finetune

        cfg, digits = prepare_finetune(init, images, sets, log=_log)
        result = train_run(cfg, out_root=out_root, show_progress=show_bar, log=_log, user_digits=digits)
    else:
        result = train_run(config_from_recipe(recipe, sets), out_root=out_root, show_progress=show_bar, log=_log)
    if not is_main_process():  # the other ranks of a data-parallel run say nothing
        return
    out.print(f"run directory: {result.run_dir}")
    out.print(f"best validation accuracy: {result.best_val_acc:.4f} (epoch {result.best_epoch})")
    reads_strings = get_entry(result.model).kind == "sequence"
    what = "whole synthetic strings of test digits" if reads_strings else "test accuracy"
    if result.test_acc is not None:
        out.print(f"{what}: {result.test_acc:.4f} ({result.test_errors} errors of {result.n_test}), "
                  f"measured once after training")
    procs = f" x {result.world_size} processes" if result.world_size > 1 else ""
    out.print(f"training time: {result.train_seconds:.1f} s on {result.device}{procs}, {result.n_params:,} parameters")
    if reads_strings:  # its reading policy (the string-confidence threshold) was fitted at the end of training
        from digitlab.training.sequence import READING_FILE

        out.print(f"reading: written: {Path(result.run_dir) / READING_FILE}", highlight=False)
    elif calibrate:  # on the device training used
        _calibrate(result.run_dir, show_bar=show_bar, device=str(result.device))


def _calibrate(run: Path, *, show_bar: bool, device: str, data_dir: Path | None = None) -> None:
    """Fit the run's rejection (temperature, thresholds, non-digit detector) and say what it decided."""
    from digitlab.inference.rejection import REJECTION_FILE, calibrate_run

    _log("rejection: fitting on the run's training and validation digits (never the test split)")
    policy = calibrate_run(run, device=device, data_dir=str(data_dir) if data_dir else None,
                           show_progress=show_bar, log=_log).policy
    out.print(f"rejection: temperature {policy.temperature:.3f}; {policy.rule}; written: {Path(run) / REJECTION_FILE}",
              highlight=False)


@app.command("calibrate")
def calibrate_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory written by `digitlab train`.", exists=True,
                                        file_okay=False)],
    device: Annotated[Device, typer.Option("--device", help="Where the model runs (auto: CUDA if any).")] = "auto",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Folder holding the dataset files.")] = None,
) -> None:
    """Fit a run's rejection: the temperature, the confidence threshold and the non-digit detector, on its
    training and validation digits only, into RUN/rejection.safetensors. `digitlab train` runs it at its end."""
    _calibrate(run, show_bar=sys.stderr.isatty(), device=device, data_dir=data_dir)


@app.command("evaluate")
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run directory written by `digitlab train`.", exists=True,
                                        file_okay=False)],
    dataset: Annotated[str | None, typer.Option("--dataset", help="Evaluate on this dataset (default: the "
                                                "one the run was trained on).")] = None,
    split: Annotated[Split, typer.Option("--split", help="The split to measure.")] = "test",
    robustness: Annotated[bool, typer.Option("--robustness", help="Also sweep rotation, translation, scale, noise, "
                                             "blur, stroke thickness, occlusion and inversion.")] = False,
    samples: Annotated[int, typer.Option("--robustness-samples", min=1, help="Images used by the sweep.")] = 2000,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Folder holding the dataset files.")] = None,
    device: Annotated[Device, typer.Option("--device", help="Where the model runs (auto: CUDA if any).")] = "auto",
    images: Annotated[Path | None, typer.Option("--images", help="Evaluate on a labelled folder of real images "
                                                "instead (sub-folders 0 to 9), prepared as `digitlab predict` "
                                                "prepares them.", exists=True, file_okay=False)] = None,
) -> None:
    """Measure a run: metrics, calibration and figures, written to RUN/eval/ and nowhere else (then `digitlab
    report RUN`). It fits nothing: the rejection it measures is the one `digitlab calibrate` fitted."""
    from digitlab.evaluation.evaluate import evaluate_run

    if images is not None:
        from digitlab.evaluation.images import evaluate_images

        r = evaluate_images(run, images, device=device, log=_log)
        lo, hi = r["accuracy_ci95"]
        out.print(f"{r['n']:,} images: accuracy {r['accuracy']:.4f} ({r['errors']} errors; 95% interval "
                  f"{lo:.4f}-{hi:.4f}); no digit found in {r['no_digit_found']}, {len(r['unreadable'])} unreadable")
        if r["accuracy_kept"] is not None:
            out.print(f"with rejection: {r['coverage']:.1%} kept, accuracy {r['accuracy_kept']:.4f} on those")
        out.print(f"written: {r['dir']}")
        return
    m = evaluate_run(run, dataset=dataset, split=split, robustness=robustness,
                     robustness_samples=samples, data_dir=str(data_dir) if data_dir else None, device=device, log=_log)
    lo, hi = m["accuracy_ci95"]
    cal = m["calibration"]
    out.print(f"{m['split']} accuracy: {m['accuracy']:.4f} ({m['errors']} errors of {m['n']:,}; 95% interval "
              f"{lo:.4f}-{hi:.4f})")
    out.print(f"macro F1: {m['macro_avg']['f1']:.4f}; ECE {cal['ece_before']:.4f} raw, {cal['ece_after']:.4f} at "
              f"temperature {cal['temperature']:.3f} (fitted on validation)")
    out.print(f"inference: {m['inference']['images_per_s']:,.0f} images/s on {m['inference']['device']}")
    r = m.get("rejection") or {}
    if r.get("threshold") is not None:
        out.print(f"rejection ({r['rule']}): {r['rejected']:.2%} of {m['split']} digits not read; error "
                  f"{r['error_kept']:.2%} on the rest (against {r['error_all']:.2%} reading everything)",
                  highlight=False)
    out.print(f"written: {Path(m['run']) / 'eval'}")


@app.command("compare")
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (several seeds of one recipe are averaged).",
                                               exists=True, file_okay=False)],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the leaderboard and figures.",
                                          file_okay=False)] = Path("runs/compare"),
    device: Annotated[Device, typer.Option("--device", help="Where runs not evaluated yet are measured.")]
    = "auto",
) -> None:
    """Rank evaluated runs: accuracy, F1, size, training and inference speed, calibration."""
    from digitlab.evaluation.compare import compare_runs, leaderboard_markdown

    _refuse_run_folder(out_dir)
    board = compare_runs(list(runs), out=out_dir, log=_log, device=device)
    out.print(leaderboard_markdown(board["rows"], board["recommendations"]), highlight=False, markup=False)
    out.print(f"written: {out_dir}")


@app.command("report")
def report(
    target: Annotated[Path, typer.Argument(help="An evaluated run directory, or a `digitlab compare` folder.",
                                           exists=True, file_okay=False)],
    explore_dir: Annotated[Path | None, typer.Option("--explore", help="Output of `digitlab data explore` to "
                                                     "include (default: runs/data-<dataset> when present).",
                                                     exists=True, file_okay=False)] = None,
) -> None:
    """One self-contained HTML report (and a Markdown version) of a run or a comparison."""
    from digitlab.evaluation.report import write_report

    html_path, md_path = write_report(target, explore_dir=explore_dir)
    out.print(f"report: {html_path}")
    out.print(f"markdown: {md_path}")


@app.command("predict")
def predict(
    model: Annotated[Path, typer.Argument(help="A run directory, an exported .onnx file or a hub folder.",
                                          exists=True)],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=10, help="How many classes to list per image.")] = 3,
    multi: Annotated[bool, typer.Option("--multi", help="Each image is a line of digits (a postal code, an "
                                        "amount): read them all, left to right.")] = False,
    min_confidence: Annotated[float | None, typer.Option(
        "--min-confidence", min=0.0, max=1.0, help="Reject below this calibrated confidence (default: the "
        "threshold `digitlab calibrate` chose on validation digits).")] = None,
    save_prepared: Annotated[Path | None, typer.Option("--save-prepared", file_okay=False, help="Write the 28x28 "
                                                       "image the model saw for each input to this folder.")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", dir_okay=False, help="Also write one row per image to "
                                                  "this CSV file (never over an existing one without --force).")]
    = None,
    force: Annotated[bool, typer.Option("--force", help="Let --csv replace an existing file.")] = False,
    polarity: Annotated[Polarity, typer.Option("--polarity", help="Ink on paper (dark-on-light), MNIST-like "
                                               "(light-on-dark), or auto.")] = "auto",
    deskew: Annotated[bool, typer.Option("--deskew", help="Straighten slanted digits first.")] = False,
    box: Annotated[str | None, typer.Option("--box", metavar="X,Y,W,H", help="Read only this region of each "
                                            "image, in pixels (a form's field).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="auto: torch where weights exist, else ONNX "
                                             "Runtime.")] = "auto",
) -> None:
    """Read digits in real images (photos, scans, drawings), prepared the way MNIST's digits were.

    One line per image on stdout (one JSON document with --json; also a CSV with --csv FILE), then one summary
    line on stderr: N images: a read, b rejected (c with no digit found), d unreadable.

    Exit status: 0 when every image was read or rejected (a rejection, no digit found included, is an answer);
    2 when an image file is unreadable (the other images are still predicted and reported), and for a bad
    option, a model that cannot load, or an existing --csv FILE without --force.
    """
    from digitlab.inference import Predictor
    from digitlab.inference.batch import FileFailure, find_images, predict_files, write_csv
    from digitlab.inference.batch import save_prepared as save_image
    from digitlab.inference.prepare import parse_box
    from digitlab.inference.strings import is_string_model, open_reader

    region = None if box is None else parse_box(box)  # a bad box fails before the model loads
    if region is not None and multi:
        raise typer.BadParameter("--box reads one digit's field; crop the line yourself for --multi")

    _refuse_existing(csv_path, force)  # before any work, not after minutes of it
    _refuse_run_folder(save_prepared)
    string_model = is_string_model(model)
    if string_model and not multi:
        raise typer.BadParameter(f"{model} is a string model: it reads lines of digits; add --multi")
    if multi and string_model:
        reader: Any = open_reader(model, backend=backend)
    else:
        reader = predictor = Predictor.from_path(model, backend=backend)
        if predictor.rejection is None and min_confidence is None:
            err.print(f"note: {model} has no rejection fitted (`digitlab calibrate RUN`): every image with a "
                      "digit-like shape gets a label", highlight=False)
    files = find_images(images)
    folder_given = any(p.is_dir() for p in images)
    if multi:
        _predict_multi(reader, files, model=model, as_json=as_json, min_confidence=min_confidence,
                       polarity=polarity, csv_path=csv_path, force=force)
        return
    results: list[Any] = []
    kw: dict[str, Any] = {"top_k": top_k, "min_confidence": min_confidence, "polarity": polarity, "deskew": deskew,
                          "box": region}
    if folder_given and not as_json:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err, transient=True) as bar:
            task = bar.add_task("predict", total=len(files))
            results = list(predict_files(predictor, files, progress=lambda n: bar.advance(task, n), **kw))
    else:
        results = list(predict_files(predictor, files, **kw))
    single_bad = [r for r in results if isinstance(r, FileFailure)]
    if len(files) == 1 and single_bad:
        raise DigitlabError(single_bad[0].error)
    if save_prepared is not None:
        taken: set[str] = set()
        for r in results:
            if not isinstance(r, FileFailure):
                save_image(r, save_prepared, taken=taken)
    if csv_path is not None:
        with _new_file(csv_path, force) as tmp:
            write_csv(tmp, results)
        err.print(f"written: {csv_path}", highlight=False)
    if as_json:
        typer.echo(json.dumps({"model": str(model), "threshold": predictor.threshold if min_confidence is None
                               else min_confidence, "predictions": [r.record() for r in results]}, indent=2))
    else:
        for r in results:
            out.print(_prediction_line(r), highlight=False, markup=False)
    readable = [r for r in results if not isinstance(r, FileFailure)]
    _print_summary(len(files), read=sum(not r.rejected for r in readable),
                   rejected=sum(bool(r.rejected) for r in readable),
                   no_digit=sum(not r.prepared.found for r in readable), unreadable=len(single_bad))
    if single_bad:
        raise typer.Exit(EXIT_USAGE)


def _refuse_run_folder(folder: Path | None) -> None:
    """Never a folder of outputs inside a run directory, except its export/ and eval/ (core.rundir)."""
    from digitlab.core.rundir import check_output_dir

    if folder is not None:
        check_output_dir(folder)


def _refuse_existing(path: Path | None, force: bool) -> None:
    """An existing file only with --force, and never one of a run's own files (core.rundir.check_output)."""
    from digitlab.core.rundir import check_output

    if path is not None:
        check_output(path, force=force)


@contextlib.contextmanager
def _new_file(path: Path, force: bool) -> Iterator[Path]:
    """A temp path renamed onto ``path`` on success; without ``force`` never over a file that appeared meanwhile."""
    from digitlab.core.fileio import atomic_path

    try:
        with atomic_path(path, overwrite=force) as tmp:
            yield tmp
    except FileExistsError:
        raise DigitlabError(f"{path}: already exists (--force replaces it)") from None


def _print_summary(n: int, *, read: int, rejected: int, no_digit: int, unreadable: int) -> None:
    err.print(f"{n} image{'s' if n != 1 else ''}: {read} read, {rejected} rejected ({no_digit} with no digit "
              f"found), {unreadable} unreadable", highlight=False)


def _prediction_line(r: Any) -> str:
    if not hasattr(r, "prepared"):
        return f"error: {r.error}"
    if not r.prepared.found:
        return f"{r.source}: no digit found"
    top = "  ".join(f"{c} {p:.3f}" for c, p in r.top_k)
    if r.rejected:
        return f"{r.source}: not read: {r.reason} (best guess {r.label} at {r.confidence:.3f})  [{top}]"
    return f"{r.source}: {r.label} ({r.confidence:.3f})  [{top}]"


MULTI_CSV_FIELDS = ("source", "text", "value", "confidence", "found", "reason", "reader", "digits", "error")


def _not_read(r: dict[str, Any]) -> bool:
    return not r["found"] or r["rejected"] or any(d["rejected"] for d in r["digits"])


def _predict_multi(reader: Any, files: list[Path], *, model: Path, as_json: bool, min_confidence: float | None,
                   polarity: str, csv_path: Path | None, force: bool) -> None:
    """Each file a line: read whole by a string model, or cut into digits with a digit classifier."""
    from digitlab.core.fileio import write_csv_rows
    from digitlab.inference.prepare import ImageError
    from digitlab.inference.strings import read_digits

    records: list[dict[str, Any]] = []
    for f in files:
        try:
            line = read_digits(f, reader, polarity=polarity, min_confidence=min_confidence)  # type: ignore[arg-type]
        except ImageError as e:
            if len(files) == 1:
                raise
            records.append({"source": str(f), "error": str(e)})
            if not as_json:
                out.print(f"error: {e}", highlight=False, markup=False)
            continue
        records.append({"source": str(f), **line.record()})
        if not as_json:
            chars = " ".join(f"{d.label}:{d.confidence:.2f}" for d in line.digits)
            if not line.found or not line.text:
                shown = "no digits found"
            elif line.rejected:
                shown = f"not read: {line.rejected} (best guess {line.text})"
            else:
                shown = line.text
            out.print(f"{f}: {shown}  [{chars}]", highlight=False, markup=False)
    if csv_path is not None:
        rows = [{**{k: v for k, v in r.items() if k in MULTI_CSV_FIELDS},
                 "confidence": f"{r['confidence']:.6f}" if "confidence" in r else "",
                 "digits": " ".join(f"{d['label']}:{d['confidence']:.4f}" for d in r.get("digits", []))}
                for r in records]
        with _new_file(csv_path, force) as tmp:
            write_csv_rows(tmp, MULTI_CSV_FIELDS, rows)
        err.print(f"written: {csv_path}", highlight=False)
    if as_json:
        typer.echo(json.dumps({"model": str(model), "strings": records}, indent=2))
    lines = [r for r in records if "error" not in r]
    unreadable = len(records) - len(lines)
    _print_summary(len(files), read=sum(not _not_read(r) for r in lines), rejected=sum(_not_read(r) for r in lines),
                   no_digit=sum(not r["found"] for r in lines), unreadable=unreadable)
    if unreadable:
        raise typer.Exit(EXIT_USAGE)


@app.command("export")
def export(
    run: Annotated[Path, typer.Argument(help="A run directory written by `digitlab train` (a torch model).",
                                        exists=True, file_okay=False)],
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="onnx (RUN/export/model.onnx) or hub "
                                              "(RUN/export/hub/: weights, ONNX, preprocessing, calibration, model "
                                              "card).")] = "onnx",
    quantize: Annotated[Quantize | None, typer.Option("--quantize", help="int8: also a static INT8 model calibrated "
                                                      "on training images, with its test accuracy (--format onnx).")]
    = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="The .onnx file or the hub folder to write.")]
    = None,
    opset: Annotated[int, typer.Option("--opset", min=17, help="ONNX opset, 17 or newer.")] = 17,
    force: Annotated[bool, typer.Option("--force", help="Let --out replace an existing file (never one of a run's "
                                        "own files).")] = False,
) -> None:
    """Export a run: an ONNX file checked against torch (optionally INT8), or a hub-ready folder with a model card."""
    from digitlab.export.hub import export_hub
    from digitlab.export.onnx import export_onnx

    if quantize is not None and fmt == "hub":
        raise typer.BadParameter("--quantize goes with --format onnx (the hub folder holds the fp32 model)")
    if fmt == "hub":
        folder = export_hub(run, out_path, opset=opset, log=_log)
        out.print(f"written: {folder}/ ({', '.join(sorted(p.name for p in folder.iterdir()))})")
        return
    r = export_onnx(run, out_path, opset=opset, quantize=quantize, log=_log, force=force)
    p = r["parity"]
    out.print(f"written: {r['onnx']} ({r['size_bytes'] / 1e6:.2f} MB, opset {r['opset']}, {r['exporter']} exporter)")
    what = "log-probability" if "shapes" in p else "logit"  # a string model: per-frame CTC log-probabilities
    out.print(f"parity with torch: max |{what} difference| {p['max_abs_diff']:.2e} on {p['n']:,} {p['inputs']} "
              f"(tolerance {p['tolerance']:g})")
    if "max_abs_diff_score" in p:
        out.print(f"non-digit detector in the graph (output nondigit_score): max |score difference| "
                  f"{p['max_abs_diff_score']:.2e}")
    if r["int8"]:
        q = r["int8"]
        out.print(f"written: {q['path']} ({q['size_bytes'] / 1e6:.2f} MB, INT8, "
                  f"{'per-channel' if q['per_channel'] else 'per-tensor'} weights)")
        out.print(f"test accuracy: fp32 {q['accuracy_fp32']:.4f}, int8 {q['accuracy_int8']:.4f}, drop "
                  f"{q['drop_points']:.2f} points ({q['n_test']:,} images; predictions agree on "
                  f"{q['agreement']:.2%})")
        if q.get("detector"):
            d = q["detector"]
            out.print(f"INT8 detector kept in float32: non-digit flags agree on {d['flag_agreement']:.2%} "
                      f"(max |score difference| {d['max_abs_diff_score']:.2g}: the features it reads are quantized)")


@app.command("push")
def push_to_hub(
    target: Annotated[Path, typer.Argument(help="A run directory (exported to RUN/export/hub/ first) or a hub "
                                           "folder written by `digitlab export --format hub`.",
                                           exists=True, file_okay=False)],
    repo_id: Annotated[str, typer.Option("--repo-id", help="The model repository: user/name or org/name.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    token: Annotated[str | None, typer.Option("--token", help="A token with write access (default: HF_TOKEN or "
                                              "`hf auth login`).")] = None,
) -> None:
    """Upload a run's hub folder to the Hugging Face Hub (the repository is created when missing)."""
    from digitlab.export.push import push

    url = push(target, repo_id, token=token, private=private, log=_log)
    out.print(f"pushed: {url}")


@app.command("serve")
def serve(
    model: Annotated[Path, typer.Argument(help="A run directory, an exported .onnx file or a hub folder.",
                                          exists=True)],
    host: Annotated[str, typer.Option("--host", help="The address to listen on (127.0.0.1: this machine only).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="The port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes (each loads the "
                                         "model).")] = 1,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request (costs "
                                             "time under load).")] = False,
    strings: Annotated[Path | None, typer.Option("--strings", exists=True, help="A string model (run, .onnx or hub "
                                                 "folder: --recipe strings) that reads /v1/read's lines and the "
                                                 "drawing page's strings whole.")] = None,
) -> None:
    """Serve the model: REST API (/v1/..., OpenAPI at /docs) and the drawing page at /. Limits, CORS and defaults
    come from DIGITLAB_SERVE_* variables (MAX_BODY_BYTES, MAX_BATCH, TIMEOUT_S, CORS_ORIGINS, TOP_K; for slow
    clients HEADER_TIMEOUT_S, BODY_TIMEOUT_S, KEEP_ALIVE_S, MAX_CONNECTIONS)."""
    import os
    import shutil
    import tempfile

    import uvicorn
    from pydantic import ValidationError

    from digitlab.inference import Predictor
    from digitlab.inference.sequence import StringReader
    from digitlab.serve import ServeSettings, create_app
    from digitlab.serve.protocol import HTTP_PROTOCOL
    from digitlab.serve.settings import ENV_PREFIX

    try:
        settings = ServeSettings(model=model, strings=strings)
    except ValidationError as e:  # a bad DIGITLAB_SERVE_* value
        first = e.errors()[0]
        raise typer.BadParameter(f"{ENV_PREFIX}{str(first['loc'][0]).upper()}: {first['msg']}") from None
    predictor = Predictor.from_path(model)  # a model that cannot load fails here, not in a worker
    string_reader = StringReader.from_path(strings) if strings is not None else None
    lines = f"; lines read by {string_reader.info.name} ({strings})" if string_reader is not None else ""
    err.print(f"serving {predictor.name} ({model}){lines} on http://{host}:{port}/ (API docs at /docs)")
    # slow clients: the request head's deadline (the protocol reads DIGITLAB_SERVE_HEADER_TIMEOUT_S), idle
    # kept-alive connections, and a cap on connections and requests (past it a 503 at once)
    if workers == 1:
        uvicorn.run(create_app(settings, predictor=predictor, string_reader=string_reader), host=host, port=port,
                    log_level="info",
                    access_log=access_log, http=HTTP_PROTOCOL, timeout_keep_alive=settings.keep_alive_s,
                    limit_concurrency=settings.max_connections)
        return
    os.environ[f"{ENV_PREFIX}MODEL"] = str(model.resolve())
    if strings is not None:
        os.environ[f"{ENV_PREFIX}STRINGS"] = str(strings.resolve())
    metrics_dir = tempfile.mkdtemp(prefix="digitlab-metrics-")
    # For the workers only: /metrics sums every worker's counts (Prometheus' multiprocess mode, files in
    # metrics_dir), and each worker's model threads share the cores (W workers x all cores oversubscribe).
    scoped = {"PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    if "OMP_NUM_THREADS" not in os.environ:
        scoped["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    saved = {k: os.environ.get(k) for k in scoped}
    os.environ.update(scoped)
    try:
        uvicorn.run("digitlab.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level="info", access_log=access_log, http=HTTP_PROTOCOL,
                    timeout_keep_alive=settings.keep_alive_s, limit_concurrency=settings.max_connections)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(metrics_dir, ignore_errors=True)


@app.command("tune")
def tune(
    recipe: Annotated[str | None, typer.Option("--recipe", "-r", help="Recipe to tune (default: the one the space "
                                               "names).")] = None,
    space: Annotated[str, typer.Option("--space", help="Search space: a shipped name (seed-grid, best-wide) or a "
                                       "YAML file.")] = "seed-grid",
    trials: Annotated[int, typer.Option("--trials", "-n", min=1, help="Trials in the study, all workers together.")]
    = 20,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0, help="Stop taking trials after S seconds.")]
    = None,
    storage: Annotated[str | None, typer.Option("--storage", help="SQLAlchemy URL (default: sqlite in the study "
                                                "folder; PostgreSQL for workers on several machines).")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name (default: RECIPE-SPACE).")] = None,
    n_jobs: Annotated[int, typer.Option("--n-jobs", "-j", min=1, help="Worker processes on this machine.")] = 1,
    sampler: Annotated[Sampler, typer.Option("--sampler", help="How trials pick their parameters.")] = "tpe",
    pruner: Annotated[Pruner, typer.Option("--pruner", help="How unpromising trials are stopped early.")]
    = "median",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an existing study.")] = False,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe key in every trial (repeatable).")
    ] = None,
    out_root: Annotated[Path, typer.Option("--out", help="Parent folder of the study folder.", file_okay=False)]
    = Path("runs"),
    seed: Annotated[int, typer.Option("--seed", help="Sampler seed.")] = 0,
    worker: Annotated[bool, typer.Option("--worker", hidden=True)] = False,
    list_all: Annotated[bool, typer.Option("--list-spaces", help="List the shipped search spaces and exit.")] = False,
) -> None:
    """Tune a recipe with Optuna on the validation split; write the trials, figures and the best recipe."""
    from digitlab.tuning.space import list_spaces
    from digitlab.tuning.study import TuneOptions
    from digitlab.tuning.study import tune as run_tune

    if list_all:
        _print_named(list_spaces(), "search spaces (digitlab tune --space NAME)")
        return
    _refuse_run_folder(out_root)
    opts = TuneOptions(recipe=recipe, space=space, trials=trials, timeout=timeout, storage=storage, study=study,
                       n_jobs=n_jobs, sampler=sampler, pruner=pruner, resume=resume, overrides=list(overrides or []),
                       out_root=str(out_root), seed=seed, worker=worker)
    summary = run_tune(opts, log=_log)
    if worker:
        return
    table = Table(title=f"study {summary['study']}: {summary['n_trials']} trials")
    columns = [c for c in (summary["trials"][0] if summary["trials"] else {}) if c != "run_dir"]
    for c in columns:  # parameters by their last key parts: blocks.0.filters, dense.0, lr
        label = c.removeprefix("model.args.").removeprefix("optim.").removeprefix("train.")
        table.add_column(label, justify="left" if c == "state" else "right")
    for r in summary["trials"]:
        table.add_row(*["-" if r[c] is None else f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])
                        for c in columns])
    out.print(table)
    if summary["best"]:
        b = summary["best"]
        out.print(f"best: trial {b['number']}, validation accuracy {b['value']:.4f} ({', '.join(b['overrides'])})")
        out.print(f"best recipe: {b['recipe_file']} (digitlab train --recipe {b['recipe_file']})")
    out.print(f"written: {summary['dir']} (trials.csv, figures, summary.html)")
    if summary["interrupted"]:
        resume_cmd = f"digitlab tune --study {summary['study']} --resume ... (the same options)"
        out.print(f"stopped by Ctrl-C after the running trial; continue with {resume_cmd}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

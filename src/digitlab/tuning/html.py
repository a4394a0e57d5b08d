"""The study's HTML summary, in the style of the evaluation report (images embedded, no links out).

Usage: ``write_summary_html(summary, study_folder)`` -> ``study_folder/summary.html``.
"""

from pathlib import Path
from typing import Any

import jinja2

from digitlab.core.fileio import atomic_write_text
from digitlab.evaluation.report import data_uri, format_cell

_env = jinja2.Environment(
    loader=jinja2.ChoiceLoader([jinja2.PackageLoader("digitlab.tuning", "templates"),
                                jinja2.PackageLoader("digitlab.evaluation", "templates")]),
    autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True,
    undefined=jinja2.StrictUndefined)


def write_summary_html(summary: dict[str, Any], folder: Path) -> Path:
    figures = [{"title": key.replace("_", " "), "uri": data_uri(folder / name)}
               for key, name in summary.get("figures", {}).items() if (folder / name).is_file()]
    columns = list(summary["trials"][0]) if summary["trials"] else []
    best_file = folder / "best-recipe.yaml"
    html = _env.get_template("summary.html.j2").render(
        s=summary, figures=figures, columns=columns, fmt=format_cell,
        best_recipe=best_file.read_text() if best_file.is_file() else "")
    path = folder / "summary.html"
    atomic_write_text(path, html)
    return path

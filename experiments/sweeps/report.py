"""``dualpath report SWEEP_RUN``: one self-contained HTML page for a sweep.

A sweep is a parent MLflow run tagged ``dualpath.kind = sweep`` with these
artifacts at its root: ``sweep.toml`` (the sweep file), ``summary.json`` (name,
figure, paper statement, x key, metrics, policies, timing), ``results.csv`` (one
row per point x policy x seed) and ``plots/*.png``; and one child run per grid
point (``point-000``, ...) whose params are the point's grid values and whose
metrics are per-policy means over seeds, named by :func:`compare.metric_key`.

The page holds everything it shows: figures are embedded as base64 data URIs and
the CSS is inline, so it can be mailed, attached to a pull request or opened
offline. Everything that comes from the store is HTML-escaped.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.evaluation.compare import metric_key
from experiments.evaluation.table import format_value
from experiments.tracking import mlflow_runs as tracking

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

KIND_TAG = "dualpath.kind"
SWEEP_TAG = "dualpath.sweep"
CODE_TAG = "dualpath.code_version"
PARENT_TAG = "mlflow.parentRunId"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_PAGE = 1000  # runs per search request

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
tbody td:first-child { white-space: nowrap; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
blockquote { border-left: 3px solid #888; margin: 0.5em 0; padding: 0.2em 1em; color: #444; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #666; font-size: 12px; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
.dirty { color: #b00; }
"""


@dataclass(frozen=True)
class Report:
    """A written report: where it is and how many figures and tables it holds."""

    path: Path
    images: int
    tables: int


@dataclass
class _Sweep:
    """What the report shows, fetched from the store."""

    run: Run
    name: str
    summary: dict[str, Any]
    toml: str | None
    results: list[dict[str, str]] | None
    columns: list[str]
    images: list[tuple[str, bytes]]
    children: list[Run]


# ---------------------------------------------------------------- finding the run


def _client(tracking_uri: str | None) -> MlflowClient:
    tracking.setup(tracking_uri)
    from mlflow import MlflowClient  # imported late, as in tracking: it is slow to import

    return MlflowClient()


def _search(client: MlflowClient, experiment_ids: list[str], query: str) -> list[Run]:
    """Every run matching ``query``, newest first, across the pages MLflow returns."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=_PAGE,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def find_sweep_run(client: MlflowClient, run: str) -> Run:
    """The parent run of a sweep, from its run id or its sweep name (the latest started).

    Raises ``LookupError`` naming the known sweeps when nothing matches, and
    ``ValueError`` when a run id names a run that is not a sweep.
    """
    if _RUN_ID.match(run):
        found = _by_id(client, run)
        if found is not None:
            return found
    sweeps = _search(client, _experiment_ids(client), f"tags.`{KIND_TAG}` = 'sweep'")
    name = run.removeprefix("sweep:")  # the parent's run name works too
    matching = [r for r in sweeps if r.data.tags.get(SWEEP_TAG) == name]
    if matching:
        return max(matching, key=lambda r: r.info.start_time or 0)
    known = sorted({r.data.tags.get(SWEEP_TAG, "?") for r in sweeps})
    listed = ", ".join(known) if known else "none logged in this store"
    raise LookupError(f"{run!r}: no sweep run with this id or sweep name; known sweeps: {listed}")


def _by_id(client: MlflowClient, run_id: str) -> Run | None:
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    kind = found.data.tags.get(KIND_TAG)
    if kind != "sweep":
        raise ValueError(f"run {run_id} is not a sweep ({KIND_TAG} = {kind!r})")
    return found


# ---------------------------------------------------------------- fetching artifacts


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    """Paths of all files under ``path`` of the run's artifacts, depth first."""
    out: list[str] = []
    for info in client.list_artifacts(run_id, path):
        out.extend(_artifact_paths(client, run_id, info.path) if info.is_dir else [info.path])
    return out


def _fetch(client: MlflowClient, run_id: str, path: str, dst: Path) -> bytes:
    return Path(client.download_artifacts(run_id, path, str(dst))).read_bytes()


def _load(client: MlflowClient, parent: Run) -> _Sweep:
    run_id = parent.info.run_id
    files = _artifact_paths(client, run_id)
    with tempfile.TemporaryDirectory(prefix="dualpath-report-") as tmp:
        def text(path: str) -> str | None:
            return _fetch(client, run_id, path, Path(tmp)).decode() if path in files else None

        summary_text = text("summary.json")
        toml = text("sweep.toml")
        results_text = text("results.csv")
        images = [(p, _fetch(client, run_id, p, Path(tmp)))
                  for p in files if p.lower().endswith(".png")]
    summary = json.loads(summary_text) if summary_text else {}
    columns, results = _parse_csv(results_text) if results_text is not None else ([], None)
    name = parent.data.tags.get(SWEEP_TAG) or str(summary.get("name", "?"))
    return _Sweep(run=parent, name=name, summary=summary, toml=toml, results=results,
                  columns=columns, images=images, children=_children(client, parent))


def _parse_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _children(client: MlflowClient, parent: Run) -> list[Run]:
    """The per-point runs, in point order (their names sort as the points do)."""
    query = f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    runs = _search(client, [parent.info.experiment_id], query)
    return sorted(runs, key=lambda r: r.info.run_name or "")


# ---------------------------------------------------------------- HTML pieces


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, attrs: str = "",
           text_columns: int = 1, head_html: str | None = None) -> str:
    """A table; the first ``text_columns`` columns are left-aligned labels."""
    def cell(tag: str, i: int, value: Any) -> str:
        cls = ' class="text"' if i < text_columns else ""
        return f"<{tag}{cls}>{_e(value)}</{tag}>"

    head = head_html or "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr>"
    body = "\n".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>"
                     for row in rows)
    return f"<table{attrs}>\n<thead>{head}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _mean(values: Iterable[str | None]) -> float | None:
    numbers = [v for v in map(_number, values) if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


def _cell(value: float | None) -> str:
    return "–" if value is None else format_value(value)


def _time(ms: int | None) -> str:
    if not ms:
        return "?"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- sections


def _header(sweep: _Sweep) -> str:
    s, info, tags = sweep.summary, sweep.run.info, sweep.run.data.tags
    code = tags.get(CODE_TAG, "?")
    code_html = _e(code) + (' <span class="dirty">(uncommitted changes)</span>'
                            if code.endswith("-dirty") else "")
    wall = s.get("wall_s")
    fields = [
        ("Figure", _e(s.get("figure", "?"))),
        ("Run", f"<code>{_e(info.run_id)}</code> ({_e(info.status)})"),
        ("Started", _e(s.get("started") or _time(info.start_time))),
        ("Wall time", _e(f"{format_value(float(wall))} s" if isinstance(wall, int | float)
                         else "?")),
        ("Jobs", _e(f"{s.get('jobs', '?')} on {s.get('backend', '?')}")),
        ("Grid", _e(f"{s.get('points', '?')} points on x = {s.get('x', '?')}, "
                    f"seeds {s.get('seeds', '?')}")),
        ("Code version", f"<code>{code_html}</code>"),
    ]
    meta = "\n".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in fields)
    parts = [f"<h1>Sweep {_e(sweep.name)}</h1>"]
    if s.get("description"):
        parts.append(f"<p>{_e(s['description'])}</p>")
    if s.get("paper"):
        parts.append(f"<p>The paper states:</p>\n<blockquote>{_e(s['paper'])}</blockquote>")
    parts.append(f'<dl class="meta">\n{meta}\n</dl>')
    return "\n".join(parts)


def _figures(sweep: _Sweep) -> tuple[str, int]:
    if not sweep.images:
        return '<h2>Figures</h2>\n<p class="note">No PNG artifacts were logged.</p>', 0
    parts, shown = ["<h2>Figures</h2>"], 0
    for path, data in sweep.images:
        if not data.startswith(PNG_MAGIC):  # a broken file is named, not shown as a broken image
            parts.append(f'<p class="note">{_e(path)}: not a PNG file, left out.</p>')
            continue
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(f'<figure><img src="{uri}" alt="{_e(path)}">'
                     f"<figcaption>{_e(path)}</figcaption></figure>")
        shown += 1
    return "\n".join(parts), shown


def _ordered(listed: Any, seen: Iterable[str]) -> list[str]:
    """The summary's order first, then any others in the order the data has them."""
    first = [str(x) for x in listed] if isinstance(listed, list) else []
    return list(dict.fromkeys([*first, *seen]))


def _layout(sweep: _Sweep) -> tuple[list[str], list[str], list[str]]:
    """Grid keys, policies and metrics of ``results.csv``, in the summary's order."""
    cols, rows = sweep.columns, sweep.results or []
    if "point" not in cols or "policy" not in cols:
        raise ValueError(f"sweep {sweep.name}: results.csv lacks a point or policy column "
                         f"(columns: {', '.join(cols)})")
    grid = cols[cols.index("point") + 1:cols.index("policy")]
    after = cols[cols.index("policy") + 1:]
    present = [c for c in after if c != "seed"]
    # The rows carry every metric a run reports; the pivot shows the ones the sweep plots.
    listed = [str(m) for m in sweep.summary.get("metrics") or [] if str(m) in present]
    metrics = listed or present
    policies = _ordered(sweep.summary.get("policies"), (r["policy"] for r in rows))
    policies = [p for p in policies if any(r["policy"] == p for r in rows)]
    return grid, policies, metrics


def _pivot(sweep: _Sweep) -> tuple[str, int]:
    """One row per point, one column per policy under each metric: means over seeds."""
    grid, policies, metrics = _layout(sweep)
    points: dict[str, list[dict[str, str]]] = {}
    for row in sweep.results or []:
        points.setdefault(row["point"], []).append(row)
    top = ("<tr>" + "".join(f'<th class="text" rowspan="2">{_e(k)}</th>'
                            for k in ["point", *grid])
           + "".join(f'<th colspan="{len(policies)}">{_e(m)}</th>' for m in metrics) + "</tr>")
    sub = "<tr>" + "".join(f"<th>{_e(p)}</th>" for _ in metrics for p in policies) + "</tr>"
    body = []
    for point, rows in points.items():
        cells = [point, *(rows[0].get(k, "") for k in grid)]
        for metric in metrics:
            for policy in policies:
                cells.append(_cell(_mean(r.get(metric) for r in rows if r["policy"] == policy)))
        body.append(cells)
    seeds = len({r.get("seed") for r in sweep.results or []})
    table = _table([], body, attrs=' id="pivot"', text_columns=1 + len(grid),
                   head_html=top + sub)
    return (f'<p class="note">Mean over {seeds} seed(s) per point and policy.</p>\n{table}\n'
            + _full_results(sweep)), 2


def _full_results(sweep: _Sweep) -> str:
    rows = [[r.get(c, "") for c in sweep.columns] for r in sweep.results or []]
    table = _table(sweep.columns, rows, attrs=' id="results"', text_columns=0)
    return (f"<details><summary>All {len(rows)} rows of results.csv</summary>\n"
            f"{table}\n</details>")


def _results(sweep: _Sweep) -> tuple[str, int]:
    if sweep.results is None:
        return '<h2>Results</h2>\n<p class="note">No results.csv was logged.</p>', 0
    body, tables = _pivot(sweep)
    return f"<h2>Results</h2>\n{body}", tables


def _metric_columns(sweep: _Sweep, keys: set[str]) -> list[tuple[str, str]]:
    """(metric key, label) pairs: listed policy x metric first, then any other keys."""
    s = sweep.summary
    known = [(metric_key(str(p), str(m)), f"{m} · {p}")
             for m in s.get("metrics") or [] for p in s.get("policies") or []]
    ordered = [(k, label) for k, label in known if k in keys]
    named = {k for k, _ in ordered}
    return ordered + [(k, k) for k in sorted(keys - named)]


def _child_table(sweep: _Sweep) -> tuple[str, int]:
    if not sweep.children:
        return '<h2>Grid points</h2>\n<p class="note">No child runs were logged.</p>', 0
    seen_params = (k for c in sweep.children for k in c.data.params)
    params = _ordered(sweep.columns[1:], seen_params)  # grid keys in results.csv order
    params = [p for p in params if any(p in c.data.params for c in sweep.children)]
    metrics = _metric_columns(sweep, {k for c in sweep.children for k in c.data.metrics})
    header = ["run", *params, *(label for _, label in metrics)]
    rows = [[c.info.run_name or c.info.run_id, *(c.data.params.get(p, "") for p in params),
             *(_cell(c.data.metrics.get(k)) for k, _ in metrics)] for c in sweep.children]
    table = _table(header, rows, attrs=' id="points"', text_columns=1 + len(params))
    return f"<h2>Grid points</h2>\n{table}", 1


def _config(sweep: _Sweep) -> tuple[str, int]:
    toml = (f'<pre id="sweep-toml">{_e(sweep.toml)}</pre>' if sweep.toml is not None
            else '<p class="note">No sweep.toml was logged.</p>')
    params = sorted(sweep.run.data.params.items())
    table = _table(["param", "value"], params, attrs=' id="params"', text_columns=2)
    return (f"<h2>Configuration</h2>\n<h3>sweep.toml</h3>\n{toml}\n"
            f"<h3>Parameters of the sweep run</h3>\n{table}"), 1


def render_report(sweep: _Sweep) -> tuple[str, int, int]:
    """The page's HTML, the number of figures and the number of tables."""
    figures, images = _figures(sweep)
    sections = [_results(sweep), _child_table(sweep), _config(sweep)]
    tables = sum(n for _, n in sections)
    title = f"Sweep {sweep.name}: {sweep.summary.get('figure', '')}".rstrip(": ")
    body = "\n".join([_header(sweep), figures, *(s for s, _ in sections)])
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
            f"</body>\n</html>\n")
    return page, images, tables


# ---------------------------------------------------------------- entry points


def _default_out(sweep: _Sweep) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", sweep.name).strip("._") or "sweep"
    return Path(f"report-{safe}-{sweep.run.info.run_id[:8]}.html")


def write_report(run: str, out: Path | None = None,
                 tracking_uri: str | None = None) -> Report:
    """Like :func:`build_report`, also counting the figures and tables written."""
    client = _client(tracking_uri)
    sweep = _load(client, find_sweep_run(client, run))
    page, images, tables = render_report(sweep)
    path = Path(out) if out is not None else _default_out(sweep)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return Report(path=path, images=images, tables=tables)


def build_report(run: str, out: Path | None = None, tracking_uri: str | None = None) -> Path:
    """Write the HTML report of a sweep and return its path.

    ``run`` is the parent run id or a sweep name (then the latest started sweep run
    of that name). ``out`` defaults to ``report-<sweep>-<runid8>.html`` in the
    current directory; ``tracking_uri`` as in :func:`tracking.tracking_uri`.
    Raises ``LookupError`` when no sweep matches ``run``.
    """
    return write_report(run, out, tracking_uri).path

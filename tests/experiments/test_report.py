"""``dualpath report``: the HTML page of a fake sweep logged to a temporary SQLite store.

The fake sweep follows the sweep runner's contract: a parent run tagged
``dualpath.kind = sweep`` with sweep.toml, summary.json, results.csv and
plots/*.png at its root, and one nested child run per grid point.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow import MlflowClient

from experiments.cli import main
from experiments.evaluation.compare import metric_key
from experiments.sweeps import report
from experiments.tracking import mlflow_runs as tracking

NAME = "fig-test"
POLICIES = ["pe_only:layerwise=false", "dualpath"]
METRICS = ["jct_mean_s", "throughput_tok_s"]
GRID = [{"agents": 64, "snic_gb_s": 25.0}, {"agents": 128, "snic_gb_s": 50.0}]
# Characters HTML must escape, so that the page shows them verbatim.
TOML = f'''name = "{NAME}"
description = "JCT vs agents <b>&</b> bandwidth"
# compare <pe_only> & "dualpath"
x = "agents"
'''
SUMMARY = {
    "name": NAME, "description": "JCT vs agents <b>&</b> bandwidth",
    "figure": "Figure 9: JCT against the number of agents",
    "paper": "DualPath cuts JCT by up to 1.87x", "x": "agents", "metrics": METRICS,
    "policies": POLICIES, "points": len(GRID), "seeds": [0], "wall_s": 12.5, "jobs": 2,
    "backend": "local", "started": "2025-01-02T03:04:05+00:00",
}
CODE_VERSION = "0123456789abcdef0123456789abcdef01234567-dirty"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(path: Path, slope: float) -> None:
    fig = Figure(figsize=(2, 1.5))
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1, 2], [0, slope, 2 * slope])
    fig.savefig(path, format="png", dpi=40)


def _results() -> list[dict[str, object]]:
    rows = []
    for i, point in enumerate(GRID):
        for j, policy in enumerate(POLICIES):
            rows.append({"point": i, **point, "policy": policy, "seed": 0,
                         "jct_mean_s": 100.0 * (i + 1) / (j + 1),
                         "throughput_tok_s": 1000.0 * (j + 1),
                         "requests": 10})  # reported by runs, not plotted: not in the pivot
    return rows


def _csv(rows: list[dict[str, object]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _log_sweep(files: Path) -> str:
    """The sweep as the runner logs it; returns the parent run id."""
    tags = {"dualpath.kind": "sweep", "dualpath.sweep": NAME, "dualpath.code_version": CODE_VERSION}
    config = {"name": NAME, "x": "agents", "grid": {"agents": [64, 128]}, "policies": POLICIES}
    rows = _results()
    with tracking.run(f"sweep:{NAME}", config, tags=tags) as parent:
        mlflow.log_text(TOML, "sweep.toml")
        mlflow.log_text(json.dumps(SUMMARY), "summary.json")
        mlflow.log_text(_csv(rows), "results.csv")
        for slope, name in ((1.0, "jct.png"), (2.0, "throughput.png")):
            _png(files / name, slope)
            mlflow.log_artifact(str(files / name), "plots")
        for i, point in enumerate(GRID):
            with tracking.run(f"point-{i:03d}", point):
                tracking.log_metrics({metric_key(r["policy"], m): r[m]
                                      for r in rows if r["point"] == i for m in METRICS})
    return parent.info.run_id


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict[str, str]:
    """One store for the module (creating the schema is the slow part): the sweep, an
    older run of it, another sweep and a run that is not a sweep."""
    root = tmp_path_factory.mktemp("report").resolve()
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setattr(tracking, "_state", {})
        tracking.setup(uri)
        run_id = _log_sweep(root)
        client = MlflowClient()
        exp = client.get_run(run_id).info.experiment_id
        started = client.get_run(run_id).info.start_time
        # Logged after the sweep but started before it: "latest" means latest started.
        older = client.create_run(exp, start_time=started - 3_600_000, run_name=f"sweep:{NAME}",
                                  tags={"dualpath.kind": "sweep", "dualpath.sweep": NAME})
        other = client.create_run(exp, run_name="sweep:other-sweep",
                                  tags={"dualpath.kind": "sweep", "dualpath.sweep": "other-sweep"})
        plain = client.create_run(exp, run_name="compare-x", tags={"kind": "compare"})
        for r in (older, other, plain):
            client.set_terminated(r.info.run_id)
    return {"uri": uri, "run_id": run_id, "older": older.info.run_id,
            "plain": plain.info.run_id}


@pytest.fixture
def store(sweep, monkeypatch, tmp_path) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep["uri"])
    monkeypatch.setattr(tracking, "_state", {})
    return sweep


class Page(HTMLParser):
    """The parts of the page the tests look at: images, tables by id, <pre> text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str]] = []
        self.tables: dict[str, dict[str, list[list[str]]]] = {}
        self.pre: dict[str, str] = {}
        self.text: list[str] = []
        self._table: str | None = None
        self._part = "tbody"
        self._cell: list[str] | None = None
        self._pre: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)
        elif tag == "table":
            self._table = a.get("id", f"#{len(self.tables)}")
            self.tables[self._table] = {"thead": [], "tbody": []}
        elif tag in ("thead", "tbody"):
            self._part = tag
        elif tag == "tr" and self._table is not None:
            self.tables[self._table][self._part].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "pre":
            self._pre = a.get("id", "")
            self.pre[self._pre] = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][self._part][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "pre":
            self._pre = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._pre is not None:
            self.pre[self._pre] += data


def test_report_embeds_figures_tables_and_config(store):
    out = report.build_report(store["run_id"])
    assert out == Path(f"report-{NAME}-{store['run_id'][:8]}.html")
    text = out.read_text()
    page = Page(text)

    assert sorted(img["alt"] for img in page.images) == ["plots/jct.png", "plots/throughput.png"]
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix):]).startswith(PNG_MAGIC)

    pivot = page.tables["pivot"]
    assert [row[:3] for row in pivot["tbody"]] == [["0", "64", "25.0"], ["1", "128", "50.0"]]
    assert pivot["thead"][0] == ["point", "agents", "snic_gb_s", *METRICS]
    assert pivot["thead"][1] == POLICIES * len(METRICS)
    assert pivot["tbody"][1][3:5] == ["200.0", "100.0"]  # JCT at point 1, per policy
    assert len(page.tables["results"]["tbody"]) == len(GRID) * len(POLICIES)

    points = page.tables["points"]
    assert [row[0] for row in points["tbody"]] == ["point-000", "point-001"]
    assert points["thead"][0][:3] == ["run", "agents", "snic_gb_s"]
    assert f"jct_mean_s · {POLICIES[0]}" in points["thead"][0]

    assert page.pre["sweep-toml"] == TOML
    assert html.escape('# compare <pe_only> & "dualpath"') in text
    assert "<b>" not in text  # escaped, shown as text
    body = "".join(page.text)
    assert CODE_VERSION in body and SUMMARY["paper"] in body and SUMMARY["figure"] in body
    assert ["x", "agents"] in page.tables["params"]["tbody"]
    assert "http://" not in text and "https://" not in text  # nothing fetched from outside


def test_lookup_by_name_picks_the_latest_started(store, tmp_path):
    out = report.build_report(NAME, out=tmp_path / "sub" / "r.html")
    assert out == tmp_path / "sub" / "r.html"
    assert store["run_id"] in out.read_text()
    assert store["older"] not in out.read_text()


def test_unknown_name_lists_the_known_sweeps(store):
    with pytest.raises(LookupError, match=f"known sweeps: {NAME}, other-sweep"):
        report.build_report("no-such-sweep")


def test_a_run_that_is_not_a_sweep_is_refused(store):
    with pytest.raises(ValueError, match="is not a sweep"):
        report.build_report(store["plain"])


def test_cli_json(store, capsys):
    assert main(["report", NAME, "--out", "r.html", "--tracking-uri", store["uri"],
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload == {"report": "r.html", "images": 2, "tables": 4}
    assert Path("r.html").is_file()


def test_headless_screenshot(store, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: no headless rendering check")
    page = report.build_report(store["run_id"]).resolve()
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1200,2000", page.as_uri()],
                   check=True, capture_output=True, timeout=60)
    assert shot.stat().st_size > 0
    assert shot.read_bytes().startswith(PNG_MAGIC)

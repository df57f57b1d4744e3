"""The README stays a short front door, the reference pages in docs/ exist and link correctly, and the settings,
metrics and alerts they list are the ones the code has (engine/config.py, engine/metrics.py, dashboards/alerts.yml).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from engine.config import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, *PAGES]
README_LIMIT = 12_288
FENCED = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(path: Path) -> str:
    """The page without fenced blocks: links and headings inside code are not links and headings."""
    return FENCED.sub("", path.read_text(encoding="utf-8"))


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in HEADING.findall(prose(path)):
        text = re.sub(r"[^\w\- ]", "", heading.lower())
        found.add(text.replace(" ", "-"))
    return found


def test_readme_is_at_most_12_kib() -> None:
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; reference material belongs in docs/"


def test_readme_names_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text


def test_docs_has_at_least_five_pages() -> None:
    assert len(PAGES) >= 5, [page.name for page in PAGES]


def test_readme_links_every_page() -> None:
    linked = set(LINK.findall(prose(README)))
    missing = [page.name for page in PAGES if f"docs/{page.name}" not in linked]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(d.relative_to(ROOT)) for d in DOCUMENTS])
def test_relative_links_point_at_existing_files(document: Path) -> None:
    broken = []
    for target in LINK.findall(INLINE_CODE.sub("", prose(document))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        path = (document.parent / file_part).resolve() if file_part else document
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif not path.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading with that anchor in {path.relative_to(ROOT)}")
    assert not broken, f"{document.relative_to(ROOT)}: {broken}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(d.relative_to(ROOT)) for d in DOCUMENTS])
def test_no_paths_outside_the_repository(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    outside = re.findall(r"(?<![\w.:/])/(?:work|tmp|home|root|Users)/[\w./-]+", text)
    assert not outside, f"{document.relative_to(ROOT)} points outside the repository: {outside}"


SETTINGS_PAGE = ROOT / "docs" / "deployment.md"
SETTING_ROW = re.compile(r"^\| `(NUDGE_[A-Z_]+)` \| (.+?) \|", re.M)


def test_every_setting_is_documented_with_its_default() -> None:
    rows = dict(SETTING_ROW.findall(SETTINGS_PAGE.read_text(encoding="utf-8")))
    problems = []
    for name, default in Settings().env().items():
        if name not in rows:
            problems.append(f"{name} is not in the settings table")
        elif (f"`{default}`" if default else "(empty)") != rows[name]:
            problems.append(f"{name}: the table says {rows[name]}, engine/config.py says {default!r}")
    unknown = sorted(set(rows) - set(Settings().env()))
    if unknown:
        problems.append(f"not settings of engine/config.py: {unknown}")
    assert not problems, problems


METRICS_PAGE = ROOT / "docs" / "operations.md"
METRIC_NAME = re.compile(r"`(nudge_[a-z_]+)(?:\{[^`]*\})?`")  # `nudge_x` or `nudge_x{labels}` in code
# Names that look like metrics in the docs but are not: a ClickHouse table.
NOT_METRICS = {"nudge_schema_migrations"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def defined_metrics() -> set[str]:
    return set(re.findall(r'"(nudge_[a-z_]+)"', (ROOT / "engine" / "metrics.py").read_text(encoding="utf-8")))


def test_every_metric_is_documented() -> None:
    text = METRICS_PAGE.read_text(encoding="utf-8")
    missing = sorted(name for name in defined_metrics() if f"`{name}`" not in text)
    assert not missing, f"metrics of engine/metrics.py missing from docs/operations.md: {missing}"


def test_documented_metrics_exist() -> None:
    defined = defined_metrics()
    unknown = set()
    for document in DOCUMENTS:
        for name in METRIC_NAME.findall(document.read_text(encoding="utf-8")):
            base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
            if name not in defined and base not in defined and name not in NOT_METRICS:
                unknown.add(f"{document.relative_to(ROOT)}: {name}")
    assert not unknown, sorted(unknown)


def test_every_alert_is_documented_and_has_a_runbook_entry() -> None:
    rules = yaml.safe_load((ROOT / "dashboards" / "alerts.yml").read_text(encoding="utf-8"))
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    text = METRICS_PAGE.read_text(encoding="utf-8")
    table = set(re.findall(r"^\| (Nudge[A-Za-z]+) \|", text, re.M))
    runbook = text.split("\n## Runbook\n", 1)[-1].split("\n## ", 1)[0]
    assert table == alerts, f"alert table of docs/operations.md vs dashboards/alerts.yml: {table ^ alerts}"
    missing = sorted(alert for alert in alerts if alert not in runbook)
    assert not missing, f"alerts without a runbook entry in docs/operations.md: {missing}"

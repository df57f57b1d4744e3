"""A real Prometheus (Debian's `prometheus` binary) for tests, configured like the compose stack.

Contract:
- `Prometheus(root, targets).start()` writes a config derived from deploy/prometheus.yml — the same job names
  and rule file (dashboards/alerts.yml) — with each job's service discovery replaced by static loopback
  `targets[job]`, a 1 s scrape and evaluation interval, and storage under `root`. It listens on a free
  loopback port (an `engine.testing.ChildProcess`); `start()` returns once `/-/ready` answers, or raises with
  Prometheus's log.
- `query(expr)` runs an instant query through the HTTP API and returns the `data` object; a query Prometheus
  rejects (parse error, bad type) raises `QueryError` with Prometheus's message.
- `stop()` terminates the process (SIGTERM, then SIGKILL after 5 s). Use it as a context manager.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from engine.devstack import free_port
from engine.testing import ChildFailed, ChildProcess

from .queries import ALERTS, ROOT

COMPOSE_CONFIG = ROOT / "deploy" / "prometheus.yml"


class QueryError(AssertionError):
    """Prometheus rejected a query."""


class Prometheus:
    def __init__(self, root: Path, targets: dict[str, list[str]], interval: str = "1s") -> None:
        self.root = root
        self.targets = targets
        self.interval = interval
        self.port = free_port()
        self.proc: ChildProcess | None = None
        self.log = root / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        config = yaml.safe_load(COMPOSE_CONFIG.read_text())
        config["global"] = {"scrape_interval": self.interval, "evaluation_interval": self.interval,
                            "scrape_timeout": self.interval}
        config["rule_files"] = [str(ALERTS)]
        jobs = []
        for job in config["scrape_configs"]:
            name = job["job_name"]
            if name not in self.targets:
                continue
            jobs.append({"job_name": name, "static_configs": [{"targets": self.targets[name]}]})
        unknown = set(self.targets) - {j["job_name"] for j in jobs}
        if unknown:
            raise ValueError(f"jobs {sorted(unknown)} are not in {COMPOSE_CONFIG}")
        config["scrape_configs"] = jobs
        return config

    def start(self, timeout_s: float = 20.0) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed; run: bash scripts/install-system.sh")
        self.root.mkdir(parents=True, exist_ok=True)
        config_path = self.root / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config()))
        cmd = [binary, f"--config.file={config_path}", f"--storage.tsdb.path={self.root / 'data'}",
               f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
               "--storage.tsdb.retention.time=1h"]
        self.proc = ChildProcess("prometheus", cmd, None, self.log).start()
        try:
            asyncio.run(self.proc.wait_until(self.ready, timeout_s, "/-/ready"))
        except ChildFailed as exc:
            self.stop()
            raise RuntimeError(f"prometheus did not become ready: {exc}") from None
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace_s=5)
            self.proc = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}") from None
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def series_count(self, expr: str) -> int:
        return len(self.query(expr)["result"])

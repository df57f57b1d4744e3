"""`nudge worker`: run one rule-evaluation worker (Faust) on the clickstream, configured by NUDGE_* vars."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from pathlib import Path
from typing import Any

from engine.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("worker", help="run a worker: evaluate rules on the clickstream, emit actions")
    parser.add_argument("--rules", type=Path, help="rules file or directory (default: NUDGE_RULES_PATH)")
    parser.add_argument("--web-port", type=int, help="port of /metrics (default: NUDGE_WEB_PORT)")
    parser.add_argument(
        "--watch", action="store_true",
        help="dev: deploy the rules files again whenever they change (as `nudge rules deploy` does)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start as many workers as there are partitions to share the load; they split partitions through the
    consumer group `NUDGE_APP_ID`. Stops cleanly on SIGINT/SIGTERM (offsets committed, producer flushed). Exit codes:
    0 stopped, 1 broker unreachable, port taken or topics not co-partitioned, 2 invalid or missing rules.
    """
    settings = Settings.from_env()
    if args.rules is not None:
        settings = settings.with_(rules_path=args.rules)
    if args.web_port is not None:
        settings = settings.with_(web_port=args.web_port)
    return run_worker(settings, watch=args.watch)


def preflight(settings: Settings) -> str | None:
    """What would make the worker fail at start-up, as a message for the user, or None."""
    hosts = [h for h in settings.broker_url.split("://", 1)[-1].split(",") if h]
    reachable = False
    for host in hosts:
        name, _, port = host.rpartition(":")
        with contextlib.suppress(OSError, ValueError), socket.create_connection((name, int(port)), timeout=3):
            reachable = True
            break
    if not reachable:
        return (
            f"cannot reach the broker at {settings.broker_url} (NUDGE_BROKER_URL); start it "
            "(`nudge dev-stack up` for the local one) or fix the URL"
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As aiohttp binds: reuse allowed over TIME_WAIT leftovers, refused while another process listens.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.web_host, settings.web_port))
        except OSError as exc:
            return (
                f"cannot serve /metrics on {settings.web_host}:{settings.web_port} ({exc.strerror}); "
                "give each worker on this host its own NUDGE_WEB_PORT"
            )
    return None


def prepare_topics(settings: Settings) -> str | None:
    """Create the co-partitioned inputs before Faust subscribes: a topic the broker auto-creates gets the
    broker's default partition count, and an `identity-handovers` (or `privacy-requests`) topic with fewer partitions
    than `clickstream` would send hand-overs (erasures) to partitions that do not hold the lead's state."""
    from engine.kafka import topics
    from engine.kafka.admin import TopicLayoutError, check_copartitioned, ensure_topics

    try:
        inputs = (topics.CLICKSTREAM, topics.IDENTITY_HANDOVERS, topics.PRIVACY_REQUESTS)
        counts = asyncio.run(ensure_topics(settings, (*inputs, topics.PRIVACY)))
        check_copartitioned({name: n for name, n in counts.items() if name != settings.topic(topics.PRIVACY)})
    except TopicLayoutError as exc:
        return str(exc)
    except Exception as exc:  # the broker refused the admin calls: say so instead of a traceback
        return f"cannot prepare topics on {settings.broker_url}: {type(exc).__name__}: {exc}"
    return None


def run_worker(settings: Settings, watch: bool = False) -> int:
    import functools

    from engine.config import ConfigError
    from engine.dispatch.config import catalogue
    from engine.language import RuleFileError, load_rules
    from engine.worker import rule_versions

    try:
        # The same check as `nudge rules validate`: every connector a rule names exists in the connectors file,
        # with the template it names (when the file is there; without it, the built-in connector types).
        names: dict[str, str] | None = None
        templates = None
        if settings.connectors_path.exists():
            found = catalogue(settings.connectors_path)
            names, templates = found.names, found.template_exists
        load = functools.partial(load_rules, known_connectors=names, template_exists=templates)
        rules = load([settings.rules_path])
    except ConfigError as exc:
        print(f"nudge worker: invalid connectors file: {exc}", file=sys.stderr)
        return 2
    except RuleFileError as exc:
        print(f"nudge worker: invalid rules: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"nudge worker: rules not found: {exc}; set NUDGE_RULES_PATH", file=sys.stderr)
        return 2
    problem = preflight(settings)
    if problem is not None:
        print(f"nudge worker: {problem}", file=sys.stderr)
        return 1
    problem = prepare_topics(settings)
    if problem is not None:
        print(f"nudge worker: {problem}", file=sys.stderr)
        return 1
    # The latest deployed rule set, when there is one, wins over the files (they are the initial version only).
    try:
        history = asyncio.run(rule_versions.read_log(settings))
    except Exception as exc:
        print(f"nudge worker: cannot read the deployed rule sets: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    source = "files"
    if history.latest is not None:
        try:
            rules = rule_versions.compile_deploy(history.latest, load)
        except RuleFileError as exc:
            print(f"nudge worker: the deployed rule set {history.latest.version} is invalid here: {exc}",
                  file=sys.stderr)
            return 2
        source = "deploy"
    versions = rule_versions.RuleVersions(load, history.next_offset, source)

    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # optional speed-up; the asyncio loop works too
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())

    import faust

    from engine.worker.app import create_app
    from engine.worker.faust_ext.broker_profiles import install_broker_workarounds
    from engine.worker.gc_tuning import tune_collector
    from engine.worker.lead_worker import LeadWorker

    install_broker_workarounds(settings)
    tune_collector()

    settings.state_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level (its datadir)
    nudge = create_app(settings)
    LeadWorker(nudge, settings, rules, versions).attach()
    if watch:
        nudge.app.task(functools.partial(watch_rules, settings, load, rules.version))
    worker = faust.Worker(
        nudge.app,
        loglevel=settings.log_level.upper(),
        quiet=True,  # no start-up spinner: it leaves the root logger at DEBUG, which formats every log call
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
    return 0


WATCH_INTERVAL_S = 1.0


async def watch_rules(settings: Settings, load: Any, version: str) -> None:
    """`nudge worker --watch`: every second, when a rules file under NUDGE_RULES_PATH changed, validate the files as
    `nudge rules deploy` does and deploy them (author `<user> (watch)`): the worker, and every other worker of the
    app, switches through the `rules` topic exactly as for a deploy. Invalid files are reported in the log and
    change nothing."""
    from engine.language import RuleFileError, rule_files
    from engine.worker import rule_versions

    log = logging.getLogger("nudge.watch")

    def fingerprint() -> tuple[tuple[str, int, int], ...]:
        found = []
        for path in rule_files([settings.rules_path]) if settings.rules_path.exists() else []:
            with contextlib.suppress(OSError):
                stat = path.stat()
                found.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(found)

    seen = fingerprint()
    while True:
        await asyncio.sleep(WATCH_INTERVAL_S)
        now = fingerprint()
        if now == seen:
            continue
        seen = now
        try:
            rules = await asyncio.to_thread(load, [settings.rules_path])
        except RuleFileError as exc:
            log.error("rules changed but are invalid, not deployed:\n%s", "\n".join(str(p) for p in exc.problems))
            continue
        except OSError as exc:
            log.error("rules changed but cannot be read: %s", exc)
            continue
        if rules.version == version:
            continue
        version = rules.version
        deploy = rule_versions.snapshot(
            rule_files([settings.rules_path]), rules, f"{rule_versions.author_name()} (watch)", "nudge worker --watch"
        )
        try:
            await rule_versions.publish(settings, deploy.key, deploy.to_bytes())
            log.info("rules changed: deployed version %s", deploy.version)
        except Exception:
            log.exception("could not deploy the changed rules")

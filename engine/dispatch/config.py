"""The connectors file (`connectors.yaml`): which connectors exist, their options, and the delivery policies.
Loading only: nothing is connected here."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.base import ConnectorConfig, is_dev_profile
from connectors.registry import connector_class, known_types
from connectors.rendering import BUILTIN_TEMPLATES, has_template
from engine.config import ConfigError, Settings
from engine.dispatch.policies.caps import CapRule, PositiveSeconds
from engine.dispatch.policies.circuit import CircuitConfig
from engine.dispatch.policies.consent import ConsentConfig
from engine.dispatch.policies.idempotency import IdempotencyConfig
from engine.dispatch.policies.quiet_hours import QuietHoursConfig, zone
from engine.dispatch.policies.recheck import RecheckConfig
from engine.dispatch.policies.retry import RetryConfig

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MIN_SIGNING_SECRET_BYTES = 32


class RecipientCap(BaseModel):
    """`policies.default_recipient_cap`: at most `max` marketing messages to one address per `per`, across every
    lead id, on each connector that writes to an address the lead gave (email), unless a `scope: recipient` cap
    names that connector (or `*`)."""

    model_config = ConfigDict(extra="forbid")

    max: int = Field(3, ge=1)
    per: PositiveSeconds = Field(86400.0, description="period, e.g. 1d")


class PoliciesConfig(BaseModel):
    """`policies:`: idempotency TTLs, caps, quiet hours, consent and the default timezone."""

    model_config = ConfigDict(extra="forbid")

    idempotency: IdempotencyConfig = Field(default_factory=IdempotencyConfig)
    caps: list[CapRule] = Field(default_factory=list)
    quiet_hours: QuietHoursConfig | None = None
    consent: ConsentConfig = Field(default_factory=ConsentConfig)
    default_timezone: str | None = Field(None, description="overrides NUDGE_DEFAULT_TIMEZONE for quiet hours")
    default_recipient_cap: RecipientCap | None = Field(
        default_factory=RecipientCap, description="per-address cap on email connectors; null turns it off"
    )
    recheck: RecheckConfig = Field(default_factory=RecheckConfig)


class DispatcherConfig(BaseModel):
    """`dispatcher:`: in-flight bound (backpressure), commit and schedule polling intervals."""

    model_config = ConfigDict(extra="forbid")

    max_inflight: int = Field(
        500, ge=1, description="actions being handled at once (backpressure on the consumer)"
    )
    commit_interval_s: float = Field(1.0, gt=0)
    schedule_poll_s: float = Field(
        0.25, gt=0, description="how often due deferred/retry entries are picked up"
    )
    schedule_batch: int = Field(200, ge=1)
    session_timeout_ms: int | None = Field(None, ge=1000, description="consumer group session timeout")


class DeliveryOptions(BaseModel):
    """A connector's delivery policy (its `retry:` and `circuit:` options), applied by the dispatcher."""

    model_config = ConfigDict(extra="forbid")

    retry: RetryConfig = Field(default_factory=RetryConfig)
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)


DELIVERY_KEYS = tuple(DeliveryOptions.model_fields)


@dataclass
class ConnectorsFile:
    """A validated connectors file; `secret_values()` lists every secret for the redactor."""

    path: Path | None
    connectors: dict[str, ConnectorConfig]
    policies: PoliciesConfig = field(default_factory=PoliciesConfig)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    templates_dir: Path | None = None
    delivery: dict[str, DeliveryOptions] = field(default_factory=dict)  # by connector name; default when absent

    def delivery_for(self, name: str) -> DeliveryOptions:
        return self.delivery.get(name) or DeliveryOptions()

    def secret_values(self) -> list[str]:
        return [s for config in self.connectors.values() for s in config.secret_values()]

    def effective_caps(self) -> list[CapRule]:
        """`policies.caps`, plus the default per-recipient cap (`policies.default_recipient_cap`) for each
        connector whose type gets one by default (email) and that no `scope: recipient` cap names (by name or
        `*`)."""
        caps = list(self.policies.caps)
        default = self.policies.default_recipient_cap
        if default is None:
            return caps
        covered = {c.connector for c in caps if c.scope == "recipient"}
        for name, config in self.connectors.items():
            if "*" in covered or name in covered:
                continue
            if connector_class(config.type).recipient_capped_by_default:
                caps.append(CapRule(connector=name, max=default.max, per=default.per, scope="recipient"))
        return caps


class _Located:
    """Line numbers of the YAML nodes, by dotted path, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        try:
            root = yaml.compose(text)
        except yaml.YAMLError:
            return
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self.lines[(*path, key.value)] = key.start_mark.line + 1
                self._walk(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for index, value in enumerate(node.value):
                self._walk(value, (*path, index))

    def line(self, path: tuple[Any, ...]) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def _where(source: str, located: _Located, path: tuple[Any, ...]) -> str:
    line = located.line(path)
    dotted = ".".join(str(p) for p in path) or "(top level)"
    return f"{source}{f':{line}' if line else ''}: {dotted}"


def _substitute(value: Any, env: dict[str, str], path: tuple[Any, ...], fail: Any, seen: set[Any]) -> Any:
    """Replace `${VAR}`s; `seen` collects the paths whose value came from the environment (never echoed)."""
    if isinstance(value, dict):
        return {k: _substitute(v, env, (*path, k), fail, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env, (*path, i), fail, seen) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    if _VAR.search(value):
        seen.add(path)

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        fail(
            path,
            f"environment variable {name} is not set; export it, or write ${{{name}:-default}} in the file",
        )
        return ""

    return _VAR.sub(replace, value)


def parse_connectors(
    text: str,
    env: dict[str, str] | None = None,
    source: str = "connectors.yaml",
    base_dir: Path | None = None,
) -> ConnectorsFile:
    """Validate the text of a connectors file (`source` names it in messages; `base_dir` resolves a relative
    `templates_dir`).

    Shape: `templates_dir` (optional), `defaults` (options merged into every connector), `connectors` (name →
    options with `type`, which picks the connector module and its config model), `policies` (`idempotency`,
    `caps`, `quiet_hours`, `consent`, `default_timezone`) and `dispatcher` (tuning). A connector's `retry` and
    `circuit` options are delivery policy: they go to `ConnectorsFile.delivery` and never reach the connector.
    `${VAR}` / `${VAR:-default}` in any string value is taken from `env` (default: the process environment), so
    secrets stay out of the file.

    Outside the dev profile (`NUDGE_BROKER_PROFILE` in `env` other than `dev`/`dev-batched`), a signing key
    (`Connector.signing_secrets`: a webhook's `secret`, an email connector's `unsubscribe_secret`) shorter than
    32 bytes is an error.

    Raises `ConfigError` for every problem, naming the file, the line, the dotted path of the value, what is
    wrong and how to fix it; an unset variable without a default is named. Secret values never appear in these
    messages.
    """
    env = dict(os.environ if env is None else env)
    located = _Located(text)

    def fail(path: tuple[Any, ...], message: str) -> None:
        raise ConfigError(f"{_where(source, located, path)}: {message}")

    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        fail((), "the file must be a mapping with a `connectors` key")
    unknown = set(raw) - {"templates_dir", "defaults", "connectors", "policies", "dispatcher"}
    if unknown:
        fail(
            (sorted(unknown)[0],),
            "unknown key; allowed: templates_dir, defaults, connectors, policies, dispatcher",
        )
    from_env: set[Any] = set()
    raw = _substitute(raw, env, (), fail, from_env)
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        fail(("defaults",), "must be a mapping of options applied to every connector")
    entries = raw.get("connectors") or {}
    if not isinstance(entries, dict):
        fail(("connectors",), "must be a mapping: connector name → options with a `type`")

    connectors: dict[str, ConnectorConfig] = {}
    delivery: dict[str, DeliveryOptions] = {}
    for name, options in entries.items():
        path = ("connectors", name)
        if not isinstance(options, dict):
            fail(path, "must be a mapping of options with a `type`")
        kind = options.get("type")
        if kind not in known_types():
            fail((*path, "type"), f"unknown connector type {kind!r}; use one of {', '.join(known_types())}")
        merged = {**defaults, **options}
        policy = {key: merged.pop(key) for key in DELIVERY_KEYS if key in merged}
        connectors[str(name)] = _validate(connector_class(kind).config_model, merged, path, fail, from_env)
        delivery[str(name)] = _validate(DeliveryOptions, policy, path, fail, from_env)

    policies = _validate(PoliciesConfig, raw.get("policies") or {}, ("policies",), fail, from_env)
    dispatcher = _validate(DispatcherConfig, raw.get("dispatcher") or {}, ("dispatcher",), fail, from_env)
    if policies.default_timezone and zone(policies.default_timezone) is None:
        fail(("policies", "default_timezone"), "unknown timezone; use an IANA name like Europe/Paris")
    claim_ttl = policies.idempotency.claim_ttl_s
    for name, config in connectors.items():
        if config.timeout_s >= claim_ttl:
            fail(
                ("connectors", name, "timeout_s"),
                f"must be shorter than policies.idempotency.claim_ttl_s ({claim_ttl:g} s), or a slow send "
                "could be claimed and sent a second time while the first is still in flight",
            )
    profile = env.get("NUDGE_BROKER_PROFILE") or "kafka"
    if not is_dev_profile(profile):
        for name, config in connectors.items():
            for option in connector_class(config.type).signing_secrets:
                secret = getattr(config, option, None)
                value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret
                # Whether a key is required at all is checked when the dispatcher starts (`startup_problems`).
                if value and len(str(value).encode()) < MIN_SIGNING_SECRET_BYTES:
                    fail(
                        ("connectors", name, option),
                        f"a signing key must be at least {MIN_SIGNING_SECRET_BYTES} bytes outside the dev profile "
                        f"(NUDGE_BROKER_PROFILE={profile}); generate one with `openssl rand -hex 32`",
                    )
    templates_dir = raw.get("templates_dir")
    if templates_dir:
        templates_dir = Path(templates_dir)
        if not templates_dir.is_absolute() and base_dir is not None:
            templates_dir = base_dir / templates_dir
        if not templates_dir.is_dir():
            fail(("templates_dir",), f"{templates_dir} is not a directory")
    return ConnectorsFile(None, connectors, policies, dispatcher, templates_dir, delivery)


def _validate(model: type[BaseModel], data: Any, path: tuple[Any, ...], fail: Any, from_env: set[Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = (*path, *error["loc"])
        message = error["msg"]
        # Echo the rejected value only when it is short, written in the file (not taken from the environment;
        # `defaults` are validated under each connector, hence the match by key name) and not secret-looking.
        env_keys = {p[-1] for p in from_env if p}
        secretish = loc[-1] in env_keys or any(
            s in str(p).lower() for p in loc for s in ("password", "token", "secret", "url", "header")
        )
        given = error.get("input")
        if not secretish and isinstance(given, str | int | float) and len(str(given)) < 60:
            message += f" (got {given!r})"
        fail(loc, message)


def load_connectors(path: Path | str, env: dict[str, str] | None = None) -> ConnectorsFile:
    """`parse_connectors` of the file at `path`; an unreadable file is a `ConfigError` too."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the connectors file {path}: {exc.strerror}; "
            "set NUDGE_CONNECTORS_PATH to its location"
        ) from None
    loaded = parse_connectors(text, env, source=str(path), base_dir=path.parent)
    loaded.path = path
    return loaded


# --- what the rule validator and the dispatcher's start-up ask of a connectors file


def connector_types(connectors_file: ConnectorsFile) -> dict[str, str]:
    """Connector name → type, for every connector the file defines: the names rules may use in `connector:`."""
    return {name: config.type for name, config in connectors_file.connectors.items()}


def uses_templates(connectors_file: ConnectorsFile, connector_name: str) -> bool:
    """Whether the connector's type renders a template (email, Slack); an unknown name is False."""
    config = connectors_file.connectors.get(connector_name)
    return config is not None and connector_class(config.type).template_family is not None


def template_exists(connectors_file: ConnectorsFile, connector_name: str, template: str | None) -> bool:
    """Whether an action naming `connector_name` and `template` can be rendered: every file of that template for
    the connector's type (`email/<t>.subject.j2`, `.txt.j2`, `.html.j2`; `slack/<t>.md.j2`) exists in the file's
    `templates_dir` or the built-in templates. `template` None means `default`. True for a type that renders no
    template (webhook, kafka, redis, crm, log: the name is ignored); False for a connector the file does not
    define. The dispatcher fails an action whose template does not exist (`unknown_template`), so a rule set that
    passes this check never does."""
    config = connectors_file.connectors.get(connector_name)
    if config is None:
        return False
    family = connector_class(config.type).template_family
    if family is None:
        return True
    dirs = [d for d in (connectors_file.templates_dir, BUILTIN_TEMPLATES) if d is not None]
    return has_template(dirs, family, template)


def startup_problems(connectors_file: ConnectorsFile, settings: Settings) -> list[str]:
    """What keeps the dispatcher from starting with this file and these settings (`Connector.startup_problems`:
    outside the dev profile, marketing email without `unsubscribe_secret` or without an https unsubscribe base
    URL), one message each, prefixed with the file's path. `nudge dispatch` and `--check` refuse to start on any."""
    source = str(connectors_file.path) if connectors_file.path else "connectors file"
    return [
        f"{source}: {problem}"
        for name, config in connectors_file.connectors.items()
        for problem in connector_class(config.type).startup_problems(name, config, settings)
    ]


# --- what a connectors file offers rules (the rule validator and the worker's start-up check) -------------------
# Secrets are not needed for that: unset `${VAR}`s are read as placeholders.

_UNSET_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # a required variable (no `:-default`)
PLACEHOLDER = "https://placeholder.invalid/validation-only-" + "0" * 32


@dataclass(frozen=True)
class ConnectorCatalogue:
    """What a connectors file offers rules: `names` (connector name → type) and `template_exists`."""

    names: dict[str, str]
    template_exists: Callable[[str, str | None], bool]


def catalogue(path: Path) -> ConnectorCatalogue:
    """Read `path` (raises `ConfigError` naming file, line and value when it is invalid)."""
    text = path.read_text()
    env = dict(os.environ)
    for name in _UNSET_VAR.findall(text):
        env.setdefault(name, PLACEHOLDER)  # a secret or URL only the dispatcher needs
    env.setdefault("NUDGE_BROKER_PROFILE", "dev")  # length rules on secrets are the dispatcher's to enforce
    loaded = load_connectors(path, env=env)
    return ConnectorCatalogue(
        connector_types(loaded), lambda connector, template: template_exists(loaded, connector, template)
    )

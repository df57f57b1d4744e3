"""Who may say what about a lead: the write key's kind, the signed user hash, and what an untrusted event may carry.

A browser (client) write key is public: every visitor of the shop holds it and controls every field of an event.
So the collector marks each event with what its sender proved (`context.nudge`) and keeps what a visitor could
abuse out of the fields that lead somewhere (an email address, a phone number, consent); merges are guarded by
`engine.collector.identity`. The model is documented in docs/collector.md, "Trust model".
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Iterable
from enum import Enum
from typing import Any

from engine.config import ConfigError
from engine.events import TRUST_MARKER, Event

# Where a client sends the signed user hash: `context.userHash` (every SDK lets the caller add context fields).
USER_HASH_FIELD = "userHash"
# Traits that direct a message or decide whether one may be sent: an untrusted event never sets them. Compared
# without case, `_` or `-`, so `E-mail`, `marketing_consent` and `marketingConsent` are all caught.
PROTECTED_TRAITS = frozenset({"email", "phone", "consent", "marketingconsent", "unsubscribed"})
# Where they go instead: a nested object, which the worker's lead view does not keep (it keeps scalar traits),
# so no connector can ever read them, while the record and the sink still show what the visitor typed.
UNVERIFIED = "unverified"
MIN_SECRET_LENGTH = 32


class Auth(Enum):
    """What a request (or one event of it) proved about its sender, as written to `context.nudge.auth`."""

    SERVER = "server"  # a server write key: the shop's back end speaks
    USER_HASH = "user_hash"  # a browser key and a valid user hash for the event's userId: that user speaks
    CLIENT = "client"  # a browser key alone: anyone may have sent it


def _trait_name(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def is_protected(name: Any) -> bool:
    return isinstance(name, str) and _trait_name(name) in PROTECTED_TRAITS


class UserHashes:
    """Verifies `context.userHash`: the lowercase hex HMAC-SHA256 of the event's `userId` (UTF-8) under one of the
    configured secrets (several while a secret is being rotated), computed by the shop's back end and put in its
    pages. Without a secret nothing verifies and every browser event is `Auth.CLIENT`. A secret shorter than
    `MIN_SECRET_LENGTH` characters raises `ConfigError`. Comparison is in constant time."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(s.encode() for s in secrets if s)
        short = [s for s in self._secrets if len(s) < MIN_SECRET_LENGTH]
        if short:
            raise ConfigError(
                f"NUDGE_USER_HASH_SECRET: every secret must be at least {MIN_SECRET_LENGTH} characters "
                "(e.g. `openssl rand -hex 32`)"
            )

    @property
    def enabled(self) -> bool:
        return bool(self._secrets)

    @staticmethod
    def sign(secret: str, user_id: str) -> str:
        """The user hash the shop's back end computes (what the docs show in other languages)."""
        return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()

    def verify(self, user_id: str | None, given: Any) -> bool:
        if not self._secrets or not user_id or not isinstance(given, str) or len(given) != 64:
            return False
        candidate = given.lower().encode()
        expected = [hmac.new(s, user_id.encode(), hashlib.sha256).hexdigest().encode() for s in self._secrets]
        return any([hmac.compare_digest(candidate, e) for e in expected])


@dataclasses.dataclass(frozen=True, slots=True)
class Marked:
    """One event as the collector writes it, and what marking it found (for the metrics)."""

    event: Event
    auth: Auth
    bad_user_hash: bool  # a hash was sent and did not verify
    traits_moved: bool  # protected traits were moved under `traits.unverified`


def mark(event: Event, request_auth: Auth, hashes: UserHashes) -> Marked:
    """`event` marked with what its sender proved, with the rules of an untrusted event applied.

    - `context.userHash` is taken out of the event (it is a credential for that user: it must not sit in Kafka
      and ClickHouse) and verified against the event's `userId` when the request came with a browser key.
    - `context.nudge` is replaced by `{"trusted": bool, "auth": "server" | "user_hash" | "client"}`, whatever the
      client sent there; `Event.trusted` follows it.
    - An untrusted event (`client`) keeps no protected trait (email, phone, consent, marketing consent,
      unsubscribed) in `traits` or `context.traits`: they move to `traits.unverified` (resp.
      `context.traits.unverified`; an `unverified` object the client sent itself is kept in it).
    """
    context = dict(event.context)
    given = context.pop(USER_HASH_FIELD, None)
    auth = request_auth
    bad_hash = False
    if request_auth is Auth.CLIENT and given is not None:
        if hashes.verify(event.user_id, given):
            auth = Auth.USER_HASH
        else:
            bad_hash = True
    trusted = auth is not Auth.CLIENT
    context[TRUST_MARKER] = {"trusted": trusted, "auth": auth.value}
    traits = event.traits
    moved = False
    if not trusted:
        traits, moved_here = _without_protected(traits)
        context_traits = context.get("traits")
        if isinstance(context_traits, dict):
            context["traits"], moved_there = _without_protected(context_traits)
            moved = moved_here or moved_there
        else:
            moved = moved_here
    marked = dataclasses.replace(event, context=context, traits=traits, trusted=trusted)
    return Marked(marked, auth, bad_hash, moved)


def _without_protected(traits: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    if not any(is_protected(name) for name in traits):
        return traits, False
    kept = {k: v for k, v in traits.items() if not is_protected(k)}
    earlier = kept.get(UNVERIFIED)
    moved = {k: v for k, v in traits.items() if is_protected(k)}
    kept[UNVERIFIED] = {**(earlier if isinstance(earlier, dict) else {}), **moved}
    return kept, True

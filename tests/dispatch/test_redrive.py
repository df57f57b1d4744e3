"""`nudge dead-letters redrive`: which dead letters it picks, and re-driven actions delivered once (real process)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from engine.cli import main
from engine.dispatch.redrive import RedriveSelection, action_of, parse_since
from engine.kafka.topics import dead_letter_record
from engine.testing import PeerRequest, wait_until
from tests.connectors.helpers import make_action
from tests.dispatch.rig import DispatchRig

NOW_MS = 1_767_607_200_000  # 2026-01-05T10:00:00Z


def letter(payload: bytes | str | None, at_ms: int = NOW_MS, source: str = "dispatcher") -> object:
    return orjson.loads(
        dead_letter_record(source=source, reason="retries_exhausted", detail="", payload=payload, at_ms=at_ms)
    )


def test_since_is_a_duration_back_from_now_or_an_iso_date() -> None:
    assert parse_since("90m", NOW_MS) == NOW_MS - 90 * 60_000
    assert parse_since("1d", NOW_MS) == NOW_MS - 86_400_000
    assert parse_since("2026-01-05T10:00:00Z", 0) == NOW_MS
    assert parse_since("2026-01-05T11:00:00+01:00", 0) == NOW_MS
    assert parse_since("2026-01-05", 0) == NOW_MS - 10 * 3_600_000  # a date is midnight UTC
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("last tuesday", NOW_MS)


def test_only_the_dispatchers_letters_of_actions_are_picked_each_id_once() -> None:
    a, b = make_action("webhook", rule="a"), make_action("webhook", rule="b")
    letters = [
        letter(a.to_bytes()),
        letter(b.to_bytes(), at_ms=NOW_MS - 3_600_000),
        letter(a.to_bytes(), at_ms=NOW_MS + 1),  # re-driven and dead-lettered again: still one re-drive
        letter(b"not json at all"),  # an `actions` record the dispatcher could not read
        letter(b'{"action_id": "x"}'),
        letter(a.to_bytes(), source="worker"),
        letter(None),
    ]
    assert action_of(letters[0]) == a
    assert action_of(letter(base64.b64decode(base64.b64encode(b"\xff")))) is None
    assert [x.action_id for x in RedriveSelection().select(letters)] == [a.action_id, b.action_id]
    assert RedriveSelection(rule="b").select(letters) == [b]
    assert RedriveSelection(since_ms=NOW_MS - 60_000).select(letters) == [a]
    assert RedriveSelection(until_ms=NOW_MS - 60_000).select(letters) == [b]


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["dead-letters"], ["dead-letters", "redrive", "--since", "soon"], ["dead-letters", "redrive", "-x"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    assert "neither a duration" in capsys.readouterr().err


@pytest.mark.integration
async def test_redriven_dead_letters_are_delivered_once(rig: DispatchRig, tmp_path: Path) -> None:
    broken, accepted = True, []

    def respond(_request: web.Request, recorded: PeerRequest) -> tuple[int, dict[str, str], str]:
        if broken:
            return (503, {}, "down")
        accepted.append(recorded.headers["X-Nudge-Action-Id"])
        return (200, {}, "ok")

    peer = await rig.peer(respond=respond)
    await rig.start_dispatcher(f"connectors:\n  hook: {{type: webhook, url: {peer.url}/hook}}\n")
    cart = [make_action("hook", rule="cart") for _ in range(6)]
    browse = [make_action("hook", rule="browse") for _ in range(4)]
    await rig.produce(cart + browse)
    # FAST_DEFAULTS: 4 attempts 50 ms apart, then a dead letter each.
    await wait_until(lambda: len(rig.dead_letters.docs()) == 10, timeout_s=20, what="ten dead letters")
    broken = False

    async def redrive(*args: str) -> str:
        log = tmp_path / "redrive.log"
        command = rig.process("nudge dead-letters redrive", ["dead-letters", "redrive", *args], log)
        command.start()
        await command.wait_until(lambda: command.returncode is not None, 60, "the command to finish")
        assert command.returncode == 0, command.log_tail()
        return command.log_text()

    assert "re-drove 0 actions" in await redrive("--since", "2999-01-01")
    assert "re-drove 6 actions" in await redrive("--rule", "cart", "--since", "1h")
    await wait_until(lambda: len(accepted) == 6, timeout_s=20, what="the six cart actions")
    # Everything now: the cart actions again (already delivered: the claims say so) and the browse ones.
    assert "re-drove 10 actions" in await redrive()
    await wait_until(lambda: len(accepted) == 10, timeout_s=20, what="the four browse actions")
    await wait_until(lambda: len(rig.deliveries.where(outcome="duplicate")) == 6, what="six duplicates")
    await asyncio.sleep(0.5)  # a late second copy would land here
    assert sorted(accepted) == sorted(a.action_id for a in cart + browse)
    assert len(rig.dead_letters.docs()) == 10  # nothing failed again

"""`LeadWorker`: the Faust shell of `nudge worker`. It feeds clickstream events, identity hand-overs and deadline
ticks through the pure core (`engine.core.evaluate`) and writes what the core returns; it only moves bytes. One
module because the batch path, the deadline timer and the hand-overs share one lock and one output."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
from faust.types import TP, Message

from engine import metrics
from engine.config import Settings
from engine.core import LeadState, RuleSet, pending_deadlines
from engine.core.model import Action, Tick
from engine.events import Event, InvalidEvent, parse_event
from engine.kafka.partitioner import default_partition
from engine.kafka.topics import dead_letter_record
from engine.privacy.records import CLEAR_SUPPRESSED, ERASE, BadPrivacyRecord, Receipt, WorkerRequest
from engine.worker import rule_versions, stored_lead
from engine.worker.app import NudgeApp
from engine.worker.deadlines import DeadlineIndex, EventClock, wall_ms
from engine.worker.faust_ext.batched_input import WorkerInput
from engine.worker.faust_ext.batched_output import OutputBatch, TableWriter
from engine.worker.faust_ext.private_state import recovered_partitions
from engine.worker.gc_tuning import collector_paused
from engine.worker.handovers import (
    BadHandoverRecord,
    HandoverRecord,
    MergeIn,
    handover_record,
    merge_record,
    parse_handover_record,
)
from engine.worker.lead_inputs import InPlaceFailed, Input, LeadEvaluator
from engine.worker.rule_versions import Deploy, RuleVersions, WorkerStatus
from engine.worker.table_figures import TableFigures

log = logging.getLogger(__name__)


STATS_INTERVAL_S = 5.0  # how often gauges that need a scan of the table are refreshed
RULES_STATUS_INTERVAL_S = 30.0  # how often the worker's rule-set status record is published again (`at_ms`)
MAX_TICKS_PER_ROUND = 20_000  # bounds one timer round so a backlog of deadlines cannot stall the event loop
TICKS_PER_CHUNK = 500  # deadlines evaluated per hold of the state lock
YIELD_EVERY_LEADS = 500  # leads evaluated between two turns of the event loop inside one batch
IDLE_SWEEP_MAX_INTERVAL_S = 3600.0  # how often at most the table is swept for idle leads (NUDGE_LEAD_IDLE_DAYS)
# The (event, reason) series of nudge_journey_events_total created for each journey at start (0, not "no data").
JOURNEY_SERIES = (
    ("entered", ""), ("reached", ""), ("completed", ""), ("goal", ""),
    ("exited", "exit_on"), ("exited", "step_removed"), ("exited", "loop_guard"),
)  # fmt: skip
IDLE_SWEEP_CHUNK = 2000  # entries examined per hold of the state lock


def _rules_stamp(version: str) -> bytes:
    """What replaces the closing brace of an action's JSON: its `rules_version` field and the brace."""
    return b',"rules_version":' + orjson.dumps(version) + b"}"


class BadInput(Exception):
    """One input record the worker rejects; becomes a dead letter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _key_text(key: Any) -> str | None:
    if key is None:
        return None
    if isinstance(key, bytes):
        return key.decode("utf-8", errors="replace")
    return str(key)


class LeadWorker:
    """Attaches the input loop, the deadline timer, `/metrics` and the recovery hook to a `NudgeApp` (`attach()`).

    Input: `clickstream` records (key = lead id, value = Segment JSON) and `identity-handovers` records
    (`engine.worker.handovers`), taken from Faust's consumer in batches of up to `settings.batch_size` by
    `WorkerInput` (no Faust stream per record).

    Ordering: within a batch, inputs are grouped by lead, each lead's in arrival order; each lead's state is
    read once, its inputs are evaluated in order and its new state is written once (one changelog record per
    lead per batch, none when unchanged). The state lock orders the batch path, the deadline timer and the
    hand-overs: only one of them changes lead state at a time, so none loses another's update while it awaits a
    send.

    Commit: everything a batch produces (changelog, actions, lead updates, hand-over records, dead letters) goes
    out through one `OutputBatch` and is acknowledged by the broker, the changelog last, before the batch counts as
    processed (`WorkerInput.processed` with the batch's `handed_out()` snapshot). The next batch is evaluated
    while that output is on its way (flushes never overlap, see `OutputBatch`), so the worker does not idle
    through the acknowledgement round trips. The worker commits processed input offsets itself every
    `broker_commit_interval` and when partitions are revoked (after the output on its way is acknowledged).
    At-least-once, without doubles: a crash replays the input since the last commit; each stored state carries
    the offsets it already reflects (`stored_lead.Applied`), so a replayed record is skipped for a lead whose
    state has it, and is applied again for a lead whose new state never reached the changelog, re-firing the
    same actions with the same deterministic `action_id` (the dispatcher delivers each id once). Because the
    changelog goes out after the actions, no stored state can reflect an action that was never sent.

    Back-pressure: one batch evaluated at a time and at most one batch's output unacknowledged; meanwhile the
    input queue fills and Faust pauses fetching.
    The loop yields to the event loop every `YIELD_EVERY_LEADS` leads so fetching and heartbeats go on.

    Errors: invalid input never stops the worker. Unparseable events, records whose key is not the event's lead
    id, hand-over records that are not ours and inputs the core raises on go to `dead-letters` with a reason
    code and are counted in `DEAD_LETTERS` (an input the core raises on is dropped alone: the lead is redone on
    copies). A stored state that cannot be decoded is dead-lettered too and the lead starts afresh. Anything
    else escaping the input loop is a bug: the app crashes rather than skip input.

    Deadlines: every `settings.timer_interval_s`, and after each batch for the clocks it moved. Each partition this
    worker owns has its own event-time clock (`EventClock`) and `DeadlineIndex`: a partition that lags (a backlog
    after a restart, a slow producer) must not see its deadlines fired by another partition's later event times, or
    an event that cancels a deadline would lose the race it wins in a replay. A partition's clock runs on wall time
    only while the partition is caught up (`_refresh_caught_up`: everything below the highwater of the consumer's
    last fetch is processed); until then only its events move it, so after an assignment no deadline fires ahead of
    input that is already in Kafka. An event moves the clock at most to its `receivedAt` (the collector's clock;
    `NUDGE_MAX_CLOCK_SKEW_S` past the worker's wall clock for events produced without one): a device clock running
    ahead cannot fire other leads' deadlines early. Due leads are evaluated with `Tick(watermark)` right here, under
    the lock, and their state written to the partition that holds them: no Kafka round trip per firing. A repeated
    tick is harmless (the core fires only deadlines still pending in the state, and removes them as it fires). After
    a rebalance or restart the indexes are rebuilt from the recovered table for the owned partitions, so each
    pending deadline fires once.

    Identity hand-overs: an `identify` with both `userId` and `anonymousId`, or an `alias` (`previousId` →
    `userId`), is evaluated for the known lead as usual; then the anonymous lead's state must move to the known
    lead. When this worker owns the anonymous lead's partition and that partition's clock has passed the
    identifying event, it is done in place at the end of the batch (`_hand_over`). Otherwise a hand-over record
    goes to the anonymous lead's partition; there the state is deleted and sent on in a merge record to the known
    lead's partition, which folds it in (`LeadState.merge`) and re-indexes its deadlines: an anonymous cart's
    abandonment then fires once, for the identified lead. Events of the anonymous id still in flight stay with
    the anonymous lead (the collector re-keys later ones). A crash between sending a merge and committing can
    merge twice. Counted in `HANDOVERS`.

    Privacy (`engine.privacy.records`, docs/privacy.md): `privacy-requests` records are read by the same input,
    co-partitioned with `clickstream` and keyed by lead id, so each is handled in order with the lead's events by
    the worker that owns its state, at its place among the lead's inputs of the batch. `erase` deletes the lead's
    table entry (a tombstone in the changelog; with `suppress`, a marker value without any state instead) and its
    pending deadlines; `suppress` flags the stored value and drops the deadlines; `unsuppress` clears the flag.
    The stored value of a suppressed lead says so (`stored_lead.Stored.suppressed`), read where the state is read
    anyway: its later events, hand-overs and merges are dropped and counted (`PRIVACY_DROPPED_EVENTS`), never
    evaluated, stored or dead-lettered, and survive restarts through the changelog. Each request is answered
    with a `Receipt` on `privacy`, sent with the changelog after everything else the batch produced (the
    receipt says the lead's earlier actions are out). Requests are idempotent and not offset-tracked: a replay
    after a crash applies them again and answers again. Leads with no write for `NUDGE_LEAD_IDLE_DAYS` and no
    pending deadline are tombstoned by a periodic sweep (`_drop_idle`), so the table stays bounded.

    Rule deploys (`engine.worker.rule_versions`, docs/worker.md#rule-deploys): with `versions`, a task follows the
    `rules` topic; a new deploy is compiled off the state lock and becomes `pending`; the switch happens under the
    state lock at the next batch boundary (before a batch is evaluated, or at the timer's next round), so every input
    is evaluated with exactly one version, none twice: the batch path and the timer switch before they evaluate.
    The deadline indexes are rebuilt for the new rules (a removed or edited rule's pending deadlines are dropped:
    the core drops their slots at the lead's next evaluation), the actions the new version fires carry its
    `rules_version`, and a `WorkerStatus` names, per owned clickstream partition, the first offset evaluated with
    it. Rebalances need nothing more: a partition's next owner evaluates with its own version, and the core reads
    any stored state under any version.
    """

    def __init__(
        self, nudge: NudgeApp, settings: Settings, rules: RuleSet, versions: RuleVersions | None = None
    ) -> None:
        self.nudge = nudge
        self.settings = settings
        self.rules = rules
        self.versions = versions
        self._pending_rules: tuple[Deploy, RuleSet] | None = None  # compiled, waiting for a batch boundary
        self._rules_stamp = _rules_stamp(rules.version)
        self._rules_since_ms = wall_ms()
        self._rules_status_due = True  # published once the partitions are first recovered
        self._background_tasks: set[asyncio.Future[None]] = set()  # status publishes, the crash below: kept alive
        self._output_refused = False  # a refused flush stops the worker: once, though the flushes after it fail too
        self._last_status: WorkerStatus | None = None
        self._last_status_s = 0.0
        self.clocks: dict[int, EventClock] = {}  # per owned partition: see "Deadlines" above
        self.indexes: dict[int, DeadlineIndex] = {}
        self.lead_partition: dict[bytes, int] = {}  # table key -> partition, for keys this process wrote
        self.ready = False  # False while a rebalance is in progress: the table may be partial
        self._caught_up: set[int] = set()  # owned partitions with nothing unprocessed below their highwater
        self._last_commit = 0.0
        self._rule_kinds = {rule.id: rule.kind for rule in rules.rules}
        self._last_stats = 0.0
        self._handovers_topic = nudge.identity_handovers.get_topic_name()
        self._actions_topic = nudge.actions.get_topic_name()
        self._dead_letters_topic = nudge.dead_letters.get_topic_name()
        self._clickstream_topic = nudge.clickstream.get_topic_name()
        self._privacy_topic = nudge.privacy_requests.get_topic_name() if nudge.privacy_requests is not None else None
        self._control_topic = nudge.privacy.get_topic_name() if nudge.privacy is not None else None
        self._privacy_leads: set[str] = set()  # leads with a privacy request in the current batch
        self._idle_ms = int(settings.lead_idle_days * 86_400_000)
        self._sweep_interval_s = min(IDLE_SWEEP_MAX_INTERVAL_S, max(1.0, self._idle_ms / 4000))
        self._last_sweep = time.monotonic()
        self._legacy_seen: dict[bytes, int] = {}  # entries written before the write time was stored: first seen
        self._series_cache: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.output = OutputBatch(nudge.app.producer)
        self.changelog = TableWriter(nudge.leads, self.output)
        self.figures = TableFigures()  # the table's entries and bytes per owned partition, for the gauges
        inputs = [self._clickstream_topic, self._handovers_topic]
        if self._privacy_topic is not None:
            inputs.append(self._privacy_topic)
        self.input = WorkerInput(nudge.app, inputs, maxsize=max(4096, settings.batch_size))
        self._state_lock = asyncio.Lock()
        self._lead_evaluator = LeadEvaluator(rules)
        # Series that exist from the start read 0 instead of "no data" on dashboards and in alerts.
        for outcome in ("sent", "merged_here", "nothing_to_move"):
            self._series(metrics.HANDOVERS, outcome)
        for result in ("applied", "invalid"):
            self._series(metrics.RULES_DEPLOYS, result)
        metrics.RULES_VERSION_INFO.labels(rules.version).set(1)
        self._rule_series(rules)
        outputs = [self._actions_topic, self._dead_letters_topic, self._handovers_topic]
        outputs.append(nudge.leads.changelog_topic.get_topic_name())
        if self._control_topic is not None:
            # A receipt says "the lead's earlier output is out": it goes with the changelog, after the rest.
            self.output.send_last(self._control_topic)
            outputs.append(self._control_topic)
        if nudge.lead_updates is not None:
            outputs.append(nudge.lead_updates.get_topic_name())
        for topic in outputs:
            metrics.OUTPUT_ERRORS.labels(topic)
        self._consumed: dict[str, int] = {}  # events per type in the current batch
        self._latest_event_ms: dict[int, int] = {}  # latest event time per partition in the current batch

    def _rule_series(self, rules: RuleSet) -> None:
        for rule in rules.rules:
            for reason in ("cooldown", "max_per_lead", "condition"):
                self._series(metrics.RULE_SUPPRESSED, rule.id, reason)
            if rule.kind == "journey":
                for event, reason in JOURNEY_SERIES:
                    self._series(metrics.JOURNEY_EVENTS, rule.id, event, reason)

    def clock(self, partition: int) -> EventClock:
        clock = self.clocks.get(partition)
        if clock is None:
            clock = self.clocks[partition] = EventClock(
                int(self.settings.allowed_lateness_s * 1000), int(self.settings.max_clock_skew_s * 1000)
            )
        return clock

    def index(self, partition: int) -> DeadlineIndex:
        index = self.indexes.get(partition)
        if index is None:
            index = self.indexes[partition] = DeadlineIndex()
        return index

    def _series(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: `labels()` costs ~2 µs a call on the per-event path
        (bench/FINDINGS.md); label values are bounded sets, so the cache is too."""
        key = (metric, labels)
        series = self._series_cache.get(key)
        if series is None:
            series = self._series_cache[key] = metric.labels(*labels)
        return series

    @property
    def pending_deadlines(self) -> int:
        return sum(index.pending_deadlines for index in self.indexes.values())

    # --- wiring ---------------------------------------------------------------------------------------------
    def attach(self) -> None:
        """Register the input, the input loop, the deadline timer, `/metrics`, the recovery hook and the revoke
        handler with the Faust app; call once, before the app starts. Nothing runs until Faust starts it."""
        app = self.nudge.app
        self.input.register()
        app.task(self._consume)
        app.timer(self.settings.timer_interval_s, name="nudge.deadlines")(self._fire_due_deadlines)
        app.task(self._declare_outputs)
        if self.versions is not None:
            app.task(self._follow_rules)
        app.page("/metrics")(self._metrics_page)
        self.nudge.leads.on_recover(self._rebuild_index)
        app.on_partitions_revoked.connect(self._on_revoked)

    async def _declare_outputs(self) -> None:
        for topic in (self.nudge.actions, self.nudge.dead_letters, self.nudge.lead_updates, self.nudge.privacy):
            if topic is not None:
                await topic.maybe_declare()

    @staticmethod
    async def _metrics_page(view: Any, request: Any) -> Any:
        body, content_type = metrics.render_latest()
        # aiohttp refuses a charset inside `content_type`, so the full header goes in as a header.
        return view.bytes(body, headers={"Content-Type": content_type})

    async def _on_revoked(self, app: Any, revoked: set[TP], **kwargs: Any) -> None:
        """Blocks the rebalance until a batch or timer round in progress has flushed its output (changelog
        included), so the next owner's recovery reads every write of this one; then forgets the revoked
        partitions' clocks and indexes. Deadlines stop firing (`ready` is False) until the index is rebuilt."""
        async with self._state_lock:
            self.ready = False
            self._caught_up.clear()
            with contextlib.suppress(Exception):  # the group may be gone already: the next owner replays
                await self.output.flush()  # the last batch's output may still be on its way
                await self.input.commit()
            self.input.forget(list(revoked))
            partitions = {tp.partition for tp in revoked}
            for partition in partitions:
                self.indexes.pop(partition, None)
                self.clocks.pop(partition, None)
            self.figures.forget(partitions)

    def _owned_entries(self) -> Iterator[tuple[bytes, bytes, int]]:
        """(key, state, partition) of the table entries in partitions this worker owns now. The memory store
        keeps entries of revoked partitions it wrote itself, so they are filtered out here."""
        owned = {tp.partition for tp in self.nudge.app.assignor.assigned_actives()}
        recovered = recovered_partitions(self.nudge.leads)
        for key, raw in list(self.nudge.leads.data.items()):  # the store: reading it writes no changelog
            partition = self.lead_partition.get(key, recovered.get(key))
            if partition is not None and partition in owned and raw is not None:
                self.lead_partition[key] = partition
                yield key, raw, partition

    async def _rebuild_index(self) -> None:
        """After Faust's table recovery: index the pending deadlines of every lead in a partition this worker
        owns, then let deadlines fire again (`ready`). A state that cannot be decoded is logged and skipped here
        (the next input for its lead dead-letters it)."""
        self._index_owned()
        self.ready = True
        if self._rules_status_due:
            self._rules_status_due = False
            self._publish_status(self._status("files" if self.versions is None else self.versions.source))
        log.info(
            "deadline index rebuilt: %d leads, %d deadlines",
            sum(len(index) for index in self.indexes.values()),
            self.pending_deadlines,
        )

    def _index_owned(self) -> None:
        """Index the pending deadlines, under the current rules, of every lead in a partition this worker owns,
        and count the owned entries for the gauges (`figures`): one pass over the table (at 1M leads, a third
        of a restart; bench/FINDINGS.md)."""
        with collector_paused():
            self._index_owned_entries()

    def _index_owned_entries(self) -> None:
        self.indexes.clear()
        self.figures.clear()
        count = self.figures.replace  # per entry, not a list of a million sizes first
        due: dict[int, list[tuple[str, Sequence[int]]]] = {}
        rules = self.rules
        for key, raw, partition in self._owned_entries():
            count(partition, None, raw)
            state_bytes = stored_lead.live_state(raw)
            if not state_bytes:
                continue  # a suppressed lead fires nothing (and a marker has no state)
            lead_id = key.decode()
            state = self._decode_state(lead_id, state_bytes)
            if state is not None:
                deadlines = pending_deadlines(rules, state)
                if deadlines:
                    due.setdefault(partition, []).append((lead_id, deadlines))
        for partition, leads in due.items():
            self.index(partition).load(partition, leads)

    # --- rule deploys ---------------------------------------------------------------------------------------
    async def _follow_rules(self) -> None:
        assert self.versions is not None
        await rule_versions.follow(self.settings, self.versions.next_offset, self._on_deploy)

    async def _on_deploy(self, deploy: Deploy) -> None:
        """A deploy record: compile it (in a thread, off the event loop) and leave it for the next batch boundary.
        One this worker cannot load (e.g. its connectors file lacks a connector) is refused and counted; the active
        version stays."""
        assert self.versions is not None
        if deploy.version == (self._pending_rules[1] if self._pending_rules else self.rules).version:
            return  # the same rules (a re-deploy, or the version this worker started on)
        try:
            rules = await asyncio.to_thread(rule_versions.compile_deploy, deploy, self.versions.load)
        except Exception as exc:
            self._series(metrics.RULES_DEPLOYS, "invalid").inc()
            log.error("rule set %s (deployed by %s) refused, keeping %s: %s", deploy.version, deploy.author,
                      self.rules.version, exc)
            return
        self._pending_rules = (deploy, rules)
        log.info("rule set %s received (deployed by %s); switching at the next batch", deploy.version, deploy.author)

    def _switch_rules(self, batch: Sequence[Message] = ()) -> None:
        """Switch to the pending rule set; the caller holds the state lock, at a batch boundary: `batch` (not yet
        evaluated) is the first evaluated with the new rules."""
        if self._pending_rules is None:
            return
        deploy, rules = self._pending_rules
        self._pending_rules = None
        previous = self.rules.version
        first: dict[int, int] = {}
        topic = self._clickstream_topic
        for tp in self.nudge.app.assignor.assigned_actives() if self.ready else ():
            if tp.topic == topic:
                next_offset = self.input.processed_up_to(topic, tp.partition)
                if next_offset is not None:
                    first[tp.partition] = next_offset
        for message in batch:
            if message.topic == topic:
                first[message.partition] = min(message.offset, first.get(message.partition, message.offset))
        self.rules = rules
        self._lead_evaluator = LeadEvaluator(rules)
        self._rule_kinds = {rule.id: rule.kind for rule in rules.rules}
        self._rules_stamp = _rules_stamp(rules.version)
        self._rules_since_ms = wall_ms()
        self._rule_series(rules)
        if self.ready:
            self._index_owned()  # edited and removed rules' deadlines leave the index
        metrics.RULES_VERSION_INFO.labels(previous).set(0)
        metrics.RULES_VERSION_INFO.labels(rules.version).set(1)
        self._series(metrics.RULES_DEPLOYS, "applied").inc()
        log.info(
            "rules switched from %s to %s (deployed by %s at %d); first clickstream offsets with %s: %s",
            previous, rules.version, deploy.author, deploy.at_ms, rules.version,
            orjson.dumps({str(p): o for p, o in sorted(first.items())}).decode(),
        )
        self._publish_status(self._status("deploy", previous, first))

    async def _commit_before_switch(self) -> None:
        """Commit the input offsets evaluated with the previous rules (the caller holds the lock between batches;
        the last batch's output is awaited here), so a crash after the switch replays only input of the new
        version."""
        if self.ready:
            try:
                await self.output.flush()
                await self.input.commit()
            except Exception:  # the next periodic commit catches up; a replay is then at-least-once as ever
                log.warning("could not commit the input offsets at the rule switch", exc_info=True)

    def _status(self, source: str, previous: str = "", first: dict[int, int] | None = None) -> WorkerStatus:
        worker = rule_versions.worker_id(self.settings)
        return WorkerStatus(worker, self.rules.version, self._rules_since_ms, wall_ms(), source, previous, first or {})

    def _publish_status(self, status: WorkerStatus) -> None:
        """Publish the status record in the background (best effort: `nudge rules status` and the logs read it)."""
        if self.versions is None:
            return
        self._last_status, self._last_status_s = status, time.monotonic()

        async def publish() -> None:
            try:
                await rule_versions.publish(self.settings, status.key, status.to_bytes())
            except Exception:
                log.warning("could not publish the worker's rule-set status", exc_info=True)

        task = asyncio.ensure_future(publish())
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    # --- the agent ------------------------------------------------------------------------------------------
    async def _consume(self) -> None:
        try:
            async for batch in self.input.batches(self.settings.batch_size, self.settings.batch_within_s):
                metrics.BATCH_SIZE.observe(len(batch))
                await self.process_batch(batch)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # every input is guarded, so this is a bug: stop rather than skip input
            log.critical("the worker's input loop failed; stopping the worker", exc_info=True)
            await self.nudge.app.crash(exc)
            raise

    async def process_batch(self, batch: Sequence[Message]) -> None:
        """Evaluate one batch under the state lock and start flushing everything it produced; the batch counts as
        processed (its offsets may be committed) once the broker acknowledged that output. Returns when the flush
        of the batch before it was acknowledged, so the next batch is evaluated while this one's output is on its
        way, and at most one batch's output is unacknowledged. Raises only on a bug, or when the broker refused
        output (`OutputError`: the worker stops): a bad record becomes a dead letter. Also fires the deadlines
        that came due on the clocks the batch moved."""
        async with self._state_lock:  # the deadline timer changes lead state too: one writer at a time
            if self._pending_rules is not None:
                self._switch_rules(batch)
                await self._commit_before_switch()
            by_lead: dict[str, list[Input]] = {}
            for message in batch:
                try:
                    lead_id, item = self._decode(message)
                except BadInput as bad:
                    await self._dead_letter(message, bad.reason, bad.detail)
                    continue
                by_lead.setdefault(lead_id, []).append((message, item, None))
            for partition, event_ms in self._latest_event_ms.items():
                self.clock(partition).observe(event_ms)
            self._latest_event_ms.clear()
            handovers: list[tuple[str, str, int, int]] = []
            for n, (lead_id, inputs) in enumerate(by_lead.items(), 1):
                partition = inputs[-1][0].partition  # type: ignore[union-attr]
                await self._process_lead_guarded(lead_id, inputs, partition, handovers)
                if n % YIELD_EVERY_LEADS == 0:
                    await asyncio.sleep(0)  # let the consumer keep fetching while a large batch is evaluated
            await self._hand_over(handovers)
            # Deadlines due on the clocks this batch moved fire now, not only on the timer's next turn.
            for partition in list(self.indexes):
                now_ms = self.clock(partition).now_ms(partition in self._caught_up)
                await self._fire_due_locked(partition, now_ms, TICKS_PER_CHUNK)
            self._privacy_leads.clear()
            # The batch counts as processed only after its output is acknowledged (see "Commit" on the class).
            await self._flush_after_previous(functools.partial(self.input.processed, self.input.handed_out()))
        for event_type, count in self._consumed.items():
            self._series(metrics.EVENTS_CONSUMED, event_type).inc(count)
        self._consumed.clear()

    async def _flush_after_previous(self, then: Callable[[], None] | None = None) -> None:
        """Start flushing what the caller queued under the state lock (an input batch, a deadline chunk, an idle
        sweep chunk), `then` called once it is acknowledged, and wait only for the flush before it: one flush's
        output on its way while the next is evaluated, not more. Nothing queued and no `then`: returns at once.
        Why not `flush()`: it waits for the acknowledgement under the lock; the timer's ten rounds a second
        did, and held up the next input batch for a broker round trip each (bench/FINDINGS.md). Unacknowledged
        ticks are safe to lose: their leads' stored deadlines stay pending until the changelog record that
        fired them is acknowledged, so a crash fires them again with the same action ids."""
        if then is None and not self.output.queued:
            return
        previous = self.output.in_flight
        self.output.flush_in_background(then).add_done_callback(self._on_flushed)
        if previous is not None:
            await previous

    def _on_flushed(self, flushing: asyncio.Future[None]) -> None:
        """A batch's output the broker refused stops the worker, even when no later batch waits for that flush:
        its input is never committed, so the next owner evaluates it again."""
        if flushing.cancelled() or flushing.exception() is None or self._output_refused:
            return
        self._output_refused = True
        exc = flushing.exception()
        log.critical("the broker refused the worker's output; stopping the worker", exc_info=exc)
        task = asyncio.ensure_future(self.nudge.app.crash(exc))
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    def _decode(self, message: Message) -> tuple[str, Event | HandoverRecord | WorkerRequest]:
        if message.topic != self._clickstream_topic:
            return self._decode_internal(message)
        try:
            event = parse_event(message.value)
        except InvalidEvent as exc:
            raise BadInput(exc.reason, exc.detail) from None
        key = _key_text(message.key)
        if key != event.lead_id:
            raise BadInput(
                "wrong_key",
                f"clickstream record key {key!r} is not the event's lead id {event.lead_id!r}; producers "
                "must key records by userId (else anonymousId) so each lead's events share a partition",
            )
        self._consumed[event.type] = self._consumed.get(event.type, 0) + 1  # counted once per batch
        # An event moves its partition's clock at most to when the collector received it: a device clock running
        # ahead cannot fire other leads' deadlines early (see "Deadlines" on the class).
        event_ms, received_ms = event.timestamp_ms, event.received_at_ms
        if received_ms is not None and event_ms > received_ms:
            event_ms = received_ms
        latest = self._latest_event_ms
        if event_ms > latest.get(message.partition, -1):
            latest[message.partition] = event_ms  # the clocks see each partition's maximum once
        return event.lead_id, event

    def _decode_internal(self, message: Message) -> tuple[str, HandoverRecord | WorkerRequest]:
        """A record of a worker-internal input: an identity hand-over or a privacy request."""
        if message.topic == self._handovers_topic:
            try:
                return parse_handover_record(message.value)
            except BadHandoverRecord as exc:
                raise BadInput("bad_control", str(exc)) from None  # reason code kept from the old "control" name
        try:
            request = WorkerRequest.parse(message.value)
        except BadPrivacyRecord as exc:
            raise BadInput("bad_privacy_request", str(exc)) from None
        key = _key_text(message.key)
        if key != request.lead_id:
            raise BadInput("wrong_key", "privacy request keyed by another id than its lead_id")
        self._privacy_leads.add(request.lead_id)
        return request.lead_id, request

    async def _process_lead_guarded(
        self, lead_id: str, inputs: list[Input], partition: int, handovers: list[tuple[str, str, int, int]]
    ) -> None:
        try:
            await self._process_lead(lead_id, inputs, partition, handovers)
        except Exception as exc:  # e.g. an action the core built from absurd input cannot be serialized
            if len(inputs) > 1:
                # `_process_lead` changes nothing before it has serialized everything: redo the inputs one by
                # one, so only the one that fails is dead-lettered and the lead's other records still count.
                for one in inputs:
                    await self._process_lead_guarded(lead_id, [one], partition, handovers)
                return
            log.exception("processing lead %s failed", lead_id)
            source, item, _ = inputs[0]
            await self._dead_letter(
                source, "worker_error", f"{type(exc).__name__}: {exc}", lead_id=lead_id, item=item,
                partition=partition,
            )

    async def _process_lead(
        self, lead_id: str, inputs: list[Input], partition: int, handovers: list[tuple[str, str, int, int]]
    ) -> None:
        """Evaluate one lead's inputs in order, write its state once, emit what the core produced. Everything is
        serialized before anything is written or queued: when this raises, it has changed nothing (a lead with
        privacy requests in the batch: nothing of the segment that raised, see `_process_with_privacy`)."""
        if lead_id in self._privacy_leads:  # a set that is empty but for the rare batch with a privacy request
            await self._process_with_privacy(lead_id, inputs, partition, handovers)
            return
        key = lead_id.encode()
        stored = self.changelog.get(key)
        if stored is None:
            applied, raw = stored_lead.NONE_APPLIED, None
        else:
            applied, raw, suppressed, _ = stored_lead.read(stored)
            if suppressed:
                metrics.PRIVACY_DROPPED_EVENTS.labels("worker").inc(len(inputs))
                return
        inputs = self._not_yet_applied(inputs, applied)
        if not inputs:
            return
        state = self._decode_state(lead_id, raw) if raw is not None else None
        try:
            # The decoded state is private to this call, so the core may update it in place.
            outcome = self._lead_evaluator.run(lead_id, state, inputs, in_place=True)
        except InPlaceFailed:
            # An input the core raised on: redo the lead on copies, so that input alone is dropped.
            state = self._decode_state(lead_id, raw) if raw is not None else None
            outcome = self._lead_evaluator.run(lead_id, state, inputs, in_place=False)
        new_raw = outcome.state.to_bytes() if outcome.state is not None else None
        stamp = self._rules_stamp  # the rule-set version, besides the rule version the action carries
        emitted = [(action, kind, action.to_bytes()[:-1] + stamp) for action, kind in outcome.actions]
        updates = [orjson.dumps(update) for update in outcome.updates] if self.nudge.lead_updates is not None else []
        for update in outcome.updates:
            if update.get("kind") == "journey":
                self._series(
                    metrics.JOURNEY_EVENTS, update["journey"], update["event"], update.get("reason") or ""
                ).inc()
        merges = [(known, merge_record(known, lead_id, state_bytes)) for known, state_bytes in outcome.merges_out]
        # Nothing below raises for bad input: from here on the outcome is applied.
        if raw is not None and state is None:
            await self._dead_letter(
                inputs[0][0], "bad_state", "stored lead state could not be decoded", raw, lead_id=lead_id,
                partition=partition,
            )
        now_ms = wall_ms()
        for deadline_ms in outcome.fired_deadlines:
            metrics.DEADLINE_LAG.observe(max(0.0, (now_ms - deadline_ms) / 1000))
        for source, item, reason, detail in outcome.rejected:
            await self._dead_letter(source, reason, detail, lead_id=lead_id, item=item, partition=partition)
        for rule, reason in outcome.suppressed:
            self._series(metrics.RULE_SUPPRESSED, rule, reason).inc()
        if new_raw != raw:
            # An unchanged state needs no write: inputs that changed nothing change nothing when replayed.
            value = (
                None
                if new_raw is None
                else stored_lead.encode(self._applied_after(inputs, applied), new_raw, touched_ms=now_ms)
            )
            self._put(partition, key, value)
        self.lead_partition[key] = partition
        if outcome.deadlines is not None:
            self.index(partition).set(lead_id, partition, outcome.deadlines)
        for action, kind, value in emitted:
            self._emit(action, kind, value)
        if self.nudge.lead_updates is not None:
            for update in updates:
                self.output.send(self.nudge.lead_updates.get_topic_name(), key, update)
        for known_id, record in merges:
            self._send_handover_record(known_id, record)
        handovers.extend((anonymous, known, at_ms, partition) for anonymous, known, at_ms in outcome.handovers)

    async def _process_with_privacy(
        self, lead_id: str, inputs: list[Input], partition: int, handovers: list[tuple[str, str, int, int]]
    ) -> None:
        """A lead with privacy requests in this batch: its inputs in order, each run of other inputs evaluated as
        usual (`_process_lead` reads the stored value each time, so a request's effect is seen by what follows)
        and each request applied where it stands."""
        self._privacy_leads.discard(lead_id)
        try:
            run: list[Input] = []
            for one in inputs:
                if isinstance(one[1], WorkerRequest):
                    if run:
                        await self._process_lead(lead_id, run, partition, handovers)
                        run = []
                    self._apply_privacy(one[1], partition)
                else:
                    run.append(one)
            if run:
                await self._process_lead(lead_id, run, partition, handovers)
        finally:
            self._privacy_leads.add(lead_id)  # a redo of this lead's inputs one by one comes back here

    def _apply_privacy(self, request: WorkerRequest, partition: int) -> None:
        """Apply one privacy request to the lead's stored value and deadlines, and queue its receipt."""
        lead_id = request.lead_id
        key = lead_id.encode()
        current = self.changelog.get(key)
        stored = stored_lead.read(current) if current is not None else None
        applied = stored.applied if stored is not None else stored_lead.NONE_APPLIED
        index = self.index(partition)
        counts = {"lead_states": 0, "deadlines": 0, "suppressed": 0}
        value: bytes | None = current
        now_ms = wall_ms()
        if request.op == ERASE:
            counts["lead_states"] = int(stored is not None and bool(stored.state))
            counts["deadlines"] = index.count(lead_id)
            index.discard(lead_id)
            value = stored_lead.encode(applied, b"", suppressed=True, touched_ms=now_ms) if request.suppress else None
        elif request.op == CLEAR_SUPPRESSED:
            if stored is not None and stored.suppressed:
                counts["suppressed"] = 1
                value = stored_lead.encode(applied, stored.state, touched_ms=now_ms) if stored.state else None
                state = self._decode_state(lead_id, stored.state) if stored.state else None
                if state is not None:
                    index.set(lead_id, partition, pending_deadlines(self.rules, state))
        else:  # suppress, keeping the state
            counts["deadlines"] = index.count(lead_id)
            index.discard(lead_id)
            counts["suppressed"] = 1
            state_bytes = stored.state if stored is not None else b""
            value = stored_lead.encode(applied, state_bytes, suppressed=True, touched_ms=now_ms)
        if request.op == ERASE and request.suppress:
            counts["suppressed"] = 1
        if value != current:
            self._put(partition, key, value)
        self.lead_partition[key] = partition
        self._series(metrics.PRIVACY_REQUESTS, "worker", request.op).inc()
        if self._control_topic is not None:
            receipt = Receipt("worker", request.request_id, counts, request.index)
            self.output.send(self._control_topic, request.request_id.encode(), receipt.to_bytes())

    async def _drop_idle(self) -> None:
        """Tombstone the leads of owned partitions whose state was last written more than `NUDGE_LEAD_IDLE_DAYS`
        ago and that have no pending deadline (suppression markers stay). A value written before the write time
        was stored counts from when a sweep first saw it. In chunks under the state lock, each chunk's flush started
        before the next."""
        now_ms = wall_ms()
        entries = list(self._owned_entries())
        dropped = 0
        for start in range(0, len(entries), IDLE_SWEEP_CHUNK):
            async with self._state_lock:
                if not self.ready:
                    return
                for key, seen, partition in entries[start : start + IDLE_SWEEP_CHUNK]:
                    current = self.changelog.get(key)
                    if current is None or current is not seen:
                        continue  # written since the listing: it is not idle
                    suppressed, touched_ms = stored_lead.marks(current)
                    if suppressed:
                        continue
                    if touched_ms == 0:
                        touched_ms = self._legacy_seen.setdefault(key, now_ms)
                    if now_ms - touched_ms < self._idle_ms or key.decode() in self.index(partition):
                        continue
                    self._put(partition, key, None)
                    self._legacy_seen.pop(key, None)
                    dropped += 1
                await self._flush_after_previous()
            await asyncio.sleep(0)
        if dropped:
            metrics.WORKER_IDLE_LEADS_DROPPED.inc(dropped)
            log.info("dropped %d idle leads (no write for %.1f days, no pending deadline)", dropped,
                     self.settings.lead_idle_days)

    async def _hand_over(self, handovers: list[tuple[str, str, int, int]]) -> None:
        """Identity hand-overs found in this batch: (anonymous id, known id, identify time, known partition).

        When this worker owns the anonymous lead's partition and that partition's event-time clock has passed
        the identifying event, every event of the anonymous id up to then (within the allowed lateness) has
        been consumed, so the hand-over is done here and now: nothing to do when the anonymous lead has no
        state, else its state is deleted and merged into the known lead (whose partition is also ours: we
        just evaluated its identify). Otherwise only a hand-over record queued behind the partition's
        unconsumed records can do it right, and one is sent."""
        if not handovers:
            return
        owned = self._owned_partitions() if self.ready else set()
        partitions = self._partition_count()
        for anonymous_id, known_id, event_ms, known_partition in handovers:
            partition = default_partition(anonymous_id, partitions)
            clock = self.clocks.get(partition)
            if partition not in owned or clock is None or clock.now_ms() < event_ms:
                self._send_handover_record(anonymous_id, handover_record(anonymous_id, known_id))
                self._series(metrics.HANDOVERS, "sent").inc()
                continue
            anonymous_key = anonymous_id.encode()
            stored = self.changelog.get(anonymous_key)
            found = stored_lead.read(stored) if stored is not None else None
            raw = found.state if found is not None and not found.suppressed else None
            if not raw:  # no state, or a suppressed lead: its state does not move
                self._series(metrics.HANDOVERS, "nothing_to_move").inc()
                continue
            self._put(partition, anonymous_key, None)
            self.index(partition).discard(anonymous_id)
            merge: list[Input] = [(None, MergeIn(anonymous_id, raw), None)]
            await self._process_lead_guarded(known_id, merge, known_partition, [])
            self._series(metrics.HANDOVERS, "merged_here").inc()

    def _owned_partitions(self) -> set[int]:
        topic = self.nudge.clickstream.get_topic_name()
        return {tp.partition for tp in self.nudge.app.assignor.assigned_actives() if tp.topic == topic}

    def _partition_count(self) -> int:
        with contextlib.suppress(Exception):  # the consumer's metadata; the setting is the fallback
            count = self.nudge.app.consumer.topic_partitions(self.nudge.clickstream.get_topic_name())
            if count:
                return int(count)
        return self.settings.partitions

    def _send_handover_record(self, lead_id: str, record: bytes) -> None:
        """To the lead's partition by the default key partitioner, the one clickstream producers use."""
        self.output.send(self._handovers_topic, lead_id.encode(), record)

    def _not_yet_applied(self, inputs: list[Input], applied: stored_lead.Applied) -> list[Input]:
        """`inputs` without the consumed records the stored state already reflects (replayed after a crash)."""
        if applied == stored_lead.NONE_APPLIED:
            return inputs
        kept = []
        for source, item, deadline in inputs:
            if source is not None:
                done = applied.handovers if source.topic == self._handovers_topic else applied.clickstream
                if source.offset < done:
                    metrics.REPLAYED_INPUTS.inc()
                    continue
            kept.append((source, item, deadline))
        return kept

    def _applied_after(self, inputs: list[Input], applied: stored_lead.Applied) -> stored_lead.Applied:
        clickstream, handovers = applied
        for source, _, _ in inputs:
            if source is None:
                continue
            if source.topic == self._handovers_topic:
                handovers = max(handovers, source.offset + 1)
            else:
                clickstream = max(clickstream, source.offset + 1)
        return stored_lead.Applied(clickstream, handovers)

    def _put(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Every write of the table goes through here: the store and changelog (`TableWriter`), and the gauges."""
        self.figures.replace(partition, self.changelog.get(key), value)
        self.changelog.put(partition, key, value)

    def _decode_state(self, lead_id: str, raw: bytes) -> LeadState | None:
        try:
            return LeadState.from_bytes(raw)
        except Exception:
            log.exception("cannot decode state of lead %s", lead_id)
            return None

    def _emit(self, action: Action, kind: str, value: bytes) -> None:
        self.output.send(self._actions_topic, action.lead_id.encode(), value)
        self._series(metrics.RULE_FIRES, action.rule, self._rule_kinds.get(action.rule, kind)).inc()
        # Due = the later of the triggering event's time and the fire time (a deadline for absence rules), the
        # same definition as the detection-delay KPI in ClickHouse. `kind`: fired by an event or by a tick.
        due_ms = max(action.fired_at_ms, action.trigger_time_ms or 0)
        self._series(metrics.DETECTION_DELAY, kind).observe(max(0.0, (wall_ms() - due_ms) / 1000))

    async def _dead_letter(
        self,
        source: Message | None,
        reason: str,
        detail: str,
        payload: bytes | None = None,
        *,
        lead_id: str | None = None,
        item: Any = None,
        partition: int | None = None,
    ) -> None:
        """Dead-letter an input: a consumed record (`source`), or one the worker made itself (a deadline tick, a
        hand-over merged in place), which came from no topic."""
        if source is not None:
            key, topic, offset = source.key, source.topic, source.offset
            partition = source.partition
            payload = source.value if payload is None else payload
        else:
            key, topic, offset = (lead_id or "").encode(), None, None
            if payload is None and isinstance(item, Tick):
                payload = orjson.dumps({"op": "tick", "lead_id": lead_id, "now_ms": item.now_ms})
            elif payload is None and isinstance(item, MergeIn):  # an anonymous state merged here: keep it
                payload = merge_record(lead_id or "", item.from_lead, item.state)
        record = dead_letter_record(
            source="worker",
            reason=reason,
            detail=detail,
            payload=payload,
            topic=topic,
            partition=partition,
            offset=offset,
            key=_key_text(key),
        )
        self.output.send(self._dead_letters_topic, key, record)
        metrics.DEAD_LETTERS.labels("worker", reason).inc()

    # --- the deadline timer ---------------------------------------------------------------------------------
    async def _fire_due_locked(self, partition: int, now_ms: int, limit: int) -> int:
        """Evaluate `Tick(now_ms)` for up to `limit` leads of `partition` whose deadline is due; the caller
        holds the state lock and flushes the changelog. Returns how many leads were due."""
        index = self.indexes.get(partition)
        due = index.pop_due(now_ms, limit=limit) if index is not None and self.ready else []
        for lead in due:
            tick: list[Input] = [(None, Tick(now_ms), lead.deadline_ms)]
            await self._process_lead_guarded(lead.lead_id, tick, lead.partition, [])
        return len(due)

    async def _fire_due_deadlines(self) -> None:
        """The timer's round: fire what is due on each owned partition's clock, in chunks of
        `TICKS_PER_CHUNK` leads per hold of the state lock (each chunk's flush started), at most `MAX_TICKS_PER_ROUND`
        per round so a backlog cannot stall the event loop; the rest fires on the next round."""
        if self._pending_rules is not None:
            async with self._state_lock:
                self._switch_rules()
                await self._commit_before_switch()
        budget = MAX_TICKS_PER_ROUND
        watermarks = []
        if self.ready:
            # A partition whose last records vanished at a restart shows no jump and would never catch up (its
            # clock, and so its deadlines, frozen until its next record): seek it back (`WorkerInput.check_stalled`).
            self.input.check_stalled()
        self._refresh_caught_up()
        for partition in sorted(self.indexes.keys() | self.clocks.keys()):
            now_ms = self.clock(partition).now_ms(partition in self._caught_up)
            watermarks.append(now_ms)
            while budget > 0 and self.ready and partition in self.indexes:
                if not self.indexes[partition].may_have_due(now_ms):
                    # Nothing due (under load the batches fire what falls due): no wait for the lock behind a
                    # batch, which made a round of eight partitions take a second ("Timer ... overlapping").
                    break
                # In chunks, giving the lock back in between: a burst of deadlines must not hold up events.
                async with self._state_lock:
                    fired = await self._fire_due_locked(partition, now_ms, min(budget, TICKS_PER_CHUNK))
                    await self._flush_after_previous()
                budget -= fired
                if fired < TICKS_PER_CHUNK:
                    break
                await asyncio.sleep(0)
        if watermarks:
            # The slowest partition's clock: what ops need to see when one partition falls behind.
            metrics.EVENT_TIME_WATERMARK.set(min(watermarks) / 1000)
        metrics.PENDING_DEADLINES.set(self.pending_deadlines)
        if self.ready and time.monotonic() - self._last_commit >= self.nudge.app.conf.broker_commit_interval:
            self._last_commit = time.monotonic()
            async with self._state_lock:  # a revoke in progress commits (and forgets) under the same lock
                await self.input.commit()
        last = self._last_status
        if last is not None and time.monotonic() - self._last_status_s >= RULES_STATUS_INTERVAL_S:
            self._publish_status(dataclasses.replace(last, at_ms=wall_ms()))  # "seen" for `nudge rules status`
        if time.monotonic() - self._last_stats >= STATS_INTERVAL_S:
            self._last_stats = time.monotonic()
            self._refresh_stats()
        if self.ready and self._idle_ms > 0 and time.monotonic() - self._last_sweep >= self._sweep_interval_s:
            self._last_sweep = time.monotonic()
            await self._drop_idle()

    def _refresh_caught_up(self) -> None:
        """Which owned partitions are caught up: every record below the highwater of the consumer's last fetch
        has been processed. Only their clocks may run on wall time while events pause (see "Deadlines")."""
        if not self.ready:
            self._caught_up = set()
            return
        consumer = self.nudge.app.consumer
        topic = self.nudge.clickstream.get_topic_name()
        caught_up = set()
        for tp in self.nudge.app.assignor.assigned_actives():
            if tp.topic != topic:
                continue
            processed = self.input.processed_up_to(topic, tp.partition)
            highwater = consumer.highwater(tp)
            if processed is not None and highwater is not None and processed >= highwater:
                caught_up.add(tp.partition)
        self._caught_up = caught_up

    def _refresh_stats(self) -> None:
        metrics.ACTIVE_LEADS.set(self.figures.entries)
        metrics.STATE_BYTES.set(self.figures.bytes)
        consumer = self.nudge.app.consumer
        # Best effort: the dev broker (Tansu 0.6) reports end offsets one batch short, see faust_ext/broker_profiles.
        with contextlib.suppress(Exception):
            for tp in self.nudge.app.assignor.assigned_actives():
                if tp.topic != self.nudge.clickstream.get_topic_name():
                    continue
                highwater = consumer.highwater(tp)
                committed = self.input.processed_up_to(tp.topic, tp.partition) or 0
                if highwater is not None:
                    lag = max(0, highwater - committed)
                    metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)

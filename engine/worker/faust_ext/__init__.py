"""Extensions of Faust and aiokafka that reach into their internals: the one fenced place for them.

Why it exists: the worker's throughput comes from bypassing Faust's per-record machinery (a stream and its
tasks per record, the per-record send path) and from broker workarounds Faust has no setting for. That needs
private API, which a library may change in any release. Keeping every such use here, behind small public
functions and classes, makes the price visible and checkable: faust-streaming and aiokafka are pinned exactly
in pyproject.toml, and tests/worker/test_faust_ext_tripwire.py fails on an upgrade that changes anything listed
below. Nothing outside this package may touch a private attribute of Faust, mode or aiokafka (ruff's SLF001 is
ignored only here), nor rely on their undocumented behaviour.

Private API used (faust-streaming 0.15.3, its mode-streaming, aiokafka 0.14.0), and where:
- `fast_delivery`: overrides `mode.Service.wait_first` for the call shape of the private drain loop
  `faust.transport.consumer.Consumer._drain_messages` (`wait_first(callback(message), self.suspend_flow.wait())`);
  reads `mode.Service._stopped` and `mode.Service._crashed`; overrides `faust.App._new_transport` (and sets the
  transport class's `Consumer` attribute) so the app's consumer is the fast-delivery one; wraps the consumer's
  `seek_to_committed`/`perform_seek`, relying on Faust's recovery calling `perform_seek` after each rebalance;
  `seek_on_consumer_thread` runs aiokafka's `seek` through `Consumer._thread.call_thread` (the consumer's own
  thread; Faust's `seek` calls it from the caller's thread, racing the fetcher) and sets `Consumer._read_offset`;
  overrides the private `Consumer._wait_next_records(timeout)` and extends `Consumer.on_buffer_drop`, reading
  `Consumer._get_active_partitions()` and `Consumer._buffered_partitions` (the partitions a full queue holds back).
  Replaces `Consumer.getmany` (the private drain loop's source of records) with one that puts the input topics'
  records on their channel's queue a fetched partition at a time: it repeats Faust's checks from `getmany`
  (`flow_active`, `app.consumer_generation_id`, `perform_seek`, `highwater`, `app.monitor.track_tp_end_offset`),
  the drain loop's `Consumer._read_offset`, and what the conductor's per-record callback does
  (`app.flow_control.acquire`, `app.producer.buffer.wait_until_ebb`, mode's `FlowControlQueue.put_nowait_enhanced`
  with pressure callbacks calling `on_buffer_full` / `on_buffer_drop`, `app.sensors.on_topic_buffer_full`), and
  builds messages with the driver's `Consumer._to_message(tp, record)`.
- `batched_output`: `faust.transport.drivers.aiokafka.Producer._ensure_producer()` (the app's aiokafka producer)
  and `aiokafka.client.AIOKafkaClient._wait_on_metadata(topic)` (partition count of an output topic).
- `broker_profiles`: replaces `aiokafka.AIOKafkaConsumer` process-wide, relying on the private
  `faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._create_worker_consumer` building its consumer through
  that module attribute with `fetch_max_wait_ms=1500`.
- `changelog_read_ahead`: overrides `faust.tables.recovery.Recovery._seek_offsets(consumer, tps, offsets, title)`
  (called for the actives after their highwaters and start offsets are built and checked) and reads
  `Recovery.active_highwaters` / `tp_to_table`; replaces `faust.tables.TableManager.recovery` (which builds the
  service into `TableManager._recovery`); writes `faust.stores.memory.Store.data` and `Store._key_partition` as
  `Store.apply_changelog_batch` does; uses the driver's `credentials_to_aiokafka_auth` and `server_list`.
- `private_state`: `faust.stores.memory.Store._key_partition` (the changelog partition of each recovered key).
- `batched_input`: `faust.transport.consumer.Consumer._commit_offsets(offsets)` (the worker commits its input
  itself); `take_queued` takes queued records in bulk as mode's `FlowControlQueue.get_nowait` takes each
  (asyncio's `Queue._queue`, `_putters`, `_wakeup_next`; mode's `_pending_pressure_drop_callbacks`,
  `pressure_drop_size`, `maybe_endorse_pressure_drop`); and undocumented behaviour: a `faust.Schema` whose
  `compile()` returns the `Message` itself, `Topic.clone(is_iterator=True)` subscribing a channel (filled by
  `fast_delivery`'s bulk delivery, as the conductor would fill it: `queue.put_nowait_enhanced` with flow control),
  `Message.generation_id`, and Faust's drain loop recording offset gaps only for topics with acks (the input is
  subscribed without, and its records no longer pass through the drain loop's per-record path).
"""

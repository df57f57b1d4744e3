"""`nudge worker`: the Faust shell around the pure core. The app, topics and table (`app`), the batched
`LeadWorker` (`lead_worker`), one lead's inputs through the core (`lead_inputs`), event-time clocks and deadline
indexes (`deadlines`) and identity hand-over records (`handovers`); every use of Faust or aiokafka internals is
fenced in `faust_ext/`.

May import `engine.core`, `engine.events`, `engine.kafka`, `engine.config`, `engine.metrics`, Faust and orjson;
never the dispatcher, connectors, the sink, the collector or assignment. Private API of Faust, mode and aiokafka
only inside `faust_ext/`.
"""

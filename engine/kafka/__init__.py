"""Kafka, shared by every process: topic names and the records several processes exchange (`topics`), topic
administration (`admin`), Kafka's default murmur2 partitioner (`partitioner`) and the TLS/SASL options every
client is built with (`security`).

May import `engine.config`, aiokafka and orjson; nothing of the worker, the dispatcher or any other shell.
"""

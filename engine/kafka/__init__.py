"""Kafka, shared by every process: topic names and the records several processes exchange (`topics`), topic
administration (`admin`) and Kafka's default murmur2 partitioner (`partitioner`).

May import `engine.config`, aiokafka and orjson; nothing of the worker, the dispatcher or any other shell.
"""

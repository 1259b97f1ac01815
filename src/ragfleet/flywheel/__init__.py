"""The data flywheel: every answer the gateway gives is recorded, users rate answers later, and
the rated answers become training and evaluation data (``ragfleet flywheel export``).

- ``records``: the answer and feedback records, and the checks feedback must pass;
- ``store``: where they are kept (SQLite for one machine, PostgreSQL for a fleet);
- ``recorder``: the spool in front of the store, so that recording never holds up an answer.
"""

"""The parts of ``scripts/chaos.py``: the workload's clients, the fault schedule, and the checker.

``checker`` is pure (records in, verdict out) and is what ``chaos.py check`` and the unit tests
use; ``workload`` and ``faults`` talk to a running cluster.
"""

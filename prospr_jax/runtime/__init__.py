"""Running a job reliably: files, faults, preemption, sharding, checkpointing, metrics, the workdir contract.

Knows no pruning: nothing here imports criteria, masks logic, models or the harness.
"""

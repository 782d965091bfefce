"""Benchmarks: stagebox side by side with scp/rsync on the same machine, in the same run.

Entry point: ``python -m benchmarks.run --quick|--full`` (``make bench-quick`` / ``make bench``).
Results land in ``benchmarks/results/latest.md`` and ``latest.json``; workloads and scratch
space in ``benchmarks/work/`` (gitignored).
"""

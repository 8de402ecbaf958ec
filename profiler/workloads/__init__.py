"""Reference workloads, one module each (see profiler/run.py)."""

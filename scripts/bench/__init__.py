"""The benchmark behind ``scripts/benchmark.py``, one module per part of the job.

- :mod:`bench.contestants`: what is timed — the seed's raw PyTorch loop, bare Lightning, bare Lightning with
  litpoly's ``NullProfiler``, and litpoly's ``fit`` (with every default feature on, or one switched off) —
  each run once, in a process of its own, by :func:`bench.contestants.run`;
- :mod:`bench.clock`: how — the clock is read at two step ends inside the run, so start-up is excluded
  (and measured separately, from the process's start to its first step);
- :mod:`bench.measure`: the orchestration — alternated repeats in fresh processes, medians and spreads,
  ratios, the breakdown, memory growth and start-up;
- :mod:`bench.report`: the printed tables and the JSON file;
- :mod:`bench.tables`: that JSON as the Markdown tables of ``docs/performance.md`` (standard library only).
"""

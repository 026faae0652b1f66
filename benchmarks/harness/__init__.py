"""The benchmarks' timing harness, one job a module (nothing here is part of flowkit):

* :mod:`harness.clocks` — :class:`~harness.clocks.Timing`, the clocks and :func:`~harness.clocks.stamp`;
* :mod:`harness.lockstep` — contenders at once, in turns at every network call;
* :mod:`harness.schedules` — interleave, sandwich, lockstep repetitions and their pairing;
* :mod:`harness.stats` — medians, paired ratios, rates on each clock;
* :mod:`harness.machine` — the machine's facts, CPU pinning, the allocator settings, peak memory;
* :mod:`harness.report` — atomic JSON writing and markdown tables.
"""

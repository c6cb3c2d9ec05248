"""What a call left in its worker, compared with the worker's baseline (issue #12)."""

from __future__ import annotations

from snakebridge_server.supervisor.leftovers import Sample, leftover_reason, sample


def test_leftovers_name_threads_fds_and_memory_in_that_order() -> None:
    base = Sample(threads=2, fds=10, rss=100)
    limits = {"max_extra_fds": 4, "max_rss_growth": 50}
    assert leftover_reason(base, Sample(2, 14, 150), **limits) is None
    assert "thread" in (leftover_reason(base, Sample(3, 30, 999), **limits) or "")
    assert "file descriptor" in (leftover_reason(base, Sample(2, 15, 100), **limits) or "")
    assert "RSS" in (leftover_reason(base, Sample(2, 10, 151), **limits) or "")
    assert leftover_reason(base, Sample(2, 10, 10**9), max_extra_fds=4, max_rss_growth=0) is None


def test_a_sample_of_this_process_reads_its_threads_fds_and_rss() -> None:
    import os

    now = sample(os.getpid())
    assert now is not None and now.threads >= 1 and now.fds >= 3 and now.rss > 0
    assert sample(2**22 + 12345) is None  # no such process

"""A short, bounded load test against the real server on loopback (the session's tritonserver).

Many concurrent clients, each with its own connection, over gRPC and over HTTP, to the ``lcode``
ensemble and to the ``colorize`` endpoint, for a fixed number of requests; every answer is checked
(AB finite and of the right shape, COLORIZED a PNG). Errors must be 0. Latency and throughput are
reported, never asserted; the server's resident memory (process tree) is reported at the start and
the end and held to a generous bound that only a real leak would break. The longer soak is
``python -m langcolor.benchmarks.soak``.
"""

from __future__ import annotations

import logging
import math

import pytest

from langcolor.benchmarks.soak import default_workload, run_load, server_rss_mb, summary_line

pytestmark = pytest.mark.server
log = logging.getLogger(__name__)

REQUESTS = {"lcode": 192, "colorize": 96}  # per protocol; about 10 s in all on two busy cores
CONCURRENCY = 12
# Allocator arenas and Triton's queues settle in the first minutes; a leak of ~100 kB a request
# (say, one kept copy of a photo) would add over 20 MiB here, so the bound is loose but not blind.
MAX_GROWTH_MB = 64.0


@pytest.fixture(scope="module")
def workload(served_repository):
    return default_workload(served_repository.path)


@pytest.mark.parametrize("endpoint", ["lcode", "colorize"])
def test_concurrent_clients_get_every_answer_right(triton_server, protocol, server_url, workload, endpoint,
                                                    record_property):
    pid = triton_server.process.pid
    assert not math.isnan(server_rss_mb(pid))
    result = run_load(server_url, protocol, endpoint, workload, REQUESTS[endpoint], CONCURRENCY, server_pid=pid,
                      max_seconds=240)
    line = summary_line(result)
    log.warning("%s", line)  # shown in the test summary with -rA or on failure
    record_property("load", line)
    print(line)
    assert result.errors == 0, result.error_samples
    assert result.requests == REQUESTS[endpoint]
    assert result.rss_growth_mb < MAX_GROWTH_MB, line
    assert triton_server.running

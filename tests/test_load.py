"""A short, bounded load test against the real server on loopback (the tritonserver the tests share).

Many concurrent clients, each with its own connection, over gRPC and over HTTP, to every served
family's ensemble and to the ``colorize`` endpoint, for a fixed number of requests; every answer is
checked (AB finite and of the right shape, COLORIZED a PNG). Errors must be 0. Latency and throughput
are reported, never asserted; the server's resident memory (process tree) is reported at the start
and the end and held to a generous bound that only a real leak would break. The longer soak is
``python -m langcolor.benchmarks.soak``.
"""

from __future__ import annotations

import logging
import math

import pytest

from langcolor.benchmarks.soak import COLORIZE, default_workload, endpoints, run_load, server_rss_mb, summary_line

pytestmark = pytest.mark.server
log = logging.getLogger(__name__)

ENSEMBLE_REQUESTS, COLORIZE_REQUESTS = 192, 96  # per protocol; about 10 s each on two busy cores
CONCURRENCY = 12
# Allocator arenas and Triton's queues settle in the first minutes; a leak of ~100 kB a request
# (say, one kept copy of a photo) would add over 20 MiB here, so the bound is loose but not blind.
MAX_GROWTH_MB = 64.0


@pytest.fixture(scope="module")
def workloads(served_repository):
    """endpoint -> its workload, made on first use (None: the family is not in the served repository)."""
    made = {}

    def get(endpoint: str):
        if endpoint not in made:
            if endpoint != COLORIZE and not (served_repository.path / endpoint / "1" / "langcolor.json").is_file():
                made[endpoint] = None
            else:
                made[endpoint] = default_workload(served_repository.path, None if endpoint == COLORIZE else endpoint)
        return made[endpoint]

    return get


@pytest.mark.parametrize("endpoint", endpoints())
def test_concurrent_clients_get_every_answer_right(triton_server, protocol, server_url, workloads, endpoint,
                                                    record_property):
    work = workloads(endpoint)
    if work is None:
        pytest.skip(f"the served repository has no '{endpoint}' ensemble")
    requests = COLORIZE_REQUESTS if endpoint == COLORIZE else ENSEMBLE_REQUESTS
    pid = triton_server.process.pid
    assert not math.isnan(server_rss_mb(pid))
    result = run_load(server_url, protocol, endpoint, work, requests, CONCURRENCY, server_pid=pid, max_seconds=240)
    line = summary_line(result)
    log.warning("%s", line)  # shown in the test summary with -rA or on failure
    record_property("load", line)
    print(line)
    assert result.errors == 0, result.error_samples
    assert result.requests == requests
    assert result.rss_growth_mb < MAX_GROWTH_MB, line
    assert triton_server.running


def test_workloads_follow_each_familys_contract(served_repository):
    """Every served family's workload: the ensemble's inputs made by its own conditioner, valid for its
    contract; the colorize workload sends the user inputs of the family the endpoint colours by default."""
    from langcolor.client import families
    from langcolor.client.runtime import check_inputs

    served = [e for e in endpoints() if e != COLORIZE and (served_repository.path / e / "1" / "langcolor.json").is_file()]
    assert served, "the served repository holds no family"
    for name in served:
        work = default_workload(served_repository.path, name)
        assert work.family == name and work.geometry.family == name and len(work.feeds) >= 2
        for feeds in work.feeds:
            check_inputs(feeds, work.geometry)  # shapes, dtypes, values within every declared range
        fields = {f.tensor_name for f in families.get(name).inputs}
        required = {f.tensor_name for f in families.get(name).inputs if f.required}
        assert all(required <= set(v) <= fields for v in work.values)  # optional ones only where accepted
    colorize = default_workload(served_repository.path)
    assert colorize.family in served and colorize.images

"""Runs `langcolor batch --ray` against a real two-node Ray cluster on loopback, inside a private
network namespace, and writes what happened as JSON. Used by tests/test_ray_cluster.py, and for the
figures in docs/scale-out.md.

    unshare -n sh -c 'ip link set lo up && exec python tests/ray_scenario.py faults SRC MANIFEST OUT REPORT'
    unshare -n sh -c 'ip link set lo up && exec python tests/ray_scenario.py bench SRC MANIFEST WORKDIR REPORT'
    (and ``local``/``s3`` SRC MANIFEST OUT REPORT in a namespace with a veth and a default route, like a host)

faults: head (127.0.0.2) + node (127.0.0.3), one CPU each; the batch runs with ``--ray auto``; once a
few records are in, the colorizing actor's process on the second node is SIGKILLed; a few records
later the whole second node (every process of its session: raylet, agents, workers) is SIGKILLed. If the run
does not finish, it is rerun on the head alone. The sockets of the namespace are read with ``ss``
while both nodes and the driver are up.

local: ``--ray local`` twice, every socket read with ``ss`` every 0.1 s while it runs. Run in a
namespace that looks like a host (a second interface, a default route): Ray's local mode must still
keep every socket on 127.0.0.1.

s3: the same from an s3:// manifest to an s3:// output on a moto server in the namespace.

bench: plain `langcolor batch` (in-process, one model thread), then `--ray` on one node and on two
nodes (one actor each), on the same images; images/s of each, from the command's own summary line,
and the whole wall time (cluster start excluded).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_cluster import RAY_ENV, LoopbackCluster, interface_addresses, in_private_network, socket_report  # noqa: E402

RUN_TIMEOUT_S = 400.0
DEADLINE_S = 540.0  # the whole scenario, so that the cluster is always stopped


def _cli(src: str, manifest: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "langcolor.client.cli", "batch", src, "--output", out, "--captions", manifest,
            "--default-caption", "a gray square", "--max-pixels", "300000", "--no-progress", *extra]


def _records(out: Path) -> int:
    path = out / ".langcolor" / "records.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def _wait_records(out: Path, n: int, proc: subprocess.Popen, timeout_s: float = 240.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if _records(out) >= n:
            break
        time.sleep(0.05)
    return _records(out)


def _actor_pids(node) -> list[int]:
    return [pid for pid, cmd in node.pids() if cmd.startswith("ray::Colorist")]


def _wait_actor(node, timeout_s: float = 120.0, other_than: tuple[int, ...] = ()) -> list[int]:
    """The colorizing actor's process(es) on ``node``, once there is one not in ``other_than``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [pid for pid in _actor_pids(node) if pid not in other_than]
        if pids:
            return pids
        time.sleep(0.1)
    return []


def _summary(stdout: str) -> str:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("done ")]
    return lines[-1] if lines else ""


def faults(src: str, manifest: str, out: str, report: Path, workdir: Path) -> dict:
    result: dict = {"private_network": in_private_network(), "interfaces": interface_addresses()}
    env = {**os.environ, **RAY_ENV}
    with LoopbackCluster(workdir) as cluster:
        second = cluster.add_node()
        env["RAY_ADDRESS"] = cluster.address
        t0 = time.monotonic()
        cmd = _cli(src, manifest, out, "--ray", "auto", "--batch-size", "1", "--workers", "2")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            out_dir = Path(out)
            victims = _wait_actor(second)
            result["actor_on_second_node"] = bool(victims)
            result["records_at_worker_kill"] = _wait_records(out_dir, 4, proc)
            result["sockets"] = socket_report()  # both nodes, the driver and its actors up
            victims = _actor_pids(second)
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            result["killed_worker_pids"] = victims
            result["worker_killed_at_s"] = time.monotonic() - t0
            restarted = _wait_actor(second, 60.0, other_than=tuple(victims))
            result["actor_restarted_on_second_node"] = bool(restarted)
            result["actor_restarted_at_s"] = time.monotonic() - t0
            result["records_at_node_kill"] = _wait_records(out_dir, result["records_at_worker_kill"] + 6, proc)
            result["second_node_pids_killed"] = len(second.pids())
            second.kill(signal.SIGKILL)
            result["node_killed_at_s"] = time.monotonic() - t0
            result["run_alive_at_node_kill"] = proc.poll() is None
            stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        result["first"] = {"returncode": proc.returncode, "seconds": time.monotonic() - t0,
                           "summary": _summary(stdout), "stderr_tail": stderr[-3000:]}
        result["second_node_left"] = len(second.pids())
        records = out_dir / ".langcolor" / "records.jsonl"  # before a rerun compacts it: every line written
        result["record_outputs_after_first"] = [json.loads(line)["output"] for line in records.read_text().splitlines()
                                                if line.strip()] if records.exists() else []
        if proc.returncode not in (0, 1) or "stopped early" in stderr:  # 1: the bad files failed, as they should
            t1 = time.monotonic()
            rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S)
            result["rerun"] = {"returncode": rerun.returncode, "seconds": time.monotonic() - t1,
                               "summary": _summary(rerun.stdout), "stderr_tail": rerun.stderr[-3000:]}
        result["sockets_at_end"] = socket_report()
        nodes = cluster.nodes
    result["left_after_stop"] = sum(len(n.pids()) for n in nodes)
    report.write_text(json.dumps(result, indent=1))
    return result


def _watched(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``, reading every socket of the namespace (``ss``) every 0.1 s while it runs."""
    seen: dict[str, set] = {"off_loopback": set(), "wildcard": set(), "loopback": set()}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    import threading

    chunks: dict[str, str] = {}
    readers = [threading.Thread(target=lambda n=n, f=f: chunks.__setitem__(n, f.read()))
               for n, f in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for r in readers:
        r.start()
    samples = 0
    while proc.poll() is None and time.monotonic() - t0 < RUN_TIMEOUT_S:
        for kind, lines in socket_report().items():
            seen[kind].update(" ".join(line.split()[:1] + line.split()[4:6]) for line in lines)
        samples += 1
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for r in readers:
        r.join()
    return {"returncode": proc.returncode, "seconds": time.monotonic() - t0, "summary": _summary(chunks["stdout"]),
            "stderr_tail": chunks["stderr"][-3000:], "ss_samples": samples,
            "off_loopback": sorted(seen["off_loopback"]), "wildcard": sorted(seen["wildcard"]),
            "loopback_sockets_seen": len(seen["loopback"])}


def local(src: str, manifest: str, out: str, report: Path) -> dict:
    """``--ray local`` twice (the second run must find everything done), sockets watched throughout.

    With ``$LANGCOLOR_SCENARIO_SERVE`` (a model repository) the actors colour through a real
    tritonserver started here with the API key of ``$LANGCOLOR_SCENARIO_KEY_FILE`` (``--server``)."""
    env = {**os.environ, **RAY_ENV}
    cmd = _cli(src, manifest, out, "--ray", "local", "--batch-size", "2")
    repo = os.environ.get("LANGCOLOR_SCENARIO_SERVE")
    if not repo:
        result = {"interfaces": interface_addresses(), "first": _watched(cmd, env), "rerun": _watched(cmd, env)}
    else:
        from langcolor.client.connection import read_key_file
        from langcolor.server.launcher import TritonServer, free_ports

        key_file = os.environ["LANGCOLOR_SCENARIO_KEY_FILE"]
        http, grpc, metrics = free_ports(3)
        with TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, api_key=read_key_file(key_file),
                          log_path=report.with_suffix(".tritonserver.log")):
            cmd += ["--server", f"grpc://127.0.0.1:{grpc}", "--api-key-file", key_file]
            result = {"interfaces": interface_addresses(), "first": _watched(cmd, env), "rerun": _watched(cmd, env)}
    report.write_text(json.dumps(result, indent=1))
    return result


def s3(src: str, manifest: str, out: str, report: Path) -> dict:
    """A moto S3 server in this namespace; the archive uploaded under s3://archive/photos/ with its
    manifest; ``--ray local`` from there to s3://colour/run twice; everything under s3://colour/run
    downloaded to ``out`` for the test to look at."""
    from s3_server import S3_ENV, make_buckets, moto_binary, moto_server

    from langcolor.client.storage import S3Path, S3Store

    binary = moto_binary()
    assert binary, "no moto_server"
    env = {**os.environ, **RAY_ENV, **S3_ENV}
    os.environ.update(S3_ENV)
    result: dict = {"interfaces": interface_addresses()}
    with moto_server(binary, Path(report).with_suffix(".moto.log")) as endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
        store = S3Store(endpoint)
        make_buckets(endpoint, "archive", "colour")
        root = Path(src)
        for path in sorted(root.rglob("*")):
            if path.is_file():
                store.write(S3Path("archive", "photos/" + path.relative_to(root).as_posix()), path.read_bytes())
        store.write(S3Path("archive", "photos/captions.csv"), Path(manifest).read_bytes())
        cmd = [sys.executable, "-m", "langcolor.client.cli", "batch", "s3://archive/photos/captions.csv",
               "--output", "s3://colour/run", "--default-caption", "a gray square", "--max-pixels", "300000",
               "--no-progress", "--ray", "local", "--batch-size", "2"]
        result["first"] = _watched(cmd, env)
        result["after_first"] = sorted(store.list(S3Path("colour", "run")))
        result["rerun"] = _watched(cmd, env)
        listing = store.list(S3Path("colour", "run"))
        result["after_rerun"] = sorted(listing)
        for rel in listing:
            target = Path(out) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.read(S3Path("colour", "run/" + rel)))
        result["source_unchanged"] = all(
            store.read(S3Path("archive", "photos/" + p.relative_to(root).as_posix())) == p.read_bytes()
            for p in root.rglob("*") if p.is_file())
    report.write_text(json.dumps(result, indent=1))
    return result


def _rate(summary: str) -> tuple[int, float]:
    m = re.match(r"done (\d+), .* in ([\d.]+) s", summary)
    assert m, summary
    return int(m.group(1)), float(m.group(2))


BENCH_REPEATS = 3  # the machine is shared: each figure is the median of this many runs, spread shown


def bench(src: str, manifest: str, workdir: Path, report: Path) -> dict:
    env = {**os.environ, **RAY_ENV}
    rows: list[dict] = []

    def run(label: str, rep: int, *extra: str, **more_env: str) -> None:
        out = workdir / f"out-{label}-{rep}"
        t0 = time.monotonic()
        done = subprocess.run(_cli(src, manifest, str(out), "--batch-size", "4", *extra), capture_output=True,
                              text=True, env={**env, **more_env}, timeout=RUN_TIMEOUT_S)
        wall = time.monotonic() - t0
        assert done.returncode in (0, 1), done.stderr[-2000:]
        images, seconds = _rate(_summary(done.stdout))
        rows.append({"run": label, "repeat": rep, "images": images, "seconds": seconds,
                     "images_per_s": images / seconds, "wall_s": wall, "load_1m": os.getloadavg()[0]})

    transport = {}
    for rep in range(BENCH_REPEATS):
        # In-process, one inference thread and one I/O thread: the same work one actor does.
        run("plain-1-thread", rep, "--workers", "1", OMP_NUM_THREADS="1")
        run("plain-default", rep)
        with LoopbackCluster(workdir / f"one-{rep}") as cluster:
            env["RAY_ADDRESS"] = cluster.address
            run("ray-1-node", rep, "--ray", "auto")
        with LoopbackCluster(workdir / f"two-{rep}") as cluster:
            cluster.add_node()
            env["RAY_ADDRESS"] = cluster.address
            run("ray-2-nodes", rep, "--ray", "auto")
            if rep == 0:
                echo_report = workdir / "echo.json"
                echoed = subprocess.run([sys.executable, __file__, "echo", "-", "-", "-", str(echo_report)],
                                        capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S)
                assert echoed.returncode == 0, echoed.stderr[-2000:]
                transport = json.loads(echo_report.read_text())
    summary = {}
    for label in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == label]
        rates = sorted(r["images_per_s"] for r in mine)
        fixed = sorted(r["wall_s"] - r["seconds"] for r in mine)
        summary[label] = {"images_per_s_median": rates[len(rates) // 2], "images_per_s_min": rates[0],
                          "images_per_s_max": rates[-1], "ms_per_image_median": 1000 / rates[len(rates) // 2],
                          "start_and_stop_s_median": fixed[len(fixed) // 2]}
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "shared": "other engineers' training jobs ran throughout; see load_1m per run"},
              "git_revision": rev, "precision": "fp32, CPU onnxruntime", "batch_size": 4,
              "summary": summary, "transport": transport, "rows": rows}
    report.write_text(json.dumps(result, indent=1))
    return result


ECHO_BYTES = 80_000  # about a photo of the benchmark as it travels (bytes in, an encoded PNG back)
ECHO_CALLS = 200


def echo(report: Path) -> dict:
    """Ray's own cost per image: a round trip of ECHO_BYTES to an actor and back, one call at a time,
    to an actor on the driver's node and to one on the other node (median and p95, milliseconds)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    try:
        @ray.remote(num_cpus=0)
        class Echo:
            def back(self, data: bytes) -> bytes:
                return data

        payload = os.urandom(ECHO_BYTES)
        here = ray.get_runtime_context().get_node_id()
        result = {"bytes": ECHO_BYTES, "calls": ECHO_CALLS}
        for node in ray.nodes():
            if not node["Alive"]:
                continue
            actor = Echo.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
            for _ in range(20):  # warm-up
                ray.get(actor.back.remote(payload))
            times = []
            for _ in range(ECHO_CALLS):
                t0 = time.perf_counter()
                assert len(ray.get(actor.back.remote(payload))) == ECHO_BYTES
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            where = "same node" if node["NodeID"] == here else "other node"
            result[where] = {"p50_ms": times[len(times) // 2], "p95_ms": times[int(len(times) * 0.95)]}
    finally:
        ray.shutdown()
    report.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    mode, src, manifest, third, report = sys.argv[1:6]
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("scenario took too long")))
    signal.alarm(int(DEADLINE_S) if mode == "faults" else 1500)
    # Ray keeps state under $HOME (--ray local writes ~/.ray/auth_token, which a later driver would
    # then offer to a cluster that has no token, and be refused): a home of this run's own.
    if mode != "echo":  # echo runs as a driver of bench's cluster, with bench's home
        home = Path(report).parent / f"home-{mode}"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["HOME"] = str(home)
    # --ray local puts its session under $RAY_TMPDIR (default /tmp/ray, shared with anyone's Ray):
    # a short folder of this run's own (unix socket paths are limited to 107 bytes), removed after.
    ray_tmp = tempfile.mkdtemp(prefix="lcray-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = ray_tmp
    try:
        _run_mode(mode, src, manifest, third, report)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _run_mode(mode: str, src: str, manifest: str, third: str, report: str) -> None:
    if mode not in ("local", "s3") and not in_private_network():
        raise SystemExit("run me inside `unshare -n` (only lo up): Ray listens on every interface")
    if mode == "faults":
        workdir = Path(report).with_suffix(".d")
        workdir.mkdir(parents=True, exist_ok=True)
        faults(src, manifest, third, Path(report), workdir)
    elif mode == "bench":
        Path(third).mkdir(parents=True, exist_ok=True)
        print(json.dumps(bench(src, manifest, Path(third), Path(report)), indent=1))
    elif mode == "echo":
        echo(Path(report))
    elif mode == "local":
        local(src, manifest, third, Path(report))
    elif mode == "s3":
        s3(src, manifest, third, Path(report))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

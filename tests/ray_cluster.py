"""A real multi-node Ray cluster on this machine, kept on loopback: the tests' helper.

Each node is its own ``ray start --block`` process in its own session, on its own
loopback address (127.0.0.2 for the head, 127.0.0.3, ... for the others), with every port it opens
named. It is stopped by killing the processes of those sessions by id, never with ``ray stop`` (which kills
every Ray process on the machine, other people's included).

Ray 2.60 listens on all interfaces whatever ``--node-ip-address`` says (GCS, raylet and core-worker
ports bind ``*``), and rewrites 127.0.0.1 to the address of the default route's interface. So the
cluster is only loopback-only inside a network namespace that has nothing but ``lo``:
``in_private_network()`` re-runs a script there (``unshare -n``, root only), and
``socket_report()`` is the ``ss`` check that every socket stayed on 127.0.0.0/8.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HEAD_IP = "127.0.0.2"
NODE_IPS = ("127.0.0.3", "127.0.0.4")
OBJECT_STORE_BYTES = 100_000_000  # per node; the default (30% of memory) is far too much on a shared machine
START_TIMEOUT_S = 90.0
STOP_GRACE_S = 8.0  # after SIGTERM to a node's processes; then SIGKILL (raylet and GCS ignore a polite stop for ~10 s)
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}


def ray_binary() -> str | None:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.is_file() else shutil.which("ray")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_loopback(address: str) -> bool:
    """``ss`` prints 127.0.0.2:6379, [::ffff:127.0.0.2]:6379, [::1]:80, *:80 or 0.0.0.0:80."""
    host = address.rsplit(":", 1)[0].strip("[]")
    host = host.removeprefix("::ffff:")
    return host.startswith("127.") or host == "::1"


def interface_addresses() -> dict[str, list[str]]:
    """Interface -> its addresses, in this network namespace (netlink, not /sys, which shows the host's)."""
    found: dict[str, list[str]] = {}
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True, timeout=30).stdout
    for line in links.splitlines():
        found.setdefault(line.split(":")[1].strip().split("@")[0], [])
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True, timeout=30).stdout
    for line in out.splitlines():
        parts = line.split()
        found.setdefault(parts[1], []).append(parts[3])
    return found


def in_private_network() -> bool:
    """True when this network namespace has only ``lo``, with only loopback addresses (``unshare -n``)."""
    found = interface_addresses()
    return list(found) == ["lo"] and all(a.startswith("127.") or a == "::1/128" for a in found["lo"])


def socket_report() -> dict[str, list[str]]:
    """Every TCP/UDP socket of this namespace (``ss -tuanH``), sorted for the loopback rule:
    ``off_loopback`` (a local or peer address outside 127.0.0.0/8 and ::1: must stay empty),
    ``wildcard`` listeners (``*:PORT``: Ray binds these whatever it is told, so they are loopback-only
    exactly when ``in_private_network()``), and ``loopback`` (the rest)."""
    out = subprocess.run(["ss", "-tuanH"], capture_output=True, text=True, check=True, timeout=30).stdout
    report: dict[str, list[str]] = {"off_loopback": [], "wildcard": [], "loopback": []}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        local, peer = parts[4], parts[5]
        host = local.rsplit(":", 1)[0].strip("[]")
        peer_open = peer in ("*:*", "0.0.0.0:*", "[::]:*")
        if host in ("*", "0.0.0.0", "::") and peer_open:
            report["wildcard"].append(" ".join(parts))
        elif is_loopback(local) and (peer_open or is_loopback(peer)):
            report["loopback"].append(" ".join(parts))
        else:
            report["off_loopback"].append(" ".join(parts))
    return report


def private_network_command(argv: list[str], host_like: bool = False) -> list[str] | None:
    """``argv`` wrapped to run in a new network namespace with loopback up; None where that is not
    possible (not root, or ``unshare``/``ip`` missing). ``host_like`` adds what a real host has and
    Ray's address detection looks for: a second interface (a veth pair with 10.99.0.2/24, private to
    the namespace, nothing behind it) and a default route through it."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if os.geteuid() != 0 or unshare is None or ip is None:
        return None
    setup = f"{ip} link set lo up"
    if host_like:
        setup += (f" && {ip} link add lc0 type veth peer name lc1 && {ip} addr add 10.99.0.2/24 dev lc0"
                  f" && {ip} link set lc0 up && {ip} link set lc1 up && {ip} route add default via 10.99.0.1")
    quoted = " ".join(_quote(a) for a in argv)
    return [unshare, "-n", "sh", "-c", f"{setup} && exec {quoted}"]


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def session_pids(sid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process in session ``sid``. A session, not a process group:
    Ray puts each worker process in a group of its own, but they all stay in the node's session."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields_after_comm = stat.rsplit(")", 1)[1].split()
        if fields_after_comm[0] != "Z" and int(fields_after_comm[3]) == sid:
            found.append((int(entry), cmdline.strip()))
    return found


@dataclass
class Node:
    ip: str
    process: subprocess.Popen
    log: Path

    @property
    def sid(self) -> int:
        return self.process.pid  # started with start_new_session: its own session

    def pids(self) -> list[tuple[int, str]]:
        return session_pids(self.sid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """``sig`` to every process of the node: the ``ray start`` process, raylet, agents, workers."""
        for pid, _ in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


@dataclass
class LoopbackCluster:
    """``with LoopbackCluster(workdir) as c: c.add_node(); c.address``."""

    workdir: Path
    cpus_per_node: int = 1
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    temp_dir: Path | None = None

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.gcs_port}"

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def _flags(self, ip: str, index: int) -> list[str]:
        # Every port named, and separate worker port ranges: the nodes share this machine's ports.
        low = 21000 + 200 * index
        return [
            f"--node-ip-address={ip}", f"--node-manager-port={free_port(ip)}", f"--object-manager-port={free_port(ip)}",
            f"--metrics-export-port={free_port(ip)}", f"--dashboard-agent-listen-port={free_port(ip)}",
            f"--dashboard-agent-grpc-port={free_port(ip)}", f"--runtime-env-agent-port={free_port(ip)}",
            f"--min-worker-port={low}", f"--max-worker-port={low + 150}",
            f"--num-cpus={self.cpus_per_node}", f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats", "--block",
        ]

    def _spawn(self, args: list[str], ip: str) -> Node:
        binary = ray_binary()
        assert binary is not None, "the ray command is not installed"
        log = self.workdir / f"ray-node-{ip}.log"
        env = {**os.environ, **RAY_ENV}
        proc = subprocess.Popen([binary, "start", *args], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        node = Node(ip, proc, log)
        self.nodes.append(node)
        return node

    def start(self) -> "LoopbackCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to 107 bytes: a short folder of our own under /tmp.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="lcray-", dir="/tmp"))
        self.gcs_port = free_port(HEAD_IP)
        head = self._spawn(["--head", f"--port={self.gcs_port}", "--include-dashboard=false",
                            f"--temp-dir={self.temp_dir}", *self._flags(HEAD_IP, 0)], HEAD_IP)
        self._wait(lambda: _connects(HEAD_IP, self.gcs_port), head, "the head's GCS to accept connections")
        return self

    def add_node(self) -> Node:
        ip = NODE_IPS[len(self.nodes) - 1]
        node = self._spawn([f"--address={self.address}", *self._flags(ip, len(self.nodes))], ip)
        self._wait(lambda: self.alive_nodes() >= len(self.nodes), node, f"node {ip} to join")
        return node

    def alive_nodes(self) -> int:
        """Nodes the GCS counts as alive (``ray status`` would need the dashboard; this reads the raylet logs)."""
        count = 0
        for node in self.nodes:
            text = node.log.read_text(errors="replace") if node.log.exists() else ""
            if node.process.poll() is None and "Ray runtime started" in text:
                count += 1
        return count

    def _wait(self, ready, node: Node, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if node.process.poll() is not None:
                raise RuntimeError(f"ray node {node.ip} exited {node.process.returncode} waiting for {what}:\n"
                                   + node.log.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}:\n" + node.log.read_text(errors="replace")[-3000:])
            time.sleep(0.2)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(n.pids() for n in self.nodes):
            time.sleep(0.2)
        for node in self.nodes:
            node.kill(signal.SIGKILL)
            try:
                node.process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LoopbackCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False

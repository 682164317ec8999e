"""A project-local 3-node NATS cluster with JetStream (``wulian cluster up|down|status``).

Debian's ``nats-server`` (2.9: JetStream and clustering) runs as three processes on free loopback ports,
each with its own store under ``<stack dir>/nats/n<i>``; the ports and pids are written to
``cluster.json`` there, which is how routers, workers, ``status`` and ``down`` find the cluster. The
machine's own NATS (4222) is never used: ports are picked free and 4222 is refused. ``up`` may also start
routers and workers (``wulian router|worker`` child processes, logs ``<name>.log`` beside the nodes'),
recorded in the same file so ``status`` shows them and ``down`` stops them (before the nodes).

Authorization is always on: every node config includes ``accounts.conf`` (service accounts and the NATS
front door's device accounts, ``ingest.nats_accounts``), so no client connects without an account;
:attr:`ClusterState.urls` carries the service account, :attr:`ClusterState.addresses` is what to print.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wulian.ingest import nats_accounts
from wulian.ingest.chaos.stack import free_port, port_open

log = logging.getLogger(__name__)

NODES = 3
CLUSTER_NAME = "wulian"
SYSTEM_NATS_PORT = 4222  # a NATS the machine may run for something else: never ours
STATE_FILE = "cluster.json"
START_RETRIES = 2  # a fresh node that exits before listening is started again on new ports this often


@dataclass
class Node:
    name: str
    port: int
    cluster_port: int
    store: str
    pid: int | None = None
    mqtt_port: int | None = None  # nats-server's MQTT listener (cluster.front_door = "nats")


@dataclass
class Member:
    """A router or worker started by ``wulian cluster up --routers N --workers M``."""

    role: str  # "router" | "worker"
    name: str  # its --id: a router keeps its MQTT session (and its share) across restarts under it
    pid: int | None = None


ROLES = ("router", "worker")


@dataclass
class ClusterState:
    dir: str
    nodes: list[Node] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)

    @property
    def addresses(self) -> list[str]:
        """The nodes' URLs without credentials: for output and logs."""
        return [f"nats://127.0.0.1:{n.port}" for n in self.nodes]

    @property
    def urls(self) -> list[str]:
        """The nodes' URLs with the service account in them (``jetstream.connect`` passes it on to nats-py)."""
        from wulian.ingest.jetstream import with_account

        creds = nats_accounts.service_credentials(Path(self.dir))
        return [with_account(u, *creds) if creds else u for u in self.addresses]

    @property
    def mqtt_account(self) -> tuple[str, str]:
        """(user, password) for an MQTT client of the front door that is not a device: the simulator
        account (chaos and bench publishers, the front door's hello)."""
        creds = nats_accounts.service_credentials(Path(self.dir), nats_accounts.SIMULATOR_USER)
        if creds is None:
            raise RuntimeError(f"no NATS accounts in {self.dir}: run `wulian cluster up`")
        return creds

    def save(self) -> None:
        Path(self.dir, STATE_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, cdir: Path) -> "ClusterState | None":
        f = cdir / STATE_FILE
        if not f.exists():
            return None
        d = json.loads(f.read_text())
        return cls(d["dir"], [Node(**n) for n in d["nodes"]], [Member(**m) for m in d.get("members", [])])


def nats_server() -> str:
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.path.exists(exe):
        raise RuntimeError("nats-server is not installed: run `bash deploy/local/install.sh`")
    return exe


def _port() -> int:
    while True:
        p = free_port()
        if p != SYSTEM_NATS_PORT:
            return p


def node_conf(node: Node, peers: list[Node]) -> str:
    routes = ", ".join(f"nats-route://127.0.0.1:{p.cluster_port}" for p in peers if p.name != node.name)
    conf = (f'server_name: "{node.name}"\nlisten: "127.0.0.1:{node.port}"\n'
            f'include "{nats_accounts.INCLUDE_FILE}"\n'  # beside this file: authorization, every account
            f'jetstream {{ store_dir: "{node.store}", max_memory_store: 256MB, max_file_store: 8GB }}\n'
            f'cluster {{ name: "{CLUSTER_NAME}", listen: "127.0.0.1:{node.cluster_port}", routes: [{routes}] }}\n')
    if node.mqtt_port:  # QoS 1 stored in JetStream ($MQTT_msgs, 3 replicas) before the PUBACK
        conf += f'mqtt {{ listen: "127.0.0.1:{node.mqtt_port}", stream_replicas: {min(3, len(peers))} }}\n'
    return conf


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of this process is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def start_node(state: ClusterState, node: Node) -> None:
    """Start (or restart) one node with its existing config and store."""
    cdir = Path(state.dir)
    conf = cdir / f"{node.name}.conf"
    conf.write_text(node_conf(node, state.nodes))
    log = open(cdir / f"{node.name}.log", "ab")
    proc = subprocess.Popen([nats_server(), "-c", str(conf)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    node.pid = proc.pid
    state.save()


def up(cdir: Path, timeout: float = 45.0, mqtt: bool = False, prefix: str = "wl") -> ClusterState:
    """Start the three nodes (reusing the ports of a previous run, so stores and routes stay valid);
    ``mqtt``: each also listens for MQTT (the lossless front door, ``ingest.nats_front_door``). The
    accounts (``ingest.nats_accounts``) are created on the first run, kept afterwards."""
    cdir.mkdir(parents=True, exist_ok=True)
    nats_accounts.ensure_store(cdir, prefix)
    state = ClusterState.load(cdir)
    fresh = state is None
    if fresh:
        state = ClusterState(str(cdir))
        for i in range(1, NODES + 1):
            state.nodes.append(Node(f"n{i}", _port(), _port(), str(cdir / f"n{i}")))
    for n in state.nodes:
        if mqtt and not n.mqtt_port:
            n.mqtt_port = _port()
    for n in state.nodes:
        if not _alive(n.pid):
            start_node(state, n)
    state.save()
    deadline = time.monotonic() + timeout
    restarts = 0
    # alive and listening: a port can be open because another process holds it while our node died
    while not all(_alive(n.pid) and port_open(n.port) for n in state.nodes):
        dead = [n for n in state.nodes if not _alive(n.pid)]
        if dead and restarts < START_RETRIES:
            # a node that exited before listening: most often a port another process took between
            # free_port() and the bind (CI saw a fresh cluster not start once); a fresh cluster owns no
            # store yet, so its ports may move, while a restarted one keeps them (its routes and store)
            restarts += 1
            log.warning("NATS node(s) %s exited while starting (%s); starting again",
                        ", ".join(n.name for n in dead), _log_tail(cdir, dead[0]))
            for n in dead:
                if fresh:
                    n.port, n.cluster_port = _port(), _port()
                    n.mqtt_port = _port() if n.mqtt_port else None
            for n in state.nodes:  # every node's routes name the new ports
                (cdir / f"{n.name}.conf").write_text(node_conf(n, state.nodes))
            for n in dead:
                start_node(state, n)
            deadline = max(deadline, time.monotonic() + timeout / 2)
        if time.monotonic() > deadline:
            tails = "; ".join(f"{n.name}: {_log_tail(cdir, n)}" for n in state.nodes
                              if not (_alive(n.pid) and port_open(n.port)))
            raise RuntimeError(f"NATS cluster did not start within {timeout:.0f}s ({tails}); see {cdir}/n*.log")
        time.sleep(0.05)
    return state



def _log_tail(cdir: Path, node: Node, chars: int = 300) -> str:
    try:
        text = (cdir / f"{node.name}.log").read_text(errors="replace").strip()
    except OSError:
        return "no log"
    return text[-chars:].replace("\n", " | ") or "empty log"


def reload(cdir: Path) -> int:
    """SIGHUP every live node of the cluster in ``cdir``: it rereads its config and ``accounts.conf``
    (a removed account's connections are closed). Returns how many nodes were signalled."""
    state = ClusterState.load(cdir)
    n = 0
    for node in state.nodes if state else []:
        if _alive(node.pid):
            os.kill(node.pid, signal.SIGHUP)
            n += 1
    return n


def start_member(state: ClusterState, role: str, name: str, env: dict[str, str] | None = None) -> Member:
    """Start ``wulian <role> --id <name>`` (or restart it under the same id), logging to ``<name>.log``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    m = next((x for x in state.members if x.name == name), None)
    if m is None:
        m = Member(role, name)
        state.members.append(m)
    if not _alive(m.pid):
        with open(Path(state.dir) / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "wulian", role, "--id", name], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        m.pid = proc.pid
    state.save()
    return m


def scale(state: ClusterState, routers: int, workers: int, env: dict[str, str] | None = None) -> None:
    """Make sure routers r1..rN and workers w1..wM run (members beyond N or M are left as they are)."""
    for role, n in (("router", routers), ("worker", workers)):
        for i in range(1, n + 1):
            start_member(state, role, f"{role[0]}{i}", env)


def stop_pid(pid: int | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if not _alive(pid):
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        try:  # reap it when it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    if _alive(pid):  # did not stop in time: no orphan left holding partitions or a session
        os.kill(pid, signal.SIGKILL)


def stop_members(state: ClusterState) -> None:
    """Routers first (no new intake), then workers (they commit what they hold); NATS stays up."""
    for role in ROLES:
        for m in state.members:
            if m.role == role:
                stop_pid(m.pid)
                m.pid = None
    state.save()


def stop_node(node: Node, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if not _alive(node.pid):
        return
    os.kill(node.pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(node.pid) and time.monotonic() < deadline:
        try:  # reap it when it is our child
            os.waitpid(node.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)


def down(cdir: Path) -> bool:
    state = ClusterState.load(cdir)
    if state is None:
        return False
    stop_members(state)
    for n in state.nodes:
        stop_node(n)
        n.pid = None
    state.save()
    return True


def status(cdir: Path) -> dict:
    state = ClusterState.load(cdir)
    if state is None:
        return {"dir": str(cdir), "nodes": [], "running": 0, "members": []}
    nodes = [{"name": n.name, "url": f"nats://127.0.0.1:{n.port}", "pid": n.pid,
              "up": _alive(n.pid) and port_open(n.port)}
             | ({"mqtt": f"mqtt://127.0.0.1:{n.mqtt_port}"} if n.mqtt_port else {}) for n in state.nodes]
    members = [{"role": m.role, "name": m.name, "pid": m.pid, "up": _alive(m.pid),
                "log": str(Path(state.dir) / f"{m.name}.log")} for m in state.members if m.pid]
    return {"dir": str(cdir), "nodes": nodes, "running": sum(x["up"] for x in nodes), "members": members}

"""``nats_cluster.up`` starts a fresh cluster even when a node's port is taken between choosing and binding
(CI once saw a fresh cluster not start: every cluster test errored at setup)."""
import shutil
import socket

from wulian.ingest import nats_cluster
from wulian.ingest.chaos.stack import free_port
from tests.conftest import ROOT


def test_a_fresh_node_whose_port_was_taken_starts_on_new_ports(monkeypatch, tmp_path):
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    ports = iter([taken])  # the first node's client port is already someone else's
    monkeypatch.setattr(nats_cluster, "_port", lambda: next(ports, None) or free_port())
    cdir = ROOT / ".stack" / f"test-nats-start-{tmp_path.name}"
    try:
        state = nats_cluster.up(cdir, timeout=30)
        n1 = state.nodes[0]
        assert n1.port != taken and nats_cluster.port_open(n1.port)
        assert all(nats_cluster.port_open(n.port) for n in state.nodes)
        assert nats_cluster.ClusterState.load(cdir).nodes[0].port == n1.port  # the move was saved
        assert "address already in use" in (cdir / "n1.log").read_text().lower()  # it did fail once
    finally:
        squatter.close()
        nats_cluster.down(cdir)
        shutil.rmtree(cdir, ignore_errors=True)

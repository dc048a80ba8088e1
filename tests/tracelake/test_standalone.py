"""`tracelake cluster start|stop` (tracelake/standalone.py): refuses ports that are taken, starts and stops for real.

The real start runs a master and one worker JVM from the installed pyspark on
free loopback ports and always stops them; the port checks start nothing.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tracelake import cli, standalone


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def listening():
    """A port something already listens on (as another cluster's master or Airflow's API server would)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("taken", ["--port", "--webui-port"])
def test_start_refuses_a_port_in_use_and_launches_nothing(taken, listening, tmp_path, capsys):
    ports = {"--port": free_port(), "--webui-port": free_port(), taken: listening}
    state_dir = tmp_path / "cluster"
    argv = ["cluster", "start", "--state-dir", str(state_dir), "--workers", "1"]
    code = cli.main([*argv, *(str(x) for pair in ports.items() for x in pair)])

    what = "master port" if taken == "--port" else "web UI port"
    assert code == 2
    error = capsys.readouterr().err
    assert f"{what} {listening} on 127.0.0.1 already in use" in error and "--port / --webui-port" in error
    assert not (state_dir / "cluster.json").exists()  # nothing launched, nothing to stop


def test_stop_without_a_recorded_cluster_says_so(tmp_path, capsys):
    assert cli.main(["cluster", "stop", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"no cluster recorded in {tmp_path.resolve()}"


def test_start_registers_a_worker_a_second_start_on_its_ports_is_refused_and_stop_ends_both(tmp_path):
    port, webui = free_port(), free_port()
    first = tmp_path / "first"
    state = standalone.start(first, workers=1, memory_per_worker="512m", port=port, webui_port=webui)
    pids = [state.master_pid, *state.worker_pids]
    try:
        assert state.master_url == f"spark://127.0.0.1:{port}"
        assert json.loads((first / "cluster.json").read_text())["worker_pids"] == state.worker_pids
        assert all(alive(pid) for pid in pids) and masters_on(port) == [state.master_pid]
        # Same ports again: refused before anything starts (a second master would not bind and
        # its workers would join the first one).
        with pytest.raises(standalone.ClusterError, match=f"master port {port} and web UI port {webui}"):
            standalone.start(tmp_path / "second", workers=1, port=port, webui_port=webui)
        assert not (tmp_path / "second" / "cluster.json").exists()
    finally:
        stopped = standalone.stop(first)
    assert stopped and not (first / "cluster.json").exists()
    assert [pid for pid in pids if alive(pid)] == []


def masters_on(port: int) -> list[int]:
    """Pids of Spark masters started with ``--port <port>`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"org.apache.spark.deploy.master.Master" in args
            and b"--port" in args
            and args[args.index(b"--port") + 1] == str(port).encode()
        ):
            found.append(int(entry.name))
    return found


def test_a_start_that_fails_stops_what_it_had_launched(tmp_path):
    port, webui = free_port(), free_port()
    state_dir = tmp_path / "cluster"
    # The master cannot be listening 10 ms after its launch: start gives up, and cleans up.
    with pytest.raises(
        standalone.ClusterError,
        match=rf"the master does not listen on 127.0.0.1:{port} after 0.01s; "
        rf"stopped what had started, logs in {state_dir}",
    ):
        standalone.start(state_dir, workers=1, port=port, webui_port=webui, timeout_s=0.01)
    assert not (state_dir / "cluster.json").exists()
    assert masters_on(port) == []

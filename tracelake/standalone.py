"""A Spark standalone cluster on loopback, started from the installed pyspark.

How it is laid out (ports, processes, JARs) is its `--help` (``tracelake.arguments.CLUSTER_DESCRIPTION``,
one text for both).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tracelake.arguments import parse
from tracelake.errors import TracelakeError

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
DEFAULT_PORT = 7077
DEFAULT_WEBUI_PORT = 8090  # Spark's 8080 is Airflow's API server (airflow standalone)
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


class ClusterError(TracelakeError, RuntimeError):
    """The local standalone cluster could not be started or reached."""


@dataclass
class ClusterState:
    master_url: str
    master_pid: int
    worker_pids: list[int] = field(default_factory=list)
    log_dir: str = ""


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.5)
    raise ClusterError(f"the master does not listen on {host}:{port} after {timeout_s:g}s")


def _port_taken(host: str, port: int) -> bool:
    """True when something already listens on (or holds) ``host:port``.

    Checked before launching anything: otherwise a second master would fail to
    bind while the workers register with whatever already answers there (another
    cluster's master), or the web UI would move to the next free port while
    start() asks the old one (e.g. Airflow's API server) for the workers.
    """
    with socket.socket() as sock:
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # TIME_WAIT of a stopped cluster is no owner
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _launch(args: list[str], log_file: Path, env: dict[str, str]) -> int:
    spark_class = _spark_home() / "bin" / "spark-class"
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [str(spark_class), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # outlives this command; stopped by `stop`
        )
    return process.pid


def start(
    state_dir: Path,
    *,
    workers: int = 2,
    cores_per_worker: int = 1,
    memory_per_worker: str = "2g",
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    webui_port: int = DEFAULT_WEBUI_PORT,
    timeout_s: float = 60.0,
) -> ClusterState:
    """Start a master and ``workers`` workers; returns once all have registered."""
    state_file = state_dir / "cluster.json"
    if state_file.exists():
        raise ClusterError(
            f"a cluster is already recorded in {state_file}; run `tracelake cluster stop` first"
        )
    taken = [
        f"{what} {number}"
        for what, number in (("master port", port), ("web UI port", webui_port))
        if _port_taken(host, number)
    ]
    if taken:
        raise ClusterError(
            f"{' and '.join(taken)} on {host} already in use (another Spark cluster, Airflow's API server?); "
            "stop what holds it or choose free ports with --port / --webui-port"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("SPARK_HOME", str(_spark_home()))
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env["SPARK_LOCAL_IP"] = host
    env.setdefault("SPARK_LOG_DIR", str(state_dir))
    master_pid = _launch(
        [MASTER_CLASS, "--host", host, "--port", str(port), "--webui-port", str(webui_port)],
        state_dir / "master.log",
        env,
    )
    state = ClusterState(master_url=f"spark://{host}:{port}", master_pid=master_pid, log_dir=str(state_dir))
    state_file.write_text(json.dumps(asdict(state)))
    try:
        _start_workers(
            state,
            state_dir,
            env,
            workers=workers,
            cores_per_worker=cores_per_worker,
            memory_per_worker=memory_per_worker,
            host=host,
            port=port,
            webui_port=webui_port,
            timeout_s=timeout_s,
        )
    except ClusterError as exc:
        stop(state_dir)  # a failed start leaves no JVM behind
        raise ClusterError(f"{exc}; stopped what had started, logs in {state_dir}") from exc
    except BaseException:  # Ctrl-C while waiting: the same
        stop(state_dir)
        raise
    return state


def _start_workers(
    state: ClusterState,
    state_dir: Path,
    env: dict[str, str],
    *,
    workers: int,
    cores_per_worker: int,
    memory_per_worker: str,
    host: str,
    port: int,
    webui_port: int,
    timeout_s: float,
) -> None:
    """Wait for the master, launch the workers (recorded one by one), wait until all registered."""
    state_file = state_dir / "cluster.json"
    _wait_for_port(host, port, timeout_s)
    for index in range(workers):
        work_dir = state_dir / f"worker-{index}"
        work_dir.mkdir(exist_ok=True)
        state.worker_pids.append(
            _launch(
                [
                    WORKER_CLASS,
                    state.master_url,
                    "--host",
                    host,
                    "--cores",
                    str(cores_per_worker),
                    "--memory",
                    memory_per_worker,
                    "--work-dir",
                    str(work_dir),
                    "--webui-port",
                    str(webui_port + 1 + index),
                ],
                state_dir / f"worker-{index}.log",
                env,
            )
        )
        state_file.write_text(json.dumps(asdict(state)))
    _wait_for_workers(state, webui_port, workers, timeout_s)


def _wait_for_workers(state: ClusterState, webui_port: int, expected: int, timeout_s: float) -> None:
    import urllib.request

    host = state.master_url.removeprefix("spark://").split(":")[0]
    deadline = time.monotonic() + timeout_s
    alive = 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host}:{webui_port}/json/", timeout=2) as response:
                info = json.load(response)
            alive = sum(1 for w in info.get("workers", []) if w.get("state") == "ALIVE")
            if alive >= expected:
                return
        except (OSError, ValueError):  # not up yet, or not a Spark master answering
            pass
        time.sleep(1)
    raise ClusterError(
        f"only {alive} of {expected} workers registered with {state.master_url} in {timeout_s:g}s"
    )


def stop(state_dir: Path) -> bool:
    """Stop the recorded cluster (workers first); False when none is recorded."""
    state_file = state_dir / "cluster.json"
    if not state_file.exists():
        return False
    state = ClusterState(**json.loads(state_file.read_text()))
    for pid in [*state.worker_pids, state.master_pid]:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for pid in [*state.worker_pids, state.master_pid]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if _exited(pid):
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _exited(pid)
    state_file.unlink()
    return True


def _exited(pid: int) -> bool:
    """True once ``pid`` is gone. When this process started the cluster (a benchmark, a test)
    the JVMs are its children: reap them here, or they stay zombies that look alive."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:  # not our child (started by an earlier `tracelake cluster start`)
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse("cluster", argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state_dir = Path(args.state_dir).resolve()
    if args.action == "start":
        state = start(
            state_dir,
            workers=args.workers,
            cores_per_worker=args.cores_per_worker,
            memory_per_worker=args.memory_per_worker,
            port=args.port,
            webui_port=args.webui_port,
        )
        print(f"master {state.master_url} with {len(state.worker_pids)} workers; logs in {state.log_dir}")
    else:
        print("stopped" if stop(state_dir) else f"no cluster recorded in {state_dir}")
    return 0

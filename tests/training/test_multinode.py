"""Multi-node training: `torchrun --nnodes=2 --nproc_per_node=1 --rdzv-backend=c10d ... -m leukoscope train`.

Two "nodes" are two torchrun agents on loopback (gloo, one CPU process each), each in a working directory of
its own with a relative `--out-dir`, so that a file written by the wrong rank would show up in the wrong
node's folder. Node A hosts the rendezvous store (`is_host=1`), as the first node of a real allocation does.
The slow test runs one scenario: the two nodes train, node B is killed (-9, agent and worker) once epoch 1 is
saved, the survivor stops with one line, and both are relaunched with `--resume`. The other tests check
leukoscope.training.distributed without processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import torch

from leukoscope.errors import ConfigError, DataError
from leukoscope.models.checkpoint import read_checkpoint
from leukoscope.training import distributed
from leukoscope.training.config import TrainConfig, resolve_config
from leukoscope.training.distributed import DistContext, DistributedError, check_same_run, init_from_env, run_facts
from leukoscope.training.loop import fit
from tests.helpers.images import build_dataset

# Weights may differ from a single process's by float rounding alone: DDP averages the two ranks' mean
# gradients (g0 + g1) / 2 in its own order where one process sums the same 4 per-image terms in another.
# That is ~1e-7 per step; 1e-4 leaves room for Adam's normalisation and 6 steps, and catches any real
# difference (another batch, another order or a lost step moves weights by ~1e-3 and more).
TOLERANCE = 1e-4
HANG_GUARD_S = 300  # only stops a hung test; nothing asserts how long a step takes

# Global batch 4: 2 per process x 2 processes, 4 for the single process. Without augmentation, dropout and
# the class-weighted loss (each draws or weighs per rank, see docs/DISTRIBUTED.md), with BatchNorm frozen (the
# default): DDP then computes the single process's gradient.
OPTIONS = {"backbone": "test_efficientnet", "weights": "none", "warmup_epochs": 0, "epochs": 2, "device": "cpu",
           "name": "mn", "input_size": 32, "near_duplicate_distance": -1, "workers": 1, "augment": "none",
           "drop_rate": 0, "class_balance": "none"}
TRAINING = ("--quiet", *(arg for key, value in OPTIONS.items() for arg in ("--set", f"{key}={value}")))

# Runs the CLI like `python -m leukoscope`, records this worker's pid (torchrun gives each worker a session
# of its own, so killing a node means killing its agent's and its worker's), and on node PAUSE_NODE stops
# after saving epoch 1: the node to kill, with a checkpoint on disk and the other node waiting for it.
SPY = textwrap.dedent("""
    import os, sys, time
    from leukoscope.training import loop as training
    from leukoscope.cli import main

    node, markers = os.environ["NODE"], sys.argv[1]

    def mark(name, text):  # atomically: the test polls for the file and reads it at once
        temporary = os.path.join(markers, "." + name + ".tmp")  # outside the test's worker-* globs
        with open(temporary, "w") as file:
            file.write(text)
        os.replace(temporary, os.path.join(markers, name))

    mark(f"worker-{node}-{os.getpid()}", os.environ["RANK"])
    save_epoch = training._save_epoch

    def spy(session, state, row, payload, improved):
        save_epoch(session, state, row, payload, improved)
        if os.environ.get("PAUSE_NODE") == node and row["epoch"] == 1:
            mark(f"paused-{node}", f"{os.getpid()} {os.environ['RANK']}")
            time.sleep(600)

    training._save_epoch = spy
    main(sys.argv[2:])
""")


# ------------------------------------------------------------------------------- without processes


def test_timeouts_come_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(distributed.SETUP_TIMEOUT_ENV, raising=False)
    assert distributed.timeout_seconds(distributed.TIMEOUT_ENV, 300.0) == 300.0
    assert distributed.setup_timeout_seconds() == distributed.DEFAULT_SETUP_TIMEOUT_S
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7200")
    assert distributed.setup_timeout_seconds() == 7200.0  # never shorter than the epochs' timeout
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=distributed.TIMEOUT_ENV):
            distributed.timeout_seconds(distributed.TIMEOUT_ENV, 300.0)


def test_joining_uses_the_timeout_then_the_setup_allowance(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "12")
    monkeypatch.setenv(distributed.SETUP_TIMEOUT_ENV, "900")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(distributed, "_set_timeout", lambda seconds: calls.append(("set", seconds)))
    assert init_from_env("cpu") == DistContext(rank=1, world_size=2, local_rank=0)
    assert [(name, value if name == "set" else (value["backend"], value["timeout"].total_seconds()))
            for name, value in calls] == [("init", ("gloo", 12.0)), ("set", 900.0)]

    def unreachable(**kw):
        raise RuntimeError("[/gloo/transport/tcp/pair.cc:1] Timed out waiting 12000ms for connect. Advice.\nmore")

    monkeypatch.setattr(distributed.dist, "init_process_group", unreachable)
    with pytest.raises(DistributedError) as caught:
        init_from_env("cpu")
    assert str(caught.value) == (f"rank 1 waited 12 s ({distributed.TIMEOUT_ENV}) for the other 1 rank(s) to join, in "
                                 "vain; see their nodes' output (Timed out waiting 12000ms for connect)")


def test_collective_failures_are_told_apart_from_bugs():
    assert distributed.is_peer_failure(RuntimeError("[../gloo/pair.cc:561] Connection closed by peer [10.0.0.2]:1"))
    assert distributed.is_peer_failure(RuntimeError("NCCL communicator was aborted"))
    assert not distributed.is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not distributed.is_peer_failure(ValueError("gloo"))


class _TwoRanks(DistContext):
    """Rank 0 of two, whose peer answers every gather with `peer` (no process group)."""

    def __init__(self, peer) -> None:
        super().__init__(rank=0, world_size=2)
        object.__setattr__(self, "peer", peer)

    def gather(self, value):
        return [value, self.peer]


def test_a_rank_that_fails_setting_up_stops_every_rank_with_its_line():
    with DistContext().together():  # alone: nothing to tell
        pass
    with pytest.raises(DistributedError) as caught, _TwoRanks(("cannot write to run folder runs/x", 2, "node-b")).together():
        pass
    assert str(caught.value) == "rank 1 (on node-b) failed: cannot write to run folder runs/x"
    assert caught.value.exit_code == 2
    with pytest.raises(DataError, match="no usable images"), _TwoRanks(None).together():
        raise DataError("no usable images in /data")  # the failing rank keeps its own error


def test_ranks_that_would_train_different_runs_are_refused():
    config = TrainConfig(data="/mnt/a/ALL", out_dir="runs")
    check_same_run(DistContext(), config.to_dict(), "d1", 1)  # alone: nothing to compare

    def peer(options=None, data="d1", epoch=1) -> _TwoRanks:
        return _TwoRanks(run_facts({**config.to_dict(), **(options or {})}, data, epoch))

    check_same_run(peer(options={"data": "/nfs/ALL", "out_dir": "/scratch/runs"}), config.to_dict(), "d1", 1)
    with pytest.raises(DistributedError, match="different training options"):
        check_same_run(peer(options={"lr": 0.1}), config.to_dict(), "d1", 1)
    with pytest.raises(DistributedError, match=r"rank\(s\) \[1\] see other images"):
        check_same_run(peer(data="d2"), config.to_dict(), "d1", 1)
    with pytest.raises(DistributedError, match=r"rank 0: 1, rank 1: 0.*shares"):
        check_same_run(peer(epoch=0), config.to_dict(), "d1", 1)


# --------------------------------------------------------------------------------- two torchrun nodes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Nodes:
    """Starts torchrun "nodes" (each its own session, working directory and logs) and kills them all at the end."""

    def __init__(self, root: Path) -> None:
        self.root, self.markers, self.agents = root, root / "markers", []
        self.markers.mkdir()
        (root / "spy_train.py").write_text(SPY)

    def workdir(self, node: str) -> Path:
        return self.root / f"node{node}"

    def start(self, node: str, port: int, rdzv_id: str, args: tuple[str, ...], pause: str = "") -> subprocess.Popen:
        self.workdir(node).mkdir(exist_ok=True)
        log = self.root / f"{node}-{rdzv_id[:8]}.log"
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={rdzv_id}",
                   f"--rdzv-conf=is_host={int(node == 'A')}", str(self.root / "spy_train.py"), str(self.markers),
                   "train", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NODE": node, "PAUSE_NODE": pause,
               distributed.TIMEOUT_ENV: "20"}  # the survivor's bound, should the dead peer not close its sockets
        with log.open("w") as out:
            agent = subprocess.Popen(command, cwd=self.workdir(node), env=env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        agent.log, agent.node = log, node
        self.agents.append(agent)
        return agent

    def kill(self, agent: subprocess.Popen) -> None:
        """kill -9 a node: its agent's session and its worker's (torchrun starts each worker in its own)."""
        sessions = [agent.pid]
        for marker in self.markers.glob(f"worker-{agent.node}-*"):
            pid = int(marker.name.rsplit("-", 1)[1])
            with contextlib.suppress(OSError):  # still our worker (not a reused pid)?
                if b"spy_train.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    sessions.append(pid)
        for session in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(session, signal.SIGKILL)
        agent.wait(timeout=30)

    def wait_for(self, path: Path, agents: list[subprocess.Popen], what: str) -> None:
        """Wait until `path` exists; fail at once when a node exits first (the deadline only guards a hang)."""
        deadline = time.monotonic() + HANG_GUARD_S
        while not path.exists():
            for agent in agents:
                if agent.poll() is not None:
                    pytest.fail(f"{what}: a node exited with {agent.returncode}:\n{agent.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: still waiting after {HANG_GUARD_S} s")
            time.sleep(0.1)

    def close(self) -> None:
        for agent in self.agents:
            if agent.poll() is None:
                self.kill(agent)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_two_nodes_train_like_one_process_and_resume_after_a_node_is_killed(tmp_path):
    data = build_dataset(tmp_path / "ALL")  # 24 images: 12 train (6 steps of 2 per rank), 4 val, 8 test
    nodes = _Nodes(tmp_path)
    try:
        port, rdzv = _free_port(), uuid.uuid4().hex
        args = (str(data), *TRAINING, "--batch-size", "2", "--out-dir", "runs")
        agents = {node: nodes.start(node, port, rdzv, args, pause="B") for node in "AB"}

        # Meanwhile the single-process reference, in this process: the same options, batch 4.
        reference: dict[int, dict[str, torch.Tensor]] = {}
        ref_run = tmp_path / "reference" / "mn"
        config = resolve_config("finetune", overrides={**OPTIONS, "data": str(data), "batch_size": 4,
                                                       "out_dir": str(ref_run.parent)})
        fit(config, quiet=True, on_epoch_end=lambda epoch, row: reference.update({epoch: read_checkpoint(ref_run / "last.pt")}))

        # Node B stops after epoch 1; rank 0 (on A or B) has written its run folder under its own working dir.
        nodes.wait_for(nodes.markers / "paused-B", list(agents.values()), "epoch 1")
        b_rank = int((nodes.markers / "paused-B").read_text().split()[1])
        main, other = ("A", "B") if b_rank == 1 else ("B", "A")
        run = nodes.workdir(main) / "runs" / "mn"
        nodes.wait_for(run / "metrics.csv", list(agents.values()), "epoch 1's files")
        epoch1 = read_checkpoint(run / "last.pt")
        assert epoch1["epoch"] == 1
        assert _max_diff(epoch1["model"], reference[1]["model"]) <= TOLERANCE  # (a) after epoch 1
        assert _files(nodes.workdir(other)) == []  # (b) rank 1 wrote nothing, not even in its own --out-dir
        rows_before = (run / "metrics.csv").read_text().splitlines()

        # (c) kill -9 node B; the survivor stops, with one line, instead of waiting for it (torch's default
        # timeout is 30 min; here a closed socket stops it at once, LEUKOSCOPE_DIST_TIMEOUT=20 s at the latest).
        nodes.kill(agents["B"])
        try:
            survivor = agents["A"].wait(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            pytest.fail("the surviving node did not stop after its peer was killed")
        log = agents["A"].log.read_text()
        assert survivor != 0, log[-3000:]
        errors = [line for line in log.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "training stopped, another rank failed or cannot be reached" in errors[0], log[-3000:]
        assert "last.pt holds epoch 1/2; relaunch torchrun on every node with `leukoscope train --resume runs/mn`" in errors[0]
        assert read_checkpoint(run / "last.pt")["epoch"] == 1

        # Both nodes again, with --resume on the shared run folder: the run ends as if never interrupted.
        port, rdzv = _free_port(), uuid.uuid4().hex
        again = {node: nodes.start(node, port, rdzv, ("--resume", str(run), "--quiet")) for node in "AB"}
        for node, agent in again.items():
            try:
                code = agent.wait(timeout=HANG_GUARD_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"node {node} did not finish the resumed run")
            assert code == 0, agent.log.read_text()[-3000:]
        last = read_checkpoint(run / "last.pt")
        assert last["epoch"] == 2
        assert _max_diff(last["model"], reference[2]["model"]) <= TOLERANCE  # (a) and (c): the whole run
        rows = (run / "metrics.csv").read_text().splitlines()
        assert rows[:2] == rows_before and [r.split(",")[:2] for r in rows[1:]] == [["1", "main"], ["2", "main"]]
        assert (run / "summary.json").is_file() and not [p for p in run.iterdir() if p.name.endswith(".tmp")]
        assert _files(nodes.workdir(other)) == []  # (b) again: nothing written outside the run folder
    finally:
        nodes.close()

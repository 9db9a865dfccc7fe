"""leukoscope.training.distributed and DDP training: the same `leukoscope train` command under torchrun, here with
two CPU processes (gloo) on loopback, a head-only warm-up on cached views and a full main stage."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from leukoscope.models.checkpoint import read_checkpoint
from leukoscope.models.factory import ModelSpec, create_model
from leukoscope.training.distributed import DistContext, init_from_env, shutdown
from tests.helpers.images import build_dataset

RUN_FILES = ("config.yaml", "manifest.csv", "split.csv", "env.json", "metrics.csv", "best.pt", "last.pt", "summary.json")

# Runs the CLI like `python -m leukoscope`, and has every rank save the weights of every epoch it ends.
SPY = textwrap.dedent("""
    import os, sys
    import torch
    from leukoscope.training import loop as training
    from leukoscope.cli import main

    spy_dir = sys.argv[1]
    save_epoch = training._save_epoch

    def spy(session, progress, row, payload, improved):
        name = f"rank{os.environ['RANK']}-epoch{row['epoch']}.pt"
        torch.save(payload["model"], os.path.join(spy_dir, name))
        return save_epoch(session, progress, row, payload, improved)

    training._save_epoch = spy
    main(sys.argv[2:])
""")


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_from_env("cpu")
    assert ctx == DistContext() and not ctx.enabled and ctx.is_main
    ctx.barrier()
    tensor = torch.ones(3)
    assert ctx.all_reduce_sum(tensor) is tensor and torch.equal(tensor, torch.ones(3))
    shutdown(ctx)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not init_from_env("cpu").enabled
    assert DistContext(rank=1, world_size=2).enabled and not DistContext(rank=1, world_size=2).is_main


@pytest.mark.slow
def test_torchrun_with_two_cpu_processes_trains_identical_replicas(tmp_path):
    data = build_dataset(tmp_path / "ALL")
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir()
    script = tmp_path / "spy_train.py"
    script.write_text(SPY)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(spy_dir), "train", str(data), "--backbone", "test_efficientnet", "--weights", "none",
               "--warmup-epochs", "1", "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--quiet",
               "--out-dir", str(tmp_path / "runs"), "--name", "ddp", "--set", "input_size=32",
               "--set", "frozen_views=2", "--set", "near_duplicate_distance=-1", "--set", "workers=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("macro-F1") == 1  # rank 0 alone reports

    run = tmp_path / "runs" / "ddp"
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert [line.split(",")[:2] for line in (run / "metrics.csv").read_text().splitlines()[1:]] == [
        ["1", "warmup"], ["2", "main"]]

    torch.manual_seed(0)  # what fit does before building the model (seed 0)
    reference = create_model(ModelSpec("test_efficientnet", num_classes=4), weights="none").state_dict()
    last = read_checkpoint(run / "last.pt")
    assert last["epoch"] == 2 and {k: v.shape for k, v in last["model"].items()} == {
        k: v.shape for k, v in reference.items()}
    replicas = {(rank, epoch): torch.load(spy_dir / f"rank{rank}-epoch{epoch}.pt") for rank in (0, 1) for epoch in (1, 2)}
    for epoch in (1, 2):
        for key, value in replicas[0, epoch].items():
            assert torch.equal(value, replicas[1, epoch][key]), (epoch, key)
    for key, value in last["model"].items():
        assert torch.equal(value, replicas[0, 2][key]), key
    for key, value in replicas[0, 1].items():  # the warm-up trained the head alone
        assert torch.equal(value, reference[key]) != key.startswith("classifier."), key
    assert not torch.equal(replicas[0, 1]["conv_stem.weight"], replicas[0, 2]["conv_stem.weight"])  # then all

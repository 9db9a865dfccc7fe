"""Fast as typed (issue #11 item 3): the same work in a plain shell and under `make`, in one run.

The Makefile exports glibc's MALLOC_* variables (about 2x for PyTorch CPU training here); users typing
`leukoscope train ...` do not have them, so every entry point applies the same settings with mallopt
(leukoscope.runtime). Each workload runs in fresh processes, rounds interleaved so a load change hits every
way alike, three ways:
- `as typed`: a plain environment (what a user gets now: leukoscope.runtime's mallopt);
- `make`: the Makefile's variables (leukoscope.runtime leaves them alone);
- `no tuning`: a plain environment with LEUKOSCOPE_MALLOC_TUNING=0 (what a user got before).

Workloads: `proxy` (default, ~1 min): fixed PyTorch eager forward+backward steps of MobileNetV2 at batch 32
on random data, through the same start-up hook as the command line; `train`: the real
`leukoscope train DATA --protocol paper --weights-dir WEIGHTS` (~2-4 min a run on 2 cores).

    .venv/bin/python -m benchmarks.as_typed                      # proxy, writes the `as-typed` section
    .venv/bin/python -m benchmarks.as_typed --workload train --no-baseline --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common

OPT_OUT = "LEUKOSCOPE_MALLOC_TUNING"
WAYS = ("as typed", "make", "no tuning")
TARGET = 1.10  # as typed within 10% of make


def environment(way: str) -> dict[str, str]:
    """The child's environment for one way: the parent's, without or with the Makefile's variables."""
    env = {k: v for k, v in os.environ.items() if k not in common.MALLOC_ENV and k not in (OPT_OUT, "GLIBC_TUNABLES")}
    if way == "make":
        env.update(common.MALLOC_ENV)
    elif way == "no tuning":
        env[OPT_OUT] = "0"
    return env


def proxy_worker(steps: int, batch: int, threads: int) -> dict[str, Any]:
    """Child process: `steps` timed SGD steps of a randomly initialised MobileNetV2 (after 2 warm-up steps),
    started through leukoscope.runtime like every entry point. With 0 steps, only the settings each way
    applies, without importing PyTorch (~4-9 s a process here): what the smoke test checks."""
    from leukoscope.runtime import tune_process

    applied = tune_process()
    if steps <= 0:
        return {"seconds": 0.0, "applied": applied}
    import timm
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=4)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 4, (batch,))

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return {"seconds": time.perf_counter() - started, "applied": applied}


def run_child(command: list[str], way: str, cwd: Path) -> dict[str, Any]:
    """Wall, user and system seconds of one child process (rusage of the reaped child), and its JSON line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=environment(way), cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` ({way}) exited {done.returncode}:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
                              "sys_s": after.ru_stime - before.ru_stime, "seconds": wall}
    lines = done.stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        result.update(json.loads(lines[-1]))  # the proxy's own timing of its steps replaces `seconds`
    return result


def measure(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Rounds of every way, interleaved; per way the median of the timed part (the proxy's steps, or the
    whole `leukoscope train` command) and of its system time."""
    ways = [w for w in WAYS if args.baseline or w != "no tuning"]
    rounds: dict[str, list[dict[str, Any]]] = {w: [] for w in ways}
    with tempfile.TemporaryDirectory(prefix="leukoscope-as-typed-") as tmp:
        for index in range(args.rounds):
            for way in ways:
                if args.workload == "proxy":
                    command = [sys.executable, "-m", "benchmarks.as_typed", "--proxy-worker", json.dumps(
                        {"steps": args.steps, "batch": args.batch, "threads": common.usable_cores()})]
                else:
                    command = [sys.executable, "-m", "leukoscope", "train", str(args.data), "--protocol", "paper",
                               "--weights-dir", str(args.weights_dir), "--out-dir", str(Path(tmp) / "runs"),
                               "--name", f"r{index}-{way.replace(' ', '-')}", "--device", "cpu", "--quiet"]
                result = run_child(command, way, common.REPO)
                rounds[way].append(result)
                log(f"round {index + 1} {way}: {result['seconds']:.1f} s (sys {result['sys_s']:.1f} s)")
    summary = {w: {"seconds": common.median([r["seconds"] for r in rs]), "sys_s": common.median([r["sys_s"] for r in rs]),
                   "rounds_s": [r["seconds"] for r in rs], "applied": rs[0].get("applied")} for w, rs in rounds.items()}
    make_s = summary["make"]["seconds"]
    ratio = summary["as typed"]["seconds"] / make_s if make_s > 0 else None  # None: 0 steps, nothing timed
    return {"machine": common.machine(), "workload": args.workload, "ways": summary, "ratio": ratio,
            "within_target": ratio is not None and ratio <= TARGET, "steps": args.steps, "batch": args.batch,
            "rounds": args.rounds}


def render(results: dict[str, Any], command: str) -> str:
    """The `as-typed` section of RESULTS.md."""
    workload = (f"{results['steps']} PyTorch eager forward+backward steps of MobileNetV2 (random init), batch "
                f"{results['batch']}, timed after 2 warm-up steps" if results["workload"] == "proxy"
                else "`leukoscope train DATA --protocol paper --weights-dir WEIGHTS --device cpu` (whole command)")
    extra = (f"- Workload: {workload}; fresh process per round, {results['rounds']} round(s) interleaved; "
             f"median shown. CPU flags: {', '.join(results['machine'].get('flags') or []) or 'none listed'}.\n"
             + (f"- as typed / make = {results['ratio']:.2f} (target <= {TARGET:.2f}): "
                f"{'met' if results['within_target'] else '**not met**'}." if results["ratio"] is not None
                else "- as typed / make = n/a: 0 steps, only the settings each way applies were checked."))
    make_s = results["ways"]["make"]["seconds"]
    rows = [[way, f"{v['seconds']:.1f}", common.spread(v["rounds_s"]), f"{v['sys_s']:.1f}",
             f"{v['seconds'] / make_s:.2f}" if make_s > 0 else "n/a"] for way, v in results["ways"].items()]
    return (common.section_header("Fast as typed: glibc malloc settings in the process vs make's variables",
                                  command, results["machine"], extra) + "\n"
            + common.table(["way", "seconds (median)", "rounds", "system s", "vs make"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("proxy", "train"), default="proxy")
    parser.add_argument("--steps", type=int, default=10,
                        help="timed proxy steps per process (default 10; 0: only the settings each way applies)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="processes per way (default 3)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the `no tuning` way")
    parser.add_argument("--data", type=Path, default=common.DATA)
    parser.add_argument("--weights-dir", type=Path, default=common.WEIGHTS)
    parser.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-min load is below this")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--proxy-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.proxy_worker:
        spec = json.loads(args.proxy_worker)
        print(json.dumps(proxy_worker(spec["steps"], spec["batch"], spec["threads"])))
        return 0

    def log(message: str) -> None:
        print(f"[as-typed] {message}", file=sys.stderr, flush=True)

    if not args.no_wait:
        common.wait_for_quiet(args.max_load, log=log)
    results = measure(args, log)
    body = render(results, common.command_line([__file__, *(sys.argv[1:] if argv is None else argv)]))
    common.publish("as-typed", body, write=not args.no_write, results=args.results, json_path=args.json, raw=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

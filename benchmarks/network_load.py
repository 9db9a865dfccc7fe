"""Several server processes on one PostgreSQL, under load and under faults (issue #14's three benchmarks).

One hospital network runs one service for several clinics on PostgreSQL with more than one server process; a
process may crash and the database may restart under it. This measures that, with the real CLI:

1. A throwaway PostgreSQL cluster (tests/serve/pg.py: initdb + pg_ctl in a temporary folder, as `nobody`
   when run as root), `leukoscope db upgrade --db URL`, the clinics (netclinics), and two separate
   `python -m leukoscope serve` processes on two loopback ports. Two processes behind a client-side round
   robin rather than `serve --processes 2`: uvicorn's supervisor respawns a dead worker by itself and both
   share one port, so one could neither say which process a request reached nor restart the killed one
   when and how the benchmark chooses; two ports are also what a reverse proxy (nginx) sees.
2. Load: `--requests` single-image predictions from `--concurrency` clients over 3 clinics: 0 errors other
   than 503, rows = accepted, no row in the wrong clinic; req/s and p95 beside load_server.py's single
   process on SQLite, run first in the same invocation.
3. Faults: the same load with `kill -9` of process A half-way, restarted at once on its port: B keeps
   answering, every 200 has its row, A serves again.
4. PostgreSQL stopped (`pg_ctl stop -m immediate`) and started again half-way through the load: every
   failure is a 503/500 with a JSON body, none hangs (client timeout), both processes serve again, unrestarted.

Prints PASS/FAIL per criterion with its numbers, and writes the `network-load` section of RESULTS.md.

    .venv/bin/python -m benchmarks.network_load                     # 2000 requests per phase, 16 clients
    nice -n 10 .venv/bin/python -m benchmarks.network_load --requests 200 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import common, load_server, netclinics, netload
from benchmarks.load_server import Server
from benchmarks.netload import Backend, Clinic, LoadRun

CLINICS = ("clinic-a", "clinic-b", "clinic-c")
BURST = 8  # requests sent to a process after a fault, to see that it serves again
WARMUP = 4
DISCLAIMER = "Research software, not a medical device."
PHASES = ("load", "kill", "pg")


class Network:
    """The cluster's URL, the clinics and the two server processes (A, then B) with the client's view of them."""

    def __init__(self, args: argparse.Namespace, work: Path, url: str, clinics: list[Clinic], images: list[bytes], *,
                 real_clinics: bool) -> None:
        self.args, self.work, self.url, self.clinics, self.images = args, work, url, clinics, images
        self.real_clinics = real_clinics  # clinics made with `leukoscope clinics add` (else one shared token)
        self.shared_token = None if real_clinics else clinics[0].token
        self.servers = [self.spawn(name) for name in ("a", "b")]
        self.backends = [Backend(name, s.url) for name, s in zip(("a", "b"), self.servers, strict=True)]
        try:
            cards = [s.wait_ready(args.start_timeout) for s in self.servers]
        except BaseException:
            self.stop()
            raise
        self.card = cards[0]

    def spawn(self, name: str, port: int | None = None) -> Server:
        return Server(self.args, self.work, db=self.url, port=port, name=name, token=self.shared_token,
                      probe_token=self.clinics[0].token, extra=["--no-warmup"] if self.args.no_warmup else [])

    def send(self, prefix: str, requests: int, *, backends: list[Backend] | None = None, concurrency: int | None = None,
             on_send: Any = None) -> LoadRun:
        return asyncio.run(netload.send(backends or self.backends, self.clinics, self.images, requests=requests,
                                        concurrency=concurrency or self.args.concurrency, prefix=prefix,
                                        timeout=self.args.timeout, max_seconds=self.args.max_seconds,
                                        on_send=on_send, pause_on_503=True))

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "PASS" if ok else "FAIL"


def errors_of(outcomes: list[netload.Outcome]) -> list[netload.Outcome]:
    """What counts as an error under load: anything but a 200 or a 503."""
    return [o for o in outcomes if o.status not in (200, 503)]


def phase_load(net: Network) -> dict[str, Any]:
    run = net.send("load", net.args.requests)
    rows = netclinics.check_rows(net.url, "load", run)
    clinic = netclinics.check_clinics(net.url, "load", run, real_clinics=net.real_clinics)
    errors = errors_of(run.outcomes)
    by_backend = {b.name: sum(o.backend == b.name for o in run.accepted()) for b in net.backends}
    return {"run": run, "rows": rows, "criteria": [
        ("load", "0 errors other than 503", not errors, f"errors {len(errors)}; statuses {run.statuses()}"),
        ("load", "rows = accepted", rows.exact, f"rows {rows.rows}, accepted {rows.accepted}, missing {rows.missing}, "
                                                f"duplicates {rows.duplicates}; 200s per process {by_backend}"),
        ("load", "no row in the wrong clinic", None if clinic.verdict == "n/a" else clinic.verdict == "PASS",
         clinic.line)]}


def phase_kill(net: Network) -> dict[str, Any]:
    state: dict[str, float] = {}
    half = net.args.requests // 2

    def on_send(index: int) -> None:  # in the client's event loop: SIGKILL and the new Popen do not block
        if index == half and "killed" not in state:
            state["in_flight"] = net.backends[0].in_flight
            state["killed"] = time.perf_counter()
            victim = net.servers[0]
            victim.kill9()
            victim.stop()  # closes its log; the process is gone already
            net.servers[0] = net.spawn("a", port=victim.port)

    run = net.send("kill", net.args.requests, on_send=on_send)
    killed = state.get("killed", run.started + run.seconds)
    net.servers[0].wait_ready(net.args.start_timeout)
    burst = net.send("killafter", BURST, backends=[net.backends[0]], concurrency=2)
    rows = netclinics.check_rows(net.url, "kill", run)
    burst_rows = netclinics.check_rows(net.url, "killafter", burst)
    at = {name: [o for o in run.outcomes if o.backend == name] for name in ("a", "b")}
    back = min((o.started for o in at["a"] if o.status == 200 and o.started > killed), default=None)
    b_errors = errors_of(at["b"])
    b_during = sum(o.status == 200 and killed <= o.started < (back or float("inf")) for o in at["b"])
    lost = errors_of(at["a"])
    lost_ok = all(o.started < killed and o.failure == "dropped" for o in lost) and \
        len(lost) <= state.get("in_flight", 0)
    hangs = sum(o.failure == "timeout" for o in run.outcomes)
    back_text = f"first 200 from the restarted A at +{back - killed:.1f} s after the kill" if back else \
        "the restarted A was not ready before the load ended"
    survivor = {"errors": len(b_errors), "answered_while_a_down": b_during, "hangs": hangs}
    return {"run": run, "state": state, "survivor": survivor, "criteria": [
        ("kill -9", "the other process keeps answering", not b_errors and b_during > 0 and hangs == 0,
         f"B: {b_during} answers 200 while A was down, {len(b_errors)} errors; hangs {hangs}; "
         f"statuses {run.statuses()}"),
        ("kill -9", "errors only for requests in flight at A when killed", lost_ok,
         f"{len(lost)} lost at A ({sorted({o.failure or str(o.status) for o in lost})}), "
         f"{int(state.get('in_flight', 0))} in flight at A at the kill (request {half})"),
        ("kill -9", "every request that got a 200 has its row", rows.missing == 0 and rows.duplicates == 0
         and burst_rows.missing == 0 and rows.unanswered_rows <= len(lost), f"200s {rows.accepted}, rows "
         f"{rows.rows}, missing {rows.missing}, rows of unanswered requests {rows.unanswered_rows} (at most the "
         f"{len(lost)} lost at the kill: committed, then the answer died with A)"),
        ("kill -9", "the restarted process serves again", len(burst.accepted()) == BURST,
         f"{len(burst.accepted())}/{BURST} answered 200 by the restarted A after the load; {back_text}; "
         f"{sum(o.status == 200 and o.started > killed for o in at['a'])} load requests answered by it")]}


def phase_pg(net: Network, cluster: Any) -> dict[str, Any]:
    state: dict[str, float] = {}
    pids = [s.process.pid for s in net.servers]

    def bounce() -> None:
        state["down"] = time.perf_counter()
        cluster.stop_server()
        state["stopped"] = time.perf_counter()
        time.sleep(net.args.down_s)
        cluster.start_server()
        state["up"] = time.perf_counter()

    restart = threading.Thread(target=bounce, daemon=True)
    half = net.args.requests // 2
    run = net.send("pgr", net.args.requests, on_send=lambda i: restart.start() if i == half else None)
    if not restart.is_alive() and "down" not in state:
        restart.start()  # the load ended early (max-seconds): restart anyway, so the resume is still checked
    restart.join(timeout=300)
    burst = net.send("pgafter", 2 * BURST, concurrency=2)
    rows = netclinics.check_rows(net.url, "pgr", run)
    failed = [o for o in run.outcomes if o.status != 200]
    unclean = [o for o in failed if not (o.status in (500, 503) and o.json_detail)]
    hangs = [o for o in run.outcomes if o.failure == "timeout"]
    slowest = max((o.seconds for o in run.outcomes), default=0.0)
    up = state.get("up", float("inf"))
    resumed = {b.name: sum(o.status == 200 and o.backend == b.name and o.started > up for o in run.outcomes)
               for b in net.backends}
    burst_by = {b.name: sum(o.backend == b.name for o in burst.accepted()) for b in net.backends}
    same = [s.process.pid for s in net.servers] == pids and all(s.process.poll() is None for s in net.servers)
    down_s = state.get("up", 0) - state.get("down", 0)
    return {"run": run, "state": state, "criteria": [
        ("PostgreSQL restart", "requests fail cleanly (503/500 with a JSON body)", not unclean,
         f"{len(failed)} failed: statuses {run.statuses()}, {len(unclean)} not clean; PostgreSQL down "
         f"{down_s:.1f} s (stop -m immediate, {net.args.down_s:g} s, start) from request {half}"),
        ("PostgreSQL restart", "none hangs", not hangs,
         f"{len(hangs)} timed out (client timeout {net.args.timeout:g} s); slowest answer {slowest:.1f} s"),
        ("PostgreSQL restart", "service resumes without a server restart",
         same and len(burst.accepted()) == 2 * BURST and all(burst_by.values()),
         f"same 2 processes {'yes' if same else 'NO'}; 200s after PostgreSQL was back: in the load {resumed}, "
         f"then {len(burst.accepted())}/{2 * BURST} per process {burst_by}"),
        ("PostgreSQL restart", "every request that got a 200 has its row", rows.missing == 0 and rows.duplicates == 0,
         f"200s {rows.accepted}, rows {rows.rows}, missing {rows.missing}, rows of unanswered requests "
         f"{rows.unanswered_rows}")]}


def sqlite_baseline(args: argparse.Namespace, folder: Path | None, work: Path) -> dict[str, Any]:
    """load_server.py's single process on SQLite, same requests, clients and images."""
    out = work / "sqlite.json"
    argv = ["--requests", str(args.requests), "--concurrency", str(args.concurrency), "--workers", str(args.workers),
            "--queue", str(args.queue), "--max-seconds", str(args.max_seconds), "--out", str(out)]
    argv += (["--images", str(folder)] if folder else []) + (["--model", str(args.model)] if args.model else [])
    code = load_server.main(argv)
    return {**json.loads(out.read_text()), "exit": code} if out.is_file() else {"exit": code}


def db_upgrade(url: str) -> str:
    done = subprocess.run([sys.executable, "-m", "leukoscope", "db", "upgrade", "--db", url], capture_output=True,
                          text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise SystemExit(f"leukoscope db upgrade failed ({done.returncode}): {(done.stderr or done.stdout)[-500:]}")
    return " ".join(done.stdout.split())


def render(args: argparse.Namespace, results: dict[str, Any], command: str) -> str:
    """The RESULTS.md section."""
    rows = []
    base = results.get("sqlite") or {}
    if base.get("sent"):
        rows.append(["1 process, SQLite (load_server.py)", base["sent"], base["accepted"], base["busy_503"],
                     base["errors"], round(base["throughput_rps"], 2), round(base["p50_ms"], 1), round(base["p95_ms"], 1),
                     "yes" if base["db_ok"] else "NO"])
    load = results.get("load")
    if load:
        run, check = load["run"], load["rows"]
        rows.append([f"2 processes, PostgreSQL, {len(results['clinics'])} clinics", len(run.outcomes),
                     len(run.accepted()), run.statuses().get("503", 0), len(errors_of(run.outcomes)), run.rate(),
                     run.latency_ms(50), run.latency_ms(95), "yes" if check.exact else "NO"])
    extra = "\n".join([
        f"- {DISCLAIMER} Model {results.get('model')}; images: {results['images']}; {args.concurrency} clients "
        f"over {len(CLINICS)} clinics ({results['clinic_mode']}); {args.requests} requests per phase; server "
        f"inference workers {args.workers}, queue {args.queue}; client timeout {args.timeout:g} s; a client "
        "answered 503 waits its Retry-After before its next request.",
        "- Two `python -m leukoscope serve` processes on two loopback ports, the client's round robin in front "
        "(a refused connection goes to the other process, as nginx's proxy_next_upstream does; a request lost "
        "after it was sent is not retried): unlike `serve --processes 2`, one process can be killed and "
        "restarted by itself and each answer says which process gave it.",
        f"- PostgreSQL: a throwaway cluster (initdb, fsync off) on 127.0.0.1; {results.get('upgrade', '')}.",
        "- The machine was shared with other jobs while this ran (2 cores): the rates are under that load."
        if args.shared else ""])
    body = common.section_header("Several server processes on PostgreSQL: load and faults", command, extra=extra)
    body += "\n" + common.table(["setup", "requests", "200", "503", "errors", "req/s", "p50 ms", "p95 ms",
                                 "rows = 200s"], rows)
    criteria = [c for phase in PHASES for c in (results.get(phase) or {}).get("criteria", [])]
    body += "\n" + common.table(["benchmark", "criterion", "result", "numbers"],
                                [[p, c, f"**{verdict(ok)}**", n] for p, c, ok, n in criteria])
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per phase (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES), help="which phases to run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the single-process SQLite run")
    parser.add_argument("--model", help="model package or run folder (default: the bundled package)")
    parser.add_argument("--workers", type=int, default=1, help="inference threads per server process (default 1)")
    parser.add_argument("--queue", type=int, default=16, help="server queue beyond workers (default 16)")
    parser.add_argument("--images", type=Path, help=f"folder of images (default {common.display_path(common.DATA)} "
                        "when present, else synthetic JPEGs)")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, s (a hang)")
    parser.add_argument("--down-s", type=float, default=3.0, help="how long PostgreSQL stays stopped (default 3 s)")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="wait this long for a server to start")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop sending a phase after this long")
    parser.add_argument("--no-warmup", action="store_true", help="start the servers without their warm-up "
                        "(one prediction and one Grad-CAM; faster starts, used by the smoke test)")
    parser.add_argument("--shared", action="store_true", help="say in RESULTS.md that the machine was shared")
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="RESULTS.md to update")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        parser.error("--requests must be 1..100000 and --concurrency 1..256")
    from tests.serve.pg import PostgresCluster, Unavailable

    command = common.command_line()
    folder = args.images or (common.DATA if common.DATA.is_dir() else None)
    images = load_server.folder_images(folder, 64) if folder else load_server.synthetic_images(32, 256)
    results: dict[str, Any] = {"images": f"{len(images)} from {common.display_path(folder)}" if folder
                               else "synthetic 256x256 JPEGs"}
    with tempfile.TemporaryDirectory(prefix="leukoscope-netload-") as tmp:
        work = Path(tmp)
        if not args.no_baseline:
            results["sqlite"] = sqlite_baseline(args, folder, work)
        cluster = PostgresCluster()
        try:
            cluster.start()
        except Unavailable as exc:
            print(f"SKIPPED: no PostgreSQL here: {exc}")
            return 0
        net = None
        try:
            results["upgrade"] = db_upgrade(cluster.url)
            print(results["upgrade"])
            real = netclinics.clinics_supported(cluster.url)
            clinics = netclinics.create_clinics(cluster.url, CLINICS) if real else \
                netclinics.shared_clinics(CLINICS, secrets.token_urlsafe(24))
            results["clinics"], results["real_clinics"] = [c.name for c in clinics], real
            results["clinic_mode"] = "a clinic and a token each (`leukoscope clinics add`, `tokens create`)" if real \
                else "one shared token: this leukoscope has no `clinics` command"
            net = Network(args, work, cluster.url, clinics, images, real_clinics=real)
            results["model"] = net.card.get("model_version")
            for server in net.servers:
                netload.warm_up(server.url, images, WARMUP, clinics[0].headers())
            for phase in args.phases:
                print(f"[network-load] phase {phase}", file=sys.stderr, flush=True)
                results[phase] = phase_load(net) if phase == "load" else phase_kill(net) if phase == "kill" \
                    else phase_pg(net, cluster)
        finally:
            if net is not None:
                net.stop()
            cluster.stop()
    criteria = [c for phase in PHASES for c in (results.get(phase) or {}).get("criteria", [])]
    for phase, criterion, ok, numbers in criteria:
        print(f"{verdict(ok)}  {phase}: {criterion} — {numbers}")
    body = render(args, results, command)
    common.publish("network-load", body, write=not args.no_write, results=args.results, json_path=args.out,
                   raw={k: _plain(v) for k, v in results.items()})
    print(DISCLAIMER)
    failed = [c for c in criteria if c[2] is False] or ([1] if (results.get("sqlite") or {}).get("exit") else [])
    return 1 if failed else 0


def _plain(value: Any) -> Any:
    """JSON-friendly results (a LoadRun as its summary)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, LoadRun):
        return {"statuses": value.statuses(), "seconds": round(value.seconds, 2), "req_per_s": value.rate(),
                "p50_ms": value.latency_ms(50), "p95_ms": value.latency_ms(95)}
    if isinstance(value, netclinics.RowCheck):
        return vars(value)
    return value


if __name__ == "__main__":
    sys.exit(main())

"""Clinics for network_load.py, and the checks on the rows a run left: one row per accepted request, and no row
in the wrong clinic.

Clinics are landing in the app separately (`leukoscope clinics add`, `leukoscope tokens create --clinic`, a
`clinic_id` column on predictions from revision r0007), so they are an abstraction here: a list of (name,
token). Where the CLI has no `clinics` command, the three "clinics" share the server's one token and the
clinic check says it is not available: three labels on the client side prove nothing about isolation, so it
is never reported as passed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.netload import Clinic, LoadRun, store_query, stored_names

TOKEN_RE = re.compile(r"[A-Za-z0-9_\-.~+/=]{20,}")  # what a printed API token looks like


def _leukoscope(*args: str, db: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "LEUKOSCOPE_DB_URL": db}  # every database command reads it where --db is not given
    env.pop("LEUKOSCOPE_API_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "leukoscope", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)


def clinics_supported(db: str) -> bool:
    """Whether this leukoscope has the clinic commands (`clinics` and `tokens`)."""
    return all(_leukoscope(group, "--help", db=db).returncode == 0 for group in ("clinics", "tokens"))


def parse_token(output: str) -> str:
    """The token `leukoscope tokens create` printed (shown once): the whole first line of its output, so that a
    script can read it (`TOKEN=$(leukoscope tokens create --clinic C | head -1)`); the rest is for people."""
    first = output.strip().splitlines()[0].strip() if output.strip() else ""
    if not TOKEN_RE.fullmatch(first):
        raise SystemExit(f"could not find the new token in the output of `leukoscope tokens create`: {output[-300:]!r}")
    return first


def create_clinics(db: str, names: Sequence[str]) -> list[Clinic]:
    """`leukoscope clinics add NAME` and `leukoscope tokens create --clinic NAME` for each name."""
    made = []
    for name in names:
        for command in (("clinics", "add", name), ("tokens", "create", "--clinic", name)):
            done = _leukoscope(*command, db=db)
            if done.returncode != 0:
                raise SystemExit(f"`leukoscope {' '.join(command)}` failed ({done.returncode}): "
                                 f"{(done.stderr or done.stdout).strip()[-300:]}")
        made.append(Clinic(name, parse_token(done.stdout)))
    return made


def shared_clinics(names: Sequence[str], token: str) -> list[Clinic]:
    """Today's server: one shared token, so the clinics are names on the client side only."""
    return [Clinic(name, token) for name in names]


@dataclass(frozen=True)
class RowCheck:
    """The rows of one run (requests named PREFIX-...) against the answers the clients got."""

    rows: int
    accepted: int
    missing: int  # requests answered 200 whose row is not there
    unanswered_rows: int  # rows of requests that got no 200 (committed, then the answer was lost)
    duplicates: int  # file names stored more than once

    @property
    def exact(self) -> bool:
        return self.rows == self.accepted and self.missing == 0 and self.duplicates == 0


def check_rows(target: str | Path, prefix: str, run: LoadRun) -> RowCheck:
    names = Counter(stored_names(target, prefix))
    accepted = {o.file_name for o in run.accepted()}
    return RowCheck(rows=sum(names.values()), accepted=len(accepted), missing=len(accepted - set(names)),
                    unanswered_rows=len(set(names) - accepted), duplicates=sum(n - 1 for n in names.values()))


@dataclass(frozen=True)
class ClinicCheck:
    verdict: str  # PASS | FAIL | n/a
    line: str


def check_clinics(target: str | Path, prefix: str, run: LoadRun, *, real_clinics: bool) -> ClinicCheck:
    """Every row of a clinic's request is in that clinic (predictions.clinic_id joined to clinics.name), and each
    clinic holds as many rows as it got 200s."""
    if not real_clinics:
        return ClinicCheck("n/a", "clinic check: not available (this leukoscope has no `clinics` command: the 3 "
                                  "clinics shared the server's one token)")
    sender = {o.file_name: o.clinic for o in run.outcomes}
    rows = store_query(target, "SELECT p.file_name, c.name AS clinic FROM predictions p JOIN clinics c "
                               "ON c.id = p.clinic_id WHERE p.file_name LIKE :p", {"p": f"{prefix}-%"})
    by_sender: dict[str, Counter] = {}
    for row in rows:
        by_sender.setdefault(sender.get(row["file_name"], "?"), Counter())[row["clinic"]] += 1
    expected = {clinic: clinic for clinic in by_sender}  # a row belongs in the clinic whose token sent it
    wrong = sum(n for clinic, ids in by_sender.items() for cid, n in ids.items() if cid != expected[clinic])
    per_clinic = {clinic: sum(ids.values()) for clinic, ids in sorted(by_sender.items())}
    accepted = Counter(o.clinic for o in run.accepted())
    counts_ok = all(per_clinic.get(c, 0) == n for c, n in accepted.items())
    ok = wrong == 0 and "?" not in by_sender and counts_ok
    return ClinicCheck("PASS" if ok else "FAIL",
                       f"clinic check: rows in the wrong clinic {wrong}; rows per clinic {per_clinic} "
                       f"vs 200s {dict(sorted(accepted.items()))}")

"""The lab's verified images as a dataset: `leukoscope data export-verified --db DB --out DIR`.

Technologists' verifications (migration 5: an append-only trail, the latest verification of a prediction
wins) turn the web app's history into labelled data the lab owns. The export writes a folder-per-class
dataset that `leukoscope.data.discover.discover` reads like any other, plus `manifest.csv` naming for each
image who verified it, when, and what the model had said, so an adapted model can say exactly what it
learned from. One image (sha256) is exported once; when several predictions of the same image end in
different verdicts, the latest verification overall wins and the conflict is listed.

The database (a SQLite file or a postgresql:// URL) is opened read-only (a running server keeps writing; the
export reads one snapshot: a SQLite read transaction, or PostgreSQL's REPEATABLE READ), and the
dataset is built in a temporary folder beside DIR and renamed into place, so an error never leaves half a
dataset behind.

An export is one clinic's (`clinic=NAME`; the implicit clinic by default): its verified images only, and
`prediction_id` in the manifest is the prediction's public id (a UUID), as the web app shows it.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from leukoscope.data.fileio import sha256_bytes
from leukoscope.data.imaging import IMAGE_SUFFIXES, read_info
from leukoscope.errors import DataError, ImageError, UsageError
from leukoscope.serve import migrate
from leukoscope.serve.database import database_url, display, make_engine, reason, sqlite_path
from leukoscope.serve.store import DEFAULT_CLINIC_ID

MANIFEST = "manifest.csv"
MISSING = "missing.csv"
CONFLICTS = "conflicts.csv"
MANIFEST_COLUMNS = ("path", "label", "sha256", "verifier", "verified_at", "model_label", "model_version",
                    "prediction_id")
MISSING_COLUMNS = ("prediction_id", "sha256", "file_name", "label", "reason")
CONFLICT_COLUMNS = ("sha256", "label", "prediction_id", "verified_at", "other_verdicts")
HASH_PREFIX = 12
MAX_NAME = 80
_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp", "MPO": ".jpg"}

_LATEST = """
SELECT v.id AS verification_id, p.uid AS prediction_id, v.created_at, v.user_name, v.label, v.unusable,
       p.sha256, p.file_name, p.label AS model_label, p.model_version
FROM verifications AS v
JOIN (SELECT prediction_id, MAX(id) AS id FROM verifications GROUP BY prediction_id) AS latest ON latest.id = v.id
JOIN predictions AS p ON p.id = v.prediction_id
WHERE p.clinic_id = :clinic
ORDER BY v.id
"""


@dataclass(frozen=True)
class Verdict:
    """The latest verification of one prediction, with what the model had said about its image."""

    verification_id: int
    prediction_id: str  # public (a UUID)
    verified_at: str
    verifier: str
    label: str | None  # None when marked unusable
    sha256: str
    file_name: str
    model_label: str
    model_version: str

    @property
    def call(self) -> str:
        return self.label if self.label is not None else "(unusable)"


@dataclass
class ExportSummary:
    """What an export wrote and what it left out (and why)."""

    out: Path
    counts: dict[str, int] = field(default_factory=dict)  # exported images per class
    verified_predictions: int = 0
    unusable: int = 0  # images whose winning verification says unusable
    missing: list[tuple[Verdict, str]] = field(default_factory=list)  # (verdict, reason): bytes gone or bad
    conflicts: list[tuple[Verdict, list[Verdict]]] = field(default_factory=list)  # (winner, the others)
    duplicates: int = 0  # predictions of an image already exported through another prediction

    @property
    def exported(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        """The one summary line the command prints."""
        classes = ", ".join(f"{name} {n}" for name, n in self.counts.items())
        parts = [f"exported {self.exported} verified image(s) ({classes}) to {self.out}"]
        if self.duplicates:
            parts.append(f"{self.duplicates} repeat(s) of an image counted once")
        if self.unusable:
            parts.append(f"{self.unusable} verified unusable, left out")
        if self.missing:
            parts.append(f"{len(self.missing)} missing (image purged or damaged; listed in {MISSING})")
        if self.conflicts:
            parts.append(f"{len(self.conflicts)} image(s) with conflicting verdicts, latest kept "
                         f"(listed in {CONFLICTS})")
        return "; ".join(parts)


@contextmanager
def connect_read_only(db: str | os.PathLike[str]) -> Iterator[Connection]:
    """A read-only connection, inside one snapshot transaction, to a leukoscope database with verifications;
    one-line errors otherwise: UsageError (exit 2) for a missing path, DataError (exit 1) for another file,
    an unreachable server or a too-old schema."""
    url = database_url(db)
    path, where = sqlite_path(url), display(url)
    if path is not None and not path.exists():
        raise UsageError(f"database not found: {path}")
    if path is not None and not path.is_file():
        raise UsageError(f"not a database file: {path}")
    engine = make_engine(url, read_only=True)
    options = {"isolation_level": "REPEATABLE READ"} if url.get_backend_name() == "postgresql" else {}
    try:
        conn = engine.connect().execution_options(**options)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DataError(f"cannot open the database {where}: {reason(exc)}") from None
    try:
        try:
            conn.begin()
            tables = set(inspect(conn).get_table_names())
            version = migrate.version_of(conn)
        except SQLAlchemyError as exc:
            raise DataError(f"{where} is not a leukoscope database ({reason(exc)})") from None
        if not {"images", "predictions"} <= tables:
            raise DataError(f"{where} is not a leukoscope database (no predictions table)")
        if "verifications" not in tables:
            raise DataError(f"{where} has schema version {version}, from before verifications: open it once "
                            "with this version's `leukoscope serve --db` to upgrade it, then verify images in "
                            "the web app")
        if "clinics" not in tables:  # read-only: a database from before clinics cannot be migrated here
            raise DataError(f"{where} has schema version {version}, from before clinics: open it once with this "
                            "version's `leukoscope serve --db` or `leukoscope db upgrade --db` to upgrade it")
        yield conn
    finally:
        conn.close()
        engine.dispose()


def clinic_id(conn: Connection, name: str | None) -> int:
    """The id of the live clinic `name` (None: the implicit clinic); UsageError (one line) when unknown."""
    if name is None:
        return DEFAULT_CLINIC_ID
    found = conn.execute(text("SELECT id FROM clinics WHERE lower(name) = lower(:name) AND deleted_at IS NULL"),
                         {"name": name}).scalar()
    if found is None:
        raise UsageError(f"unknown clinic {name[:80]!r} (`leukoscope clinics list`)")
    return int(found)


def read_verdicts(conn: Connection, clinic: int = 1) -> list[Verdict]:
    """The latest verification of every verified prediction of `clinic`, oldest verification first."""
    return [Verdict(verification_id=int(r["verification_id"]), prediction_id=str(r["prediction_id"]),
                    verified_at=str(r["created_at"]), verifier=str(r["user_name"]),
                    label=None if r["unusable"] or r["label"] is None else str(r["label"]),
                    sha256=str(r["sha256"]), file_name=str(r["file_name"]), model_label=str(r["model_label"] or ""),
                    model_version=str(r["model_version"]))
            for r in conn.execute(text(_LATEST), {"clinic": clinic}).mappings()]


def winners(verdicts: list[Verdict]) -> tuple[list[Verdict], list[tuple[Verdict, list[Verdict]]], int]:
    """One verdict per image (the latest verification overall), the images whose predictions disagree
    (winner, the other verdicts), and how many verdicts repeated an image without disagreeing."""
    by_image: dict[str, list[Verdict]] = defaultdict(list)
    for verdict in verdicts:
        by_image[verdict.sha256].append(verdict)
    chosen, conflicts, repeats = [], [], 0
    for group in by_image.values():
        winner = max(group, key=lambda v: v.verification_id)
        others = [v for v in group if v is not winner]
        chosen.append(winner)
        if any(v.label != winner.label for v in others):
            conflicts.append((winner, others))
        else:
            repeats += len(others)
    chosen.sort(key=lambda v: v.verification_id)
    return chosen, conflicts, repeats


def class_folder(label: str) -> str | None:
    """The folder name of a class, or None when the name cannot be one (a path, hidden, empty)."""
    if not label.strip() or label.startswith(".") or any(c in label for c in '/\\\0') or label != label.strip():
        return None
    return label


def safe_name(file_name: str, data: bytes) -> str:
    """A file name that keeps the upload's name readable but can never leave its folder, with an image
    suffix discover reads (taken from the bytes when the name has none)."""
    base = PureWindowsPath(PurePosixPath(file_name).name).name  # drop folders of either kind
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    ending = f".{suffix.lower()}"
    if ending not in IMAGE_SUFFIXES:
        try:
            ending = _FORMAT_SUFFIX.get(read_info(data).format, ".png")
        except ImageError:
            ending = ".png"
    return stem[:MAX_NAME] + ending


def _image_bytes(conn: Connection, verdict: Verdict) -> tuple[bytes | None, str]:
    row = conn.execute(text("SELECT data FROM images WHERE sha256 = :sha"), {"sha": verdict.sha256}).first()
    if row is None:
        return None, "image not in the database"
    data = bytes(row[0] or b"")
    if not data:
        return None, "image purged by the retention period"
    if sha256_bytes(data) != verdict.sha256:
        return None, "stored bytes do not match their sha256"
    return data, ""


def _csv_text(columns: tuple[str, ...], rows: list[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse a DIR that is a file, or a non-empty folder (unless --overwrite and it holds an export)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"--out {out} exists and is not empty; choose a new folder or pass --overwrite")
        if not (out / MANIFEST).is_file():
            raise UsageError(f"--out {out} is not an export of verified images (no {MANIFEST}); "
                             "--overwrite only replaces an earlier export")


def _place(staging: Path, out: Path) -> None:
    """Rename the finished staging folder onto `out` (an earlier export or empty folder is replaced)."""
    if out.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        backup.rmdir()
        out.rename(backup)
        try:
            staging.rename(out)
        except BaseException:
            backup.rename(out)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        staging.rename(out)


def export_verified(db: str | os.PathLike[str], out: str | Path, *, overwrite: bool = False,
                    clinic: str | None = None) -> ExportSummary:
    """Write the verified images of one clinic (`clinic`, a name; None: the implicit clinic) of `db` (a SQLite
    path or a database URL) as a folder-per-class dataset at `out` (see the module doc)."""
    out = Path(out)
    check_out(out, overwrite=overwrite)
    shown = display(database_url(db))
    with connect_read_only(db) as conn:  # one snapshot, even while a server writes
        verdicts = read_verdicts(conn, clinic_id(conn, clinic))
        chosen, conflicts, repeats = winners(verdicts)
        summary = ExportSummary(out, verified_predictions=len(verdicts), conflicts=conflicts, duplicates=repeats)
        usable = []
        for verdict in chosen:
            if verdict.label is None:
                summary.unusable += 1
            elif class_folder(verdict.label) is None:
                summary.missing.append((verdict, f"class name {verdict.label!r} cannot be a folder name"))
            else:
                usable.append(verdict)
        if not usable:
            raise DataError(f"no verified images to export from {shown}: {len(verdicts)} verified prediction(s), "
                            f"{summary.unusable} unusable")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        except OSError as exc:
            raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
        try:
            staging.chmod(0o755)
            _write_dataset(conn, staging, usable, summary)
            _place(staging, out)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return summary


def _write_dataset(conn: Connection, folder: Path, usable: list[Verdict], summary: ExportSummary) -> None:
    """The images, manifest.csv and (when needed) missing.csv and conflicts.csv, into `folder`."""
    rows, counts = [], Counter()
    for verdict in usable:
        data, reason = _image_bytes(conn, verdict)
        if data is None:
            summary.missing.append((verdict, reason))
            continue
        label = str(verdict.label)
        relative = f"{class_folder(label)}/{verdict.sha256[:HASH_PREFIX]}_{safe_name(verdict.file_name, data)}"
        target = folder / relative
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(data)
        counts[label] += 1
        rows.append((relative, label, verdict.sha256, verdict.verifier, verdict.verified_at, verdict.model_label,
                     verdict.model_version, verdict.prediction_id))
    if not rows:
        raise DataError(f"none of the {len(usable)} verified image(s) is still stored (all purged or damaged); "
                        "nothing exported")
    summary.counts = dict(sorted(counts.items()))
    (folder / MANIFEST).write_text(_csv_text(MANIFEST_COLUMNS, rows), encoding="utf-8")
    if summary.missing:
        missing = [(v.prediction_id, v.sha256, v.file_name, v.call, why) for v, why in summary.missing]
        (folder / MISSING).write_text(_csv_text(MISSING_COLUMNS, missing), encoding="utf-8")
    if summary.conflicts:
        def others_text(others: list[Verdict]) -> str:
            return "; ".join(f"{v.call} (prediction {v.prediction_id}, {v.verified_at}, {v.verifier})" for v in others)

        conflicts = [(w.sha256, w.call, w.prediction_id, w.verified_at, others_text(others))
                     for w, others in summary.conflicts]
        (folder / CONFLICTS).write_text(_csv_text(CONFLICT_COLUMNS, conflicts), encoding="utf-8")

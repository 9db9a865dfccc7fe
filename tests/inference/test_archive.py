"""Archive scoring on Ray Data (leukoscope.inference.archive): the Parquet parts, resume and manifests without
Ray; then, on one local Ray runtime for the session, the Ray engine's rows against the local engine's."""

from __future__ import annotations

import csv
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

from leukoscope.errors import UsageError
from tests.helpers.cli import run
from tests.helpers.modelfixtures import smear_image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("ray")

from leukoscope.inference import archive, archive_parts, archive_sources  # noqa: E402  (needs pyarrow)

CLASSES = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")


def _package(name: str = "pkg", sha: str = "a" * 64) -> archive_parts.PackageId:
    return archive_parts.PackageId(Path(name), name, sha, CLASSES)


def _rows(sha256s: list[str], package: archive_parts.PackageId) -> pa.Table:
    row = {"path": "x.png", "status": "ok", "label": "Benign", "confidence": 0.9, "review": False,
           "review_codes": "", "review_reasons": "", **{f"p_{c}": 0.25 for c in CLASSES}, "ood_score": None,
           "width": 64, "height": 64, "error": "", "model": package.name, "model_sha256": package.sha256,
           "scored_at": datetime.now(timezone.utc)}
    return pa.Table.from_pylist([row | {"sha256": s} for s in sha256s], schema=archive_parts.row_schema(CLASSES))


# ------------------------------------------------------------------------------------------- without Ray


def test_parts_are_one_table_and_resume_reads_their_hashes(tmp_path: Path) -> None:
    out, package = tmp_path / "out.parquet", _package()
    with archive_parts.locked_output(out):
        writer = archive_parts.PartWriter(out, archive_parts.row_schema(CLASSES), rows=2)
        writer.add(_rows(["1" * 64], package))
        assert writer.parts == 0  # buffered until 2 rows
        writer.add(_rows(["2" * 64, ""], package))
        writer.add(_rows(["3" * 64], package))
        writer.flush()
    assert writer.parts == 2 and sorted(p.name.startswith("part-") for p in out.glob("*.parquet")) == [True, True]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".part-*"))
    assert pq.read_table(out).num_rows == 4  # the folder reads as one table
    assert archive_parts.done_hashes(out, package).tolist() == [b"1" * 64, b"2" * 64, b"3" * 64]  # "" = never read
    with pytest.raises(UsageError, match="another model package"):
        archive_parts.done_hashes(out, _package("other", "b" * 64))


def test_output_folder_rules(tmp_path: Path) -> None:
    (tmp_path / "file.parquet").write_text("x")
    with pytest.raises(UsageError, match="is a file"), archive_parts.locked_output(tmp_path / "file.parquet"):
        pass
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_text("x")
    with pytest.raises(UsageError, match="without leukoscope parts"), archive_parts.locked_output(tmp_path / "photos"):
        pass
    out, locked = tmp_path / "out", archive_parts.locked_output
    with locked(out), pytest.raises(UsageError, match="another run"), locked(out):
        pass


def test_manifests_resolve_relative_paths(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    with open(folder / "m.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["patient", "path"], ["p1", "a/1.jpg"], ["p1", "/abs/2.jpg"], ["p2", ""],
                                      ["p2", "s3://bucket/3.jpg"]])
    expected = [str(folder / "a" / "1.jpg"), "/abs/2.jpg", "s3://bucket/3.jpg"]
    assert archive_sources.is_manifest(str(folder / "m.csv"))
    assert archive_sources.manifest_paths(folder / "m.csv") == expected
    pq.write_table(pa.table({"path": ["a/1.jpg", "/abs/2.jpg", None, "s3://bucket/3.jpg"]}), folder / "m.parquet")
    assert archive_sources.manifest_paths(folder / "m.parquet") == expected
    (folder / "bad.csv").write_text("file,label\nx.jpg,Benign\n")
    with pytest.raises(UsageError, match="no 'path' column"):
        archive_sources.manifest_paths(folder / "bad.csv")


def test_file_urls_go_through_pyarrow(tmp_path: Path) -> None:
    (tmp_path / "a" / ".hidden").mkdir(parents=True)
    for name in ("a/1.png", "a/2.jpg", "a/notes.txt", "a/.hidden/3.png"):
        (tmp_path / name).write_bytes(name.encode())
    urls = archive_sources.url_paths(f"file://{tmp_path}/a")
    assert urls == [f"file://{tmp_path}/a/1.png", f"file://{tmp_path}/a/2.jpg"]
    assert archive_sources.read_url(urls[0]) == b"a/1.png"
    assert archive_sources.url_paths(f"file://{tmp_path}/nothing") == []


def test_run_folders_must_be_exported_first(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(UsageError, match="leukoscope export"):
        archive_parts.package_id(tmp_path / "run")


# ------------------------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="session")
def ray_runtime():
    """One local Ray runtime of 2 CPUs for the session (Ray has no local mode any more)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def smears(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a/ and b/ with 4 smears each, a truncated PNG, a link to nothing and a white (unusable) PNG."""
    root = tmp_path_factory.mktemp("archive")
    for folder, cls in (("a", 1), ("b", 2)):
        (root / folder).mkdir()
        for i in range(4):
            Image.fromarray(smear_image(cls + i % 2, 500 + i)).save(root / folder / f"s{i}.png")
    data = (root / "a" / "s0.png").read_bytes()
    (root / "b" / "broken.png").write_bytes(data[: len(data) // 2])
    (root / "b" / "gone.png").symlink_to(root / "nowhere.png")
    Image.new("RGB", (64, 64), "white").save(root / "b" / "white.png")
    return root


@pytest.fixture(scope="module")
def first_run(ray_runtime, tiny_package: Path, smears: Path, tmp_path_factory: pytest.TempPathFactory):
    """score_archive on a manifest of folder a/ and the bad files of b/; (out, summary, paths)."""
    paths = sorted(str(p) for p in (smears / "a").iterdir())
    paths += [str(smears / "b" / n) for n in ("broken.png", "gone.png", "white.png")]
    manifest = smears / "first.csv"
    manifest.write_text("path\n" + "\n".join(str(Path(p).relative_to(smears)) for p in paths) + "\n")
    assert archive_sources.manifest_paths(manifest) == paths
    out = tmp_path_factory.mktemp("first") / "out.parquet"
    errors: list[str] = []
    summary = archive.score_archive(paths, out, model=tiny_package, actors=1, batch_size=4,
                                    on_error=lambda path, reason: errors.append(Path(path).name))
    return out, summary, paths, errors


@pytest.mark.slow
def test_ray_rows_equal_the_local_engine_rows(first_run, predictor) -> None:
    out, summary, paths, errors = first_run
    rows = {r["path"]: r for r in pq.read_table(out).to_pylist()}
    local = {p.source: p.to_row() for p in predictor.predict_paths(paths)}
    assert set(rows) == set(local) == set(paths)
    for path, expected in local.items():
        row = rows[path]
        for column in ("status", "label", "review", "review_codes", "error", "sha256", "width", "height"):
            assert row[column] == expected[column], (path, column)
        for name in CLASSES:
            assert row[f"p_{name}"] == pytest.approx(expected[f"p_{name}"], abs=1e-5)
        assert row["model"] == predictor.info["name"] and len(row["model_sha256"]) == 64
        assert row["scored_at"].tzinfo is not None
    assert (rows[paths[-3]]["status"], rows[paths[-2]]["status"], rows[paths[-1]]["status"]) == \
        ("error", "error", "unusable")
    assert rows[paths[-2]]["sha256"] == "" and "No such file" in rows[paths[-2]]["error"]
    assert sorted(errors) == ["broken.png", "gone.png"]
    assert (summary.scored, summary.errors, summary.unusable, summary.skipped) == (7, 2, 1, 0)


@pytest.mark.slow
def test_a_rerun_skips_what_the_output_holds(first_run, smears: Path, tiny_package: Path, tmp_path: Path,
                                             capsys, wide_console) -> None:
    out = Path(shutil.copytree(first_run[0], tmp_path / "out.parquet"))
    code, stdout, stderr = run(capsys, "predict", smears, "--engine", "ray", "--out", out, "-m", tiny_package,
                               "--actors", "1")
    assert code == 0, stderr
    # a/ (4) and broken.png and white.png are in the output; gone.png is tried again (it has no sha256)
    assert "5 image(s) scored" in stdout and "6 already in the output, skipped" in stdout
    table = pq.read_table(out).to_pylist()
    assert len(table) == 7 + 5 and len({r["path"] for r in table}) == 11
    assert sum(r["path"].endswith("gone.png") for r in table) == 2
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "gone.png" in line, stderr

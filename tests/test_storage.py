"""s3:// sources and outputs: the path rules of local folders held for object keys, the records'
write-ahead log surviving a killed driver, and a whole `langcolor batch --ray local` from an S3
manifest to an S3 output against a real S3-compatible server (moto) on loopback.

The server is moto's ``moto_server`` (``$LANGCOLOR_MOTO_SERVER`` or on PATH; CI installs it in a
virtual environment of its own); the tests that need it skip, saying so, where it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from langcolor.client import families
from langcolor.client.batch_sources import STATE_DIR, parse_manifest
from langcolor.client.batch_state import JobKey, condition_key
from langcolor.client.errors import LangcolorError
from langcolor.client.storage import S3Path, check_relative_key, is_s3
from s3_server import S3_ENV, make_buckets, moto_binary, moto_server

pytest.importorskip("pyarrow", reason="needs pyarrow: pip install 'langcolor[scale]'")

from langcolor.client import batch_locations  # noqa: E402  (imports pyarrow's S3 only when used)

FIELDS = families.get("lcode").inputs


# --------------------------------------------------------------------------- locations and path rules


def test_s3_paths_parse_and_nest_by_segment():
    p = S3Path.parse("s3://archive/photos/1931/")
    assert (p.bucket, p.key, str(p)) == ("archive", "photos/1931", "s3://archive/photos/1931")
    assert p.child("box 12/a.png") == S3Path("archive", "photos/1931/box 12/a.png")
    assert p.contains(S3Path("archive", "photos/1931/x.png")) and p.contains(p)
    assert not p.contains(S3Path("archive", "photos/19310/x.png"))  # a prefix of the name is not a folder
    assert not p.contains(S3Path("other", "photos/1931/x.png"))
    assert S3Path("archive").contains(p)
    assert is_s3("s3://a/b") and not is_s3(Path("s3://a/b")) and not is_s3("/s3:/a")


@pytest.mark.parametrize("key", ["a/../b.png", "../b.png", "./b.png", "a//b.png", "/b.png", "a/\x00.png", "a/."])
def test_keys_that_could_mean_another_place_are_refused(key):
    with pytest.raises(LangcolorError):
        check_relative_key(key, "test")
    with pytest.raises(LangcolorError):
        S3Path.parse("s3://archive/photos").child(key)


def _plan(listing: dict[str, int], manifest_text: str | None = None, fmt: str = "png"):
    entries = parse_manifest("s3://archive/photos/list.csv", manifest_text.encode(), FIELDS) if manifest_text else []
    return batch_locations._plan_objects(S3Path("archive", "photos"), listing, entries, "s3://archive/photos/list.csv",
                                         manifest_text is None, {"caption": "a red circle"}, fmt, FIELDS)


def test_a_walked_prefix_skips_hidden_and_unsafe_keys_and_keeps_relative_paths():
    listing = {"a.png": 10, "box/b.JPG": 10, ".hidden/c.png": 10, "box/.d.png": 10, "notes.txt": 5,
               "x/../escape.png": 10, f"{STATE_DIR}/records.jsonl": 3}
    planned = _plan(listing)
    assert [(i.rel, i.out_rel, str(i.uri)) for i in planned.items] == [
        ("a.png", "a.png", "s3://archive/photos/a.png"), ("box/b.JPG", "box/b.png", "s3://archive/photos/box/b.JPG")]
    assert planned.items[0].inputs == {"caption": "a red circle"}


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd.png", "s3://other/x.png", "a/../../x.png",
                                 f"{STATE_DIR}/records.png", "a//b.png"])
def test_manifest_entries_leaving_the_prefix_are_refused(bad):
    with pytest.raises(LangcolorError, match="manifest refused") as e:
        _plan({"a.png": 1}, f"path,caption\na.png,a red circle\n{bad},a blue square\n")
    assert repr(bad)[1:-1] in str(e.value) or bad in str(e.value)


def test_manifest_listing_missing_objects_and_colliding_outputs():
    planned = _plan({"a.png": 1, "b.jpg": 1}, "path,caption\na.png,a red circle\ngone.png,a blue square\nb.jpg,\n")
    assert [i.rel for i in planned.items] == ["a.png", "b.jpg"]
    assert planned.missing == (("gone.png", "listed in the manifest but not found"),)
    assert planned.items[1].inputs == {"caption": "a red circle"}  # blank: the run's caption
    with pytest.raises(LangcolorError, match="would both write"):
        _plan({"a.png": 1, "A.jpg": 1})


class _NoStore:  # planning refuses overlapping prefixes before it touches the store
    def __getattr__(self, name):
        raise AssertionError(f"the store was used ({name}) for a job that should be refused first")


@pytest.mark.parametrize("out", ["s3://archive/photos/colour", "s3://archive", "s3://archive/photos"])
def test_output_prefix_overlapping_the_source_is_refused(out):
    with pytest.raises(LangcolorError, match="overlap"):
        batch_locations.plan("s3://archive/photos", out, None, {}, "png", FIELDS, _NoStore())


# --------------------------------------------------------------------------- a real S3 server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    binary = moto_binary()
    if binary is None:
        pytest.skip("no S3 server: install moto[s3] with flask and flask-cors (moto_server) and put it on PATH "
                    "or in $LANGCOLOR_MOTO_SERVER (CI: .ci/run)")
    from langcolor.client.storage import S3Store

    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        with moto_server(binary, tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
            store = S3Store(endpoint)
            make_buckets(endpoint, "colour")
            yield store
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _key(caption: str) -> JobKey:
    return JobKey("lcode", "w" * 64, condition_key({"caption": caption}), "PNG")


def test_records_survive_a_killed_driver_up_to_the_last_segment(s3, tmp_path, monkeypatch):
    monkeypatch.setattr(batch_locations, "SEGMENT_RECORDS", 2)
    out = S3Path("colour", "wal")
    first = batch_locations.ObjectDestination(s3, out)
    first.open()
    for name in ("a.png", "b.png", "c.png"):
        data = name.encode() * 10
        first.write(name, data)
        first.records.add(name, name, "sha-" + name, _key("a red circle"), len(data))
    # SIGKILL here: no close(). Two records went out as a segment; the third is lost with the driver.
    first.records._log.close()  # (what the kill would do to the local copy; nothing of it reaches S3)
    shutil.rmtree(first.scratch)
    segments = [k for k in s3.list(out) if k.startswith(f"{STATE_DIR}/records-")]
    assert len(segments) == 1

    again = batch_locations.ObjectDestination(s3, out)
    again.open()
    try:
        done = [n for n in ("a.png", "b.png", "c.png") if again.records.is_done(n, "sha-" + n, _key("a red circle"))]
        assert done == ["a.png", "b.png"]  # c.png is redone by the rerun: its object is replaced whole
        assert not again.records.is_done("a.png", "sha-a.png", _key("a blue square"))  # another caption: redo
        assert not again.records.is_done("a.png", "sha-other", _key("a red circle"))  # another input: redo
        state = sorted(k for k in s3.list(out) if k.startswith(STATE_DIR))
        assert state == [f"{STATE_DIR}/records.jsonl"]  # the segment folded in, then deleted
    finally:
        again.close()
    s3.write(out.child("b.png"), b"truncated")  # an output replaced behind our back no longer counts
    third = batch_locations.ObjectDestination(s3, out)
    third.open()
    try:
        assert not third.records.is_done("b.png", "sha-b.png", _key("a red circle"))
        assert third.records.is_done("a.png", "sha-a.png", _key("a red circle"))
    finally:
        third.close()


def test_ray_batch_from_an_s3_manifest_to_an_s3_prefix(s3, tmp_path):
    """The whole command on S3, twice, in a private network namespace with its own S3 server: every
    image once, the failure report and the records beside them, a rerun that redoes nothing, the
    pixels of the plain local batch."""
    pytest.importorskip("ray", reason="needs Ray: pip install 'langcolor[scale]'")
    from test_batch import _small_archive, _write_captions
    from test_ray_batch import _plain_batch, run_scenario

    src = tmp_path / "archive"
    captions = _small_archive(src)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    manifest = tmp_path / "captions.csv"
    _write_captions(manifest, captions | {"broken.png": "a red circle"})
    _plain_batch(src, manifest, tmp_path / "plain")
    got = tmp_path / "downloaded"
    report = run_scenario("s3", str(src), str(manifest), str(got), str(tmp_path / "report.json"))

    first, rerun = report["first"], report["rerun"]
    assert first["summary"].startswith(f"done {len(captions)}, already done 0,") and "failed 1 " in first["summary"], first
    assert rerun["summary"].startswith(f"done 0, already done {len(captions)},"), rerun
    assert first["off_loopback"] == [] and rerun["off_loopback"] == [] and first["wildcard"] == []
    assert report["source_unchanged"]
    expected = {Path(r).with_suffix(".png").as_posix() for r in captions}
    assert set(report["after_rerun"]) == expected | {"failures.jsonl", f"{STATE_DIR}/records.jsonl"}
    records = [json.loads(line) for line in (got / STATE_DIR / "records.jsonl").read_text().splitlines()]
    assert sorted(r["output"] for r in records) == sorted(expected)
    assert [json.loads(line)["input"] for line in (got / "failures.jsonl").read_text().splitlines()] == ["broken.png"]
    for out_rel in expected:
        a = np.asarray(Image.open(got / out_rel), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "plain" / out_rel), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, out_rel

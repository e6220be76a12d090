"""`langcolor batch --ray`: the same outputs and records as the plain batch, and the guarantees on a
real two-node Ray cluster whose worker process and whole second node are SIGKILLed mid-run.

Ray binds every interface whatever it is told, so every Ray run here happens inside a network
namespace of its own with only loopback (``unshare -n``, as root: CI runs as root), driven by
``tests/ray_scenario.py``; ``ss`` is read there while the run is going. Skipped, saying so, where
Ray is not installed or no namespace can be made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ray_cluster import private_network_command
from test_batch import (BAD, GOOD, MAX_PIXELS, _lightness, _outputs, _records, _small_archive, _write_captions,
                        tree_hashes, write_bulk, write_photos)

pytest.importorskip("ray", reason="needs Ray: pip install 'langcolor[scale]'")

SCENARIO = Path(__file__).with_name("ray_scenario.py")


def run_scenario(mode: str, *args: str, timeout_s: float = 600, env: dict | None = None) -> dict:
    report = Path(args[-1])
    cmd = private_network_command([sys.executable, str(SCENARIO), mode, *args])
    if cmd is None:
        pytest.skip("Ray tests run in a private network namespace (unshare -n), which needs root: "
                    "Ray listens on every interface")
    # Ray keeps state in $HOME (--ray local writes ~/.ray/auth_token): a home of the test's own.
    home = report.parent / "home"
    home.mkdir(exist_ok=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "HOME": str(home), **(env or {})})
    assert done.returncode == 0 and report.exists(), done.stderr[-4000:]
    return json.loads(report.read_text())


def _plain_batch(src: Path, manifest: Path, out: Path, repo: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "langcolor.client.cli", "batch", str(src), "--output", str(out), "--captions",
           str(manifest), "--default-caption", "a gray square", "--max-pixels", str(MAX_PIXELS), "--no-progress",
           "--batch-size", "2", *(["--model-repository", str(repo)] if repo else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # the broken file fails


def _record_keys(out: Path) -> dict[str, tuple]:
    return {r["output"]: (r["input"], r["input_sha256"], r["model"], r["weights_sha256"], r["condition"],
                          r["out_format"], r["output_size"]) for r in _records(out)}


def _local_against_plain(tmp_path: Path, env: dict | None = None, repo: Path | None = None) -> None:
    """``--ray local`` (twice) and the plain batch on one archive: the same outputs, records and failures."""
    src = tmp_path / "archive"
    captions = _small_archive(src)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    manifest = tmp_path / "captions.csv"
    _write_captions(manifest, captions | {"broken.png": "a red circle"})
    _plain_batch(src, manifest, tmp_path / "plain", repo)
    report = run_scenario("local", str(src), str(manifest), str(tmp_path / "ray"), str(tmp_path / "report.json"),
                          env=env)

    first, rerun = report["first"], report["rerun"]
    assert first["returncode"] == 1, first["stderr_tail"]
    assert first["summary"].startswith(f"done {len(captions)}, already done 0,") and "failed 1 " in first["summary"]
    assert rerun["summary"].startswith(f"done 0, already done {len(captions)},"), rerun  # nothing redone
    # Every socket on loopback, and local mode binds 127.0.0.1 itself: no wildcard listener either.
    assert first["ss_samples"] > 5 and first["loopback_sockets_seen"] > 0
    assert first["off_loopback"] == [] and rerun["off_loopback"] == []
    assert first["wildcard"] == [] and rerun["wildcard"] == []

    plain, ray = tmp_path / "plain", tmp_path / "ray"
    assert _outputs(ray) == _outputs(plain) == {Path(r).with_suffix(".png").as_posix() for r in captions}
    keys_plain, keys_ray = _record_keys(plain), _record_keys(ray)
    assert keys_ray.keys() == keys_plain.keys()
    for out_rel, key in keys_ray.items():  # same input hash, model, weights, condition and format
        assert key[:6] == keys_plain[out_rel][:6], out_rel
        a = np.asarray(Image.open(ray / out_rel), dtype=np.int16)
        b = np.asarray(Image.open(plain / out_rel), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).max() <= 2, out_rel  # one model (threads, or the server's)
    assert [json.loads(line)["input"] for line in (ray / "failures.jsonl").read_text().splitlines()] == ["broken.png"]


def test_ray_local_gives_the_plain_batch_outputs_and_records_and_resumes(tmp_path):
    _local_against_plain(tmp_path)


@pytest.mark.server
def test_ray_actors_through_the_nodes_triton_with_a_key(tmp_path, served_repository):
    """--ray local --server: each actor reaches the Triton on its node with the key file it reads there;
    the records carry the served weights hash, which is the shipped one, so they equal the plain run's."""
    from langcolor.client.errors import ModelNotFoundError
    from langcolor.server.launcher import TritonDist

    try:
        TritonDist.locate()
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    key_file = tmp_path / "api-key"
    key_file.write_text("ray-actors-key-" + "k" * 24 + "\n")
    key_file.chmod(0o600)
    _local_against_plain(tmp_path, {"LANGCOLOR_SCENARIO_SERVE": str(served_repository.path),
                                    "LANGCOLOR_SCENARIO_KEY_FILE": str(key_file)}, served_repository.path)


@pytest.mark.slow
def test_worker_and_node_killed_mid_run_every_output_exactly_once(tmp_path):
    """Two `ray start` nodes; the batch runs with --ray auto; the actor process on the second node is
    SIGKILLed, then the whole second node. The job finishes (or a rerun does): every good image
    exactly once, none corrupt, the bad files in failures.jsonl, the inputs untouched."""
    from langcolor.client.imageio import load_image

    src, out = tmp_path / "archive", tmp_path / "colour"
    write_photos(src)
    captions = dict(GOOD) | write_bulk(src, 300)  # enough that the run outlives both kills on an idle machine
    manifest = tmp_path / "captions.csv"
    _write_captions(manifest, captions)
    before = tree_hashes(src)
    report = run_scenario("faults", str(src), str(manifest), str(out), str(tmp_path / "report.json"))

    assert report["private_network"], report["interfaces"]  # only lo here: a wildcard listener is loopback-only
    assert report["sockets"]["off_loopback"] == [], report["sockets"]["off_loopback"]
    assert report["sockets_at_end"]["off_loopback"] == []
    assert report["actor_on_second_node"] and report["killed_worker_pids"], report
    assert report["actor_restarted_on_second_node"], "Ray did not restart the killed actor"
    assert report["run_alive_at_node_kill"], "the run ended before the node could be killed; give it more images"
    assert report["left_after_stop"] == 0 and report["second_node_left"] == 0
    first = report["first"]
    assert "resubmitting" in first["stderr_tail"], first["stderr_tail"]  # the kills hit work in flight
    final = report.get("rerun", first)
    assert final["returncode"] == 1 and f"failed {len(BAD)} " in final["summary"], final  # only the bad files

    expected = {Path(rel).with_suffix(".png").as_posix() for rel in captions}
    assert _outputs(out) == expected  # no temporaries, nothing else
    written = report["record_outputs_after_first"]  # the first run's log as written, before any compaction
    assert len(written) == len(set(written)), "an output was written twice"
    assert sorted(r["output"] for r in _records(out)) == sorted(expected)  # one record each, after any rerun
    report_lines = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["input"] for f in report_lines) == sorted(BAD)
    assert tree_hashes(src) == before
    for rel in captions:  # none corrupt: every output decodes whole, at the input's size, with its L
        original = load_image(src / rel)
        result = load_image(out / Path(rel).with_suffix(".png"))
        assert result.size == original.size, rel
        diff = np.abs(_lightness(result.rgb) - _lightness(original.rgb))
        assert diff.max() < 1.0, (rel, float(diff.max()))


def test_a_lost_batch_is_retried_one_image_at_a_time_and_a_killer_image_fails_alone():
    """What the driver does with a batch whose worker died: every image back at the front of the
    queue, one per batch; an image on which the worker dies MAX_LOSSES times fails alone."""
    from collections import deque
    from types import SimpleNamespace

    from langcolor.client.batch_ray import MAX_LOSSES, _Batch, _Driver

    reported: list[tuple[str, str]] = []
    dest = SimpleNamespace(report=SimpleNamespace(add=lambda rel, reason: reported.append((rel, reason))))
    driver = _Driver(None, None, dest, None, SimpleNamespace(model="lcode"), "w" * 64, 60.0)
    bar = SimpleNamespace(update=lambda n: None)
    items = [(SimpleNamespace(rel=f"{i}.png"), "sha", None, None) for i in range(3)]
    queue = deque([_Batch([(SimpleNamespace(rel="waiting.png"), "sha", None, None)])])
    assert driver._requeue(_Batch(items), RuntimeError("node lost"), queue, bar) == 0
    assert [[e[0].rel for e in b.items] for b in queue] == [["0.png"], ["1.png"], ["2.png"], ["waiting.png"]]
    killer = queue.popleft()
    for _ in range(MAX_LOSSES - 1):
        assert driver._requeue(killer, RuntimeError("worker died"), queue, bar) == 0
        assert queue.popleft() is killer  # retried first, before the rest
    assert driver._requeue(killer, RuntimeError("worker died"), queue, bar) == 1
    assert driver.failed == 1 and reported[0][0] == "0.png" and f"died {MAX_LOSSES} times" in reported[0][1]
    assert [b.items[0][0].rel for b in queue] == ["1.png", "2.png", "waiting.png"]  # the others untouched

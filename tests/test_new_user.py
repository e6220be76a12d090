"""What a new user meets first: the vocabulary in plain sight, captions that cannot do anything said
plainly (in-process, in a batch and at the endpoint), and a server URL that names its protocol."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from langcolor.client.cli import main
from langcolor.client.colorizer import Colorizer
from langcolor.client.errors import CaptionError

SHAPES = "client/examples/shapes.png"


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _photo() -> bytes:
    from skimage import data as skdata

    return _png(skdata.astronaut()[::8, ::8])


def test_models_lists_every_family_its_inputs_and_the_words_it_knows(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "lcode (default)" in out and "lcoins" in out and "--caption" in out
    known = next(line for line in out.splitlines() if "every word it knows" in line)
    for word in ("red", "circle", "background", "triangle"):
        assert f" {word}" in known
    assert main(["models", "--json"]) == 0
    docs = {d["family"]: d for d in json.loads(capsys.readouterr().out)}
    lcode = docs["lcode"]
    assert lcode["tokenizer"] == "word level" and lcode["image_size"] == 64 and "cat" not in lcode["known_words"]
    assert lcode["colour_words"] == sorted(["blue", "brown", "gray", "green", "orange", "pink", "purple", "red", "yellow"])
    assert len(lcode["weights_sha256"]) == 64 and lcode["conditions"][0]["name"] == "TOKENS"


def test_no_known_word_points_to_the_word_list():
    with pytest.raises(CaptionError, match=r"no word of the caption is known.*'cat'.*langcolor models"):
        Colorizer().colorize(_photo(), "cat")


@pytest.mark.parametrize("caption", ["a woman in a dress", "the circle", "a"])
def test_a_caption_without_a_known_colour_is_said_to_be_caption_free(caption):
    result = Colorizer().colorize(_photo(), caption)
    kinds = [n.kind for n in result.notes]
    assert "caption-free" in kinds, result.notes
    note = next(n for n in result.notes if n.kind == "caption-free")
    assert "no colour" in note.message and "red" in note.message
    # ...and it is, in effect, the caption-free result (a caption of padding alone): a few Lab units
    # from it on average, where a caption with colours moves it by several times that.
    colorizer = Colorizer()
    blank = colorizer.infer({"L": colorizer.prepare(_photo()).l_small[None],
                             "TOKENS": np.zeros((1, colorizer.geometry.max_tokens), np.int64)})["AB"][0]
    coloured = colorizer.colorize(_photo(), "a red circle on a blue background").ab_small
    assert np.abs(result.ab_small - blank).mean() < 4.0
    assert np.abs(coloured - blank).mean() > 2.5 * np.abs(result.ab_small - blank).mean()


def test_a_colour_caption_gets_no_caption_free_note():
    result = Colorizer().colorize(_photo(), "a red circle on a blue background")
    assert result.notes == ()


def test_the_command_line_says_the_result_is_caption_free(tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main(["colorize", SHAPES, "-c", "a woman in a red dress", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ignored unknown words: woman in dress" in printed
    assert "caption-free" not in printed  # "red" is a colour it knows
    assert main(["colorize", SHAPES, "-c", "a woman in a dress", "-o", str(out)]) == 0
    assert "the result is the caption-free one" in capsys.readouterr().out


def test_batch_records_and_summarises_caption_free_images(tmp_path, capsys):
    src = tmp_path / "archive"
    src.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (src / name).write_bytes(_photo())
    manifest = tmp_path / "inputs.csv"
    manifest.write_text("path,caption\na.png,a cat on a sofa\nb.png,a red circle\nc.png,an old photo of the ring\n")
    out = tmp_path / "out"
    assert main(["batch", str(src), "-o", str(out), "--manifest", str(manifest), "--no-progress"]) == 0
    assert "note: 2 image(s) with 'caption-free'" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / ".langcolor" / "records.jsonl").read_text().splitlines()]
    free = {r["output"] for r in records if any(n["kind"] == "caption-free" for n in r["notes"])}
    assert free == {"a.png", "c.png"}


@pytest.mark.server
def test_the_endpoint_answers_the_same_notes(server_url, protocol, trained_repository):
    from langcolor.client.remote import RemoteStages

    with RemoteStages(server_url, protocol, endpoint=True) as remote:
        answer = remote.colorize_bytes(_photo(), "a woman in a dress")
        assert [n.kind for n in answer.notes] == ["unknown-words", "caption-free"]
        assert answer.notes[0].words == ("woman", "in", "dress")
        assert remote.colorize_bytes(_photo(), "a red circle").notes == ()


@pytest.mark.server
def test_a_port_of_the_other_protocol_is_named(triton_server):
    from langcolor.client.remote import RemoteStages, ServerUnavailableError

    e = triton_server.endpoints
    with pytest.raises(ServerUnavailableError, match=rf"answers Triton's HTTP protocol.*http://{e.http_url}"):
        RemoteStages(e.http_url, "grpc", endpoint=True, retries=0)  # the HTTP port, asked over gRPC
    with pytest.raises(ServerUnavailableError, match=rf"answers Triton's GRPC protocol.*grpc://{e.grpc_url}"):
        RemoteStages(e.grpc_url, "http", endpoint=True, retries=0)
    # A URL's scheme picks the protocol: no --protocol needed.
    with RemoteStages(f"http://{e.http_url}", endpoint=True) as remote:
        assert remote.protocol == "http"
    with RemoteStages(f"grpc://{e.grpc_url}", endpoint=True) as remote:
        assert remote.protocol == "grpc"

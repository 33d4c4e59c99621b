"""``hmrcritic critique`` and ``hmrcritic trace`` end to end (real rendering, real graph, real memory)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hmrcritic.cli import main

pytestmark = pytest.mark.usefixtures("small_prior")


@pytest.fixture(scope="module")
def user_inputs(tmp_path_factory):
    """An image, its COCO-17 keypoint JSON and a hypotheses .npz, consistent with one another."""
    from PIL import Image

    from hmrcritic.agent.evidence import project
    from hmrcritic.agent.groups import perturb_group
    from hmrcritic.hmr.body import load_body_model
    from hmrcritic.hmr.camera import default_intrinsics
    from hmrcritic.hmr.poses import sample_poses
    from hmrcritic.hmr.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    d = tmp_path_factory.mktemp("user")
    W = H = 256
    K = default_intrinsics(W, H, None).numpy()
    p = sample_poses(1, 5)
    go = matrix_to_axis_angle(axis_angle_to_matrix(torch.tensor([[np.pi, 0, 0]])) @
                              axis_angle_to_matrix(p["global_orient_body"]))
    body = load_body_model()
    out = body(go, p["body_pose"], p["betas"], torch.tensor([[0.0, 0.1, 4.0]]))
    uv = project(body.coco17(out), torch.as_tensor(K))[0].numpy()
    kp = [[float(u), float(v), 1.0] for u, v in uv]
    Image.fromarray(np.full((H, W, 3), 200, np.uint8)).save(d / "person.png")
    (d / "person.json").write_text(json.dumps(kp))
    scene = SimpleNamespace(keypoints=np.array(kp, np.float32), K=K, global_orient=go[0].numpy(),
                            body_pose=p["body_pose"][0].numpy(), betas=p["betas"][0].numpy())
    hyps = perturb_group(scene, 4, np.random.default_rng(0))
    np.savez(d / "hyps.npz", **hyps)
    return d


def test_critique_writes_table_scores_and_report(user_inputs, tmp_path, capsys):
    d = user_inputs
    out = tmp_path / "out"
    rc = main(["critique", "--image", str(d / "person.png"), "--keypoints", str(d / "person.json"),
               "--hypotheses", str(d / "hyps.npz"), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "rank" in text and "h0" in text and "report:" in text
    scores = json.loads((out / "scores.json").read_text())
    assert re.fullmatch(r"person-[0-9a-f]{8}", scores["group_id"]) and len(scores["scores"]) == 4
    assert sorted(scores["ranking"]) == [0, 1, 2, 3]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2  # overlay grid + side grid (+ input image)
    assert "Self-reflection" in html and "Recalled rules" in html and "starter-" in html

    rc = main(["trace", "--last"])
    text = capsys.readouterr().out
    assert rc == 0 and " ms" in text and "render" in text and "memory_write" in text
    assert main(["trace", "--last", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    order = [r["node"] for r in records if r["event"] == "node"]
    assert order[:4] == ["render", "recall", "critique", "reflect"] and order[-1] == "memory_write"
    assert all(r["seconds"] >= 0 for r in records if r["event"] == "node")

    rc = main(["critique", "--image", str(d / "person.png"), "--keypoints", str(d / "person.json"),
               "--hypotheses", str(d / "hyps.npz"), "--out", str(out), "--json"])
    again = json.loads(capsys.readouterr().out)
    assert rc == 0 and again["resumed"] is True and again["ranking"] == scores["ranking"]
    # other settings are another critique, not the finished one (its report would say "rendered")
    rc = main(["critique", "--image", str(d / "person.png"), "--keypoints", str(d / "person.json"),
               "--hypotheses", str(d / "hyps.npz"), "--out", str(out), "--json", "--no-render"])
    unrendered = json.loads(capsys.readouterr().out)
    assert rc == 0 and unrendered["resumed"] is False


def test_another_image_with_the_same_file_name_is_its_own_group(user_inputs, tmp_path, capsys):
    """The default group id was the image's file stem: a second img.png (another folder, other keypoints) was
    refused as "already critiqued with different inputs"."""
    d = user_inputs
    other = tmp_path / "other"
    other.mkdir()
    (other / "person.png").write_bytes((d / "person.png").read_bytes())
    kp = json.loads((d / "person.json").read_text())
    text = json.dumps(kp)
    nums = re.findall(r"\d+\.\d+", text)
    kp2 = json.loads(text.replace(nums[0], str(float(nums[0]) + 3.0), 1))  # one keypoint moved: other inputs
    (other / "person.json").write_text(json.dumps(kp2))
    args = ["--hypotheses", str(d / "hyps.npz"), "--no-render", "--json"]
    assert main(["critique", "--image", str(d / "person.png"), "--keypoints", str(d / "person.json"), *args,
                 "--out", str(tmp_path / "a")]) == 0
    first = json.loads(capsys.readouterr().out)
    rc = main(["critique", "--image", str(other / "person.png"), "--keypoints", str(other / "person.json"), *args,
               "--out", str(tmp_path / "b")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    second = json.loads(out.out)
    assert second["group_id"] != first["group_id"] and not second["resumed"]
    # the same inputs again resume their own thread
    assert main(["critique", "--image", str(d / "person.png"), "--keypoints", str(d / "person.json"), *args,
                 "--out", str(tmp_path / "a")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["group_id"] == first["group_id"] and again["resumed"]


def test_a_group_id_with_brackets_prints_as_it_is(user_inputs, tmp_path, capsys):
    """Square brackets in user or endpoint text are not the table library's markup (it crashed on "[/x]")."""
    d = user_inputs
    rc = main(["critique", "--image", str(d / "person.png"), "--keypoints", str(d / "person.json"), "--no-render",
               "--hypotheses", str(d / "hyps.npz"), "--group-id", "run[/x][red]", "--out", str(tmp_path / "o")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "run[/x][red]" in out.out


def test_trace_mermaid(capsys):
    assert main(["trace", "--mermaid"]) == 0
    text = capsys.readouterr().out
    assert "graph TD" in text and "reflect -.-> critique" in text


@pytest.mark.parametrize("case", ["keypoints_shape", "corrupt_image", "nan_hypotheses", "missing_key"])
def test_bad_input_is_one_line_error(user_inputs, tmp_path, capsys, case):
    d = user_inputs
    image, kp, hyps = d / "person.png", d / "person.json", d / "hyps.npz"
    if case == "keypoints_shape":
        kp = tmp_path / "kp.json"
        kp.write_text(json.dumps([[1.0, 2.0, 1.0]] * 12))
    elif case == "corrupt_image":
        image = tmp_path / "broken.png"
        image.write_bytes(b"\x89PNG not really")
    else:
        z = dict(np.load(hyps))
        if case == "nan_hypotheses":
            z["body_pose"][1, 7] = np.nan
        else:
            z.pop("betas")
        hyps = tmp_path / "h.npz"
        np.savez(hyps, **z)
    rc = main(["critique", "--image", str(image), "--keypoints", str(kp), "--hypotheses", str(hyps),
               "--out", str(tmp_path / "o"), "--no-render", "--group-id", f"bad-{case}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error:") and len(err.splitlines()) == 1
    expected = {"keypoints_shape": "17", "corrupt_image": "broken.png", "nan_hypotheses": "hypothesis 1",
                "missing_key": "betas"}[case]
    assert expected in err
    assert not (tmp_path / "o" / "scores.json").exists()


def test_critique_scene_and_missing_model(user_inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))  # its own tiny test split, not the session's
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")
    rc = main(["critique", "--scene", "test:0", "--hypotheses", str(user_inputs / "hyps.npz"), "--no-render",
               "--out", str(tmp_path / "s"), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    payload = json.loads(captured.out)
    assert payload["group_id"] == "test-000000" or payload["group_id"].startswith("test")
    assert len(payload["scores"]) == 4 and (tmp_path / "s" / "report.html").exists()
    rc = main(["critique", "--scene", "test:0", "--model", str(tmp_path / "missing.pt"), "--out",
               str(tmp_path / "m"), "--no-render"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and len(err.splitlines()) == 1
    rc = main(["critique", "--scene", "test", "--hypotheses", str(user_inputs / "hyps.npz")])
    assert rc == 2 and "SPLIT:INDEX" in capsys.readouterr().err


def test_report_embeds_images_by_their_content_not_their_name(tmp_path):
    """A JPEG named .png is labelled JPEG; a TIFF (browsers do not show it) is embedded re-encoded as PNG."""
    import base64
    import re

    import numpy as np
    from PIL import Image

    from hmrcritic.agent.report import _img

    Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(tmp_path / "a.tiff")
    Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(tmp_path / "jpeg.png", format="JPEG")
    mime = {n: re.search(r"data:([a-z/]+);base64,([^\"]+)", _img(str(tmp_path / n), "x")).groups()
            for n in ("a.tiff", "jpeg.png")}
    assert mime["jpeg.png"][0] == "image/jpeg"
    assert mime["a.tiff"][0] == "image/png" and base64.b64decode(mime["a.tiff"][1]).startswith(b"\x89PNG")

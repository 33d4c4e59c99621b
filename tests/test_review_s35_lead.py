"""Session 35, the lead's own fixes (each test failed on the code before its fix)."""
from __future__ import annotations

import pytest
import test_review_s22_curve as s22

pytestmark = pytest.mark.usefixtures("small_prior")  # tiny splits: no 20k-scene train split for the pose prior


def test_explore_eval_records_what_scored_what(tmp_path):
    """explore-eval's JSON did not say the groups' size, their source nor the judge, where evaluate-critic's
    payload does (`num_generations`, `group_source`, `judge`): two results of a model's groups and of perturbed
    ground truth, or of the builtin judge and a VLM, read the same."""
    from hmrcritic.agent.learning_curve import explore_eval
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(tmp_path / "mem", chroma_url="").close()  # the starter memory
    groups = s22._groups("test", 2)
    res = explore_eval(tmp_path / "mem", groups, variants=["evidence_only"])
    assert res["num_generations"] == len(groups[0].errors_mm)
    assert res["group_source"] == groups[0].source
    assert res["judge"] == "builtin" and "judge_model" not in res
    groups[1].source = "model" if groups[0].source != "model" else "perturbed"
    assert explore_eval(tmp_path / "mem", groups, variants=["evidence_only"])["group_source"] == "mixed"


def test_explore_eval_table_names_its_columns_as_evaluate_critic_does():
    """The two tables of one critic named one figure twice: "r pts" / "top1 PA" (explore-eval) and "r pooled" /
    "top-1 PA" (evaluate-critic)."""
    import json
    from pathlib import Path

    from hmrcritic.agent.learning_curve import format_rows

    res = json.loads((Path(__file__).resolve().parents[1] / "docs/results/explore_eval.json").read_text())
    head = format_rows(res).splitlines()[0]
    assert "r pooled" in head and "top-1 PA" in head and "top-1 MPJPE" in head
    assert "r pts" not in head and "top1" not in head


def test_train_base_refuses_a_resume_under_other_settings_before_loading_the_split(tmp_path, monkeypatch):
    """A resume whose state.pt was written under another recipe (or is damaged) was refused only after the train
    split was loaded — or generated, minutes on a fresh home. The state's own checks come first now."""
    import sys
    from dataclasses import replace
    from pathlib import Path

    import hmrcritic.hmr.train as train
    from hmrcritic.errors import AssetError

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_train_resume import TINY, _cfg, _data

    cfg = _cfg()
    train.train_base(cfg, tmp_path, data=_data(), stop_at=5)
    loads = []
    monkeypatch.setattr(train, "load_train_data", lambda *a, **k: loads.append(a) or _data())
    with pytest.raises(AssetError, match="different training config"):
        train.train_base(replace(cfg, model=replace(TINY, layers=2)), tmp_path)
    (tmp_path / "state.pt").write_bytes(b"not a state")
    with pytest.raises(AssetError, match="cannot resume"):
        train.train_base(cfg, tmp_path)
    assert loads == []  # refused before the split was read


def test_train_base_api_refuses_a_folder_holding_another_model(tmp_path):
    """`train-base` refused a --out holding a model.pt but no state.pt (not a run of its own: the run overwrote
    that model at its end), but only in the CLI: train_base() from Python overwrote it without a word."""
    import sys
    from pathlib import Path

    from hmrcritic.errors import InputError
    from hmrcritic.hmr.train import train_base

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_train_resume import _cfg, _data

    (tmp_path / "model.pt").write_bytes(b"someone's model")
    with pytest.raises(InputError, match="holds a model.pt but no state.pt"):
        train_base(_cfg(), tmp_path, data=_data())
    assert (tmp_path / "model.pt").read_bytes() == b"someone's model"
    assert train_base(_cfg(), tmp_path, data=_data(), resume=False).name == "model.pt"  # --no-resume: starts over


def test_trace_json_alone_is_told_what_it_needs(capsys):
    """`trace --json` with neither a run id nor --last was told "give a RUN_ID or --last (or --mermaid)", and
    `--mermaid --json` is refused in turn."""
    from hmrcritic.cli import main

    assert main(["trace", "--json"]) == 2
    err = capsys.readouterr().err
    assert "--json prints a run's trace records: give a RUN_ID or --last" in err and "--mermaid" not in err, err


def test_a_manifest_without_a_generator_version_is_said_to_be_no_split_manifest(tmp_path, monkeypatch):
    """A `{}` (or hand-made) manifest.json was reported as "made by generator None, not this one's …"."""
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.data import load_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))  # never the suite's shared splits
    folder = tmp_path / "data" / "test"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    with pytest.raises(AssetError, match="not a split manifest") as info:
        load_split("test", generate=False)
    assert "None" not in str(info.value)


def test_a_library_warning_points_at_the_callers_line(tmp_path):
    """Warnings counted a fixed ``stacklevel`` at each call site, which pointed at a library line whenever the path
    from the caller was deeper (or shallower) than that count; they name the caller's own line now."""
    import json
    import warnings

    from PIL import Image

    from hmrcritic.hmr.data import read_keypoints_json, sample_from_user

    person = [[100.0 + 5 * i, 100.0 + 9 * i, 0.9] for i in range(17)]
    path = tmp_path / "two.json"
    path.write_text(json.dumps([{"keypoints": person}, {"keypoints": [[x, y, 0.5] for x, y, _ in person]}]))
    image = tmp_path / "photo.png"
    Image.new("RGB", (640, 480), (90, 90, 90)).save(image)
    for call in (lambda: read_keypoints_json(path, image_size=(640, 480)), lambda: sample_from_user(image, path)):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            call()
        assert got and all(w.filename == __file__ for w in got), [(w.filename, w.lineno) for w in got]

"""Session 27, the lead's follow-ups of the helpers' reports."""

from __future__ import annotations

import json

import pytest


def test_a_shipped_models_nan_figures_are_json_null(tmp_path):
    """``train-base --ship`` wrote an evaluation figure that is NaN into base_model.json as the bare word NaN, which
    strict JSON readers (jq, JavaScript) refuse for the whole file; it is null now, the other figures kept."""
    from hmrcritic.hmr.diffusion import load_model, save_model
    from hmrcritic.hmr.train import ship_model

    ckpt = tmp_path / "m.pt"
    save_model(load_model(), ckpt)
    _, js = ship_model(ckpt, {"test": {"pa_mpjpe_mm": 81.5, "diversity_occluded_mm": float("nan")}},
                       tmp_path / "assets")

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    meta = json.loads(js.read_text(encoding="utf-8"), parse_constant=refuse)
    assert meta["eval"]["test"] == {"pa_mpjpe_mm": 81.5, "diversity_occluded_mm": None}


def test_a_reset_refuses_a_folder_in_an_exploration_records_place_before_deleting_anything(tmp_path):
    """``reset`` unlinks the exploration records: a folder under one of their names stopped it half-way — the
    collections deleted, the memory marked unfinished (it then refuses to open) — and every later reset stopped at the
    same folder. It is refused first now, nothing deleted, and the reset works once the folder is moved."""
    from hmrcritic.errors import InputError
    from hmrcritic.memory.store import EXPLORE_FILES, MemoryStore

    mem = MemoryStore(tmp_path / "m")
    rules = len(mem.rules.all())
    (tmp_path / "m" / EXPLORE_FILES[1]).mkdir()
    with pytest.raises(InputError, match="a folder where the memory keeps an exploration record; move it away"):
        mem.reset(seed_starter=False)
    assert len(mem.rules.all()) == rules  # nothing deleted
    mem.close()
    mem = MemoryStore(tmp_path / "m")  # and it still opens
    (tmp_path / "m" / EXPLORE_FILES[1]).rmdir()
    mem.reset(seed_starter=False)
    assert mem.rules.all() == []
    mem.close()


def test_a_partial_curves_rounds_must_be_integers(tmp_path):
    """A partial learning-curve file whose earlier row has the round ``true`` (or 1.0) passed the "rounds 0, 1, …"
    check, as ``True == 1`` in Python; only the last row's round was type-checked."""
    from types import SimpleNamespace

    from test_review_s26_fuzz2 import curve_row

    from hmrcritic.agent.explore import PROGRESS_FILE
    from hmrcritic.agent.learning_curve import PARTIAL_FILE, _resume_rows

    mem = SimpleNamespace(path=str(tmp_path / "mem"), version=lambda: "v0")
    (tmp_path / "mem").mkdir()
    (tmp_path / "mem" / PROGRESS_FILE).write_text(json.dumps({"runs": {}, "rounds_total": 2, "batches": []}))
    settings = {"split": "train"}

    def partial(rows):
        (tmp_path / PARTIAL_FILE).write_text(json.dumps({"rows": rows, "memory": mem.path, "settings": settings}))
        return _resume_rows(mem, tmp_path, settings)

    assert partial([curve_row(0), curve_row(1), curve_row(2)])[0]  # the well-formed file is resumed
    for odd in (False, 0.0):  # a round 0 that is no int
        rows, why = partial([curve_row(odd), curve_row(1), curve_row(2)])
        assert rows == [] and "is unreadable" in why


def test_a_learning_curve_out_dir_that_cannot_be_checked_is_an_input_error(tmp_path):
    """``learning_curve(out_dir=…)`` checks its out_dir before round 0; a path the system refuses to look at (a name
    too long, a folder the user may not search) escaped from the API as a bare OSError."""
    from hmrcritic.agent.learning_curve import _check_out_dir
    from hmrcritic.errors import InputError

    with pytest.raises(InputError, match="--out .* cannot be checked"):
        _check_out_dir(tmp_path / ("x" * 300) / "out")

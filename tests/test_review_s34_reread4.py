"""Review s34, fourth re-read (of 200b16a): bugs found in that commit's changes, each shown by a test that fails on
the code as it was (written as strict xfails, un-marked once fixed in the same session).

Nothing here trains or installs a model: ``train_base``, ``ship_model`` and the evaluation are stand-ins (as in
test_review_s34_modelwalk), and the package's assets folder is replaced by a temporary one."""

from __future__ import annotations

import json

import pytest
from test_review_s34_modelwalk import stand_in_train_base, temporary_assets

from hmrcritic.cli import main


@pytest.fixture()
def fake_run(monkeypatch, tmp_path):
    """``train-base`` with training, loading, evaluation and installing replaced by stand-ins; the stand-in ship
    writes the run's model.pt bytes over the temporary assets' base_model.pt, then its .json (``seen["fail_json"]``
    makes that second write fail as a full disk would, after the .pt was replaced: ship_model writes them one by
    one)."""
    seen: dict = {"trained": 0, "fail_json": False}
    assets = temporary_assets(tmp_path)

    def fake_train(cfg, out, **kw):
        seen["trained"] += 1
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.pt").write_bytes(b"new weights")
        (out / "state.pt").write_bytes(b"state")
        return out / "model.pt"

    def fake_ship(path, evals, dest_dir=None, command=None):
        (assets / "base_model.pt").write_bytes(path.read_bytes())
        if seen["fail_json"]:
            raise OSError(28, "No space left on device")
        (assets / "base_model.json").write_text('{"eval": "the new figures"}')
        return assets / "base_model.pt", assets / "base_model.json"

    stand_in_train_base(monkeypatch, assets, fake_train, fake_ship)
    return seen


SHIP = ["train-base", "--steps", "2", "--ship", "--eval-limit", "2"]


def test_a_second_ship_of_the_same_run_keeps_the_model_it_first_replaced(fake_run, tmp_path, capsys):
    """``train-base --ship`` run twice on one ``--out`` (the same command again: a finished run resumes, is
    evaluated again and shipped again). The first kept the package's model as replaced_base_model.pt; the second
    copied the assets again — by then this run's own model — over that backup, so the model every figure was
    measured on was left nowhere, while the note still said "the one there now is kept"."""
    out = tmp_path / "run"
    assert main([*SHIP, "--out", str(out)]) == 0
    assert (out / "replaced_base_model.pt").read_bytes() == b"the shipped weights"
    assert main([*SHIP, "--out", str(out)]) == 0
    capsys.readouterr()
    assert (out / "replaced_base_model.pt").read_bytes() == b"the shipped weights"
    assert json.loads((out / "replaced_base_model.json").read_text()) == {"eval": "the shipped figures"}


def test_a_ship_that_failed_half_way_then_ran_again_keeps_the_original_model(fake_run, tmp_path, capsys):
    """ship_model writes base_model.pt, then base_model.json, one by one: a full disk (or Ctrl-C) between the two
    leaves the run's weights installed beside the old figures. The same command run again (space freed) copied
    that pair over the backup the first try had made: replaced_base_model.pt became this run's own weights and the
    original model was gone, its .json now describing weights no longer kept anywhere."""
    out = tmp_path / "run"
    fake_run["fail_json"] = True
    assert main([*SHIP, "--out", str(out)]) != 0
    assert (out / "replaced_base_model.pt").read_bytes() == b"the shipped weights"  # kept before the failure
    fake_run["fail_json"] = False
    assert main([*SHIP, "--out", str(out)]) == 0
    capsys.readouterr()
    assert (out / "replaced_base_model.pt").read_bytes() == b"the shipped weights"


@pytest.mark.parametrize("text, secret", [
    ("{'Name': 'DB_PASSWORD', 'Value': 'hunter2xyz'}", "hunter2xyz"),  # boto3: SSM parameters, ECS/CFN env lists
    ('{"Name": "X-Api-Key", "Value": "sk-abc123456789"}', "sk-abc123456789"),
    ("{'Key': 'api_key', 'Value': 'sk-abc123456789'}", "sk-abc123456789"),  # boto3 Tags, .NET KeyValuePair
])
def test_a_name_value_pair_written_in_capitals_is_masked(text, secret, monkeypatch):
    """200b16a masks HAR/Postman/Kubernetes ``{"name": "X-Api-Key", "value": "…"}`` pairs, reading the "value"
    field in any case (``{"name": …, "Value": …}`` is masked), but the name field only as ``name``/``key``: AWS's
    ``{'Name': 'DB_PASSWORD', 'Value': '…'}`` (boto3's SSM get_parameter, ECS and CloudFormation environment
    lists, Tags' ``Key``/``Value``) kept its secret in view."""
    from hmrcritic import redact

    for var in (*redact.SECRET_ENV_VARS, *redact.URL_ENV_VARS):
        monkeypatch.delenv(var, raising=False)
    assert secret not in redact.scrub(text)


def test_the_lowercase_pair_and_its_neighbours_stay_as_they_were():
    """The cases 200b16a handles (kept passing): a lowercase pair is masked, a harmless name's value is not, and a
    name that is not the value's own neighbour does not count."""
    from hmrcritic.redact import scrub

    assert "sk-abc123456789" not in scrub('{"name": "X-Api-Key", "value": "sk-abc123456789"}')
    assert scrub('{"key": "sort_key", "value": "abc12345"}') == '{"key": "sort_key", "value": "abc12345"}'
    text = '{"name": "x", "comment": "a", "value": "sk-abc123456789"}'
    assert scrub(text) == text

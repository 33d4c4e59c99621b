"""Review s32 (api): the Python API as a notebook meets it — the names findable from the packages a user imports
(``hmrcritic.agent.critique_group``, ``dir(hmrcritic.hmr)``) without loading torch on import, and swapped
arguments named as such."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from hmrcritic.agent.api import ScoredGroup, critique_group
from hmrcritic.agent.state import AgentConfig
from hmrcritic.errors import InputError

pytestmark = pytest.mark.usefixtures("small_prior")


@pytest.fixture()
def group():
    from test_agent_graph import make_group

    s, h, _ = make_group(3, n=3, sample_id="s32-api")
    return s, h


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ})


def test_subpackages_list_and_export_the_notebook_api_without_loading_torch():
    """``hmrcritic.agent.critique_group`` was an AttributeError and ``dir(hmrcritic.agent)`` / ``dir(hmrcritic.hmr)``
    listed nothing of the API README shows; ``hmrcritic.alignment.export`` after ``import hmrcritic`` alone was one
    too. The names now load on first access: importing the packages still loads no torch."""
    code = (
        "import sys, hmrcritic, hmrcritic.agent, hmrcritic.hmr, hmrcritic.alignment\n"
        "assert 'torch' not in sys.modules, 'torch loaded on import'\n"
        "for pkg, names in ((hmrcritic.agent, {'critique_group', 'critique_groups', 'ScoredGroup', 'write_report',\n"
        "                                      'AgentConfig', 'explore', 'api'}),\n"
        "                   (hmrcritic.hmr, {'load_split', 'load_model', 'condition_from_keypoints', 'sample',\n"
        "                                    'evaluate_model', 'load_body_model', 'sample_from_user', 'diffusion'}),\n"
        "                   (hmrcritic.alignment, {'ExportConfig', 'FinetuneConfig', 'validate_dataset', 'export',\n"
        "                                          'finetune'})):\n"
        "    assert names <= set(dir(pkg)), (pkg.__name__, names - set(dir(pkg)))\n"
        "    assert set(pkg.__all__) <= set(dir(pkg))\n"
        "assert 'torch' not in sys.modules, 'torch loaded by dir()'\n"
        "from hmrcritic.agent import critique_group, ScoredGroup\n"
        "from hmrcritic.agent.api import critique_group as cg, ScoredGroup as SG\n"
        "assert critique_group is cg and ScoredGroup is SG\n"
        "from hmrcritic.hmr import sample, load_split\n"
        "from hmrcritic.hmr.diffusion import sample as s2\n"
        "from hmrcritic.hmr.data import load_split as l2\n"
        "assert sample is s2 and load_split is l2\n"
        "for pkg in (hmrcritic.agent, hmrcritic.hmr, hmrcritic.alignment):\n"
        "    for n in pkg.__all__:\n"
        "        getattr(pkg, n)\n"
        "import types\n"
        "# a name shared with a submodule is the submodule, before and after it is imported\n"
        "assert isinstance(hmrcritic.alignment.export, types.ModuleType)\n"
        "assert callable(hmrcritic.alignment.export.export) and callable(hmrcritic.alignment.finetune.finetune)\n"
        "assert isinstance(hmrcritic.agent.explore, types.ModuleType)\n"
        "try:\n    hmrcritic.agent.no_such_name\nexcept AttributeError as e:\n    print(e)\n"
    )
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert "no_such_name" in res.stdout


def test_import_hmrcritic_alone_reaches_a_subpackage_submodule():
    """After ``import hmrcritic`` alone, ``hmrcritic.alignment.export.ExportConfig`` (the path README names)
    resolves, as ``hmrcritic.errors`` does."""
    res = _run("import hmrcritic\nprint(hmrcritic.alignment.export.ExportConfig.__name__)\n"
               "print(hmrcritic.hmr.data.Sample.__name__)\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ExportConfig", "Sample"]


@pytest.mark.parametrize("as_sample", ["dict", "path"])
def test_swapped_sample_and_hypotheses_are_named_as_such(tmp_path, group, as_sample):
    """``critique_group(hypotheses, sample)`` said "no group id … pass group_id=", pointing at an argument the
    user had not got wrong; it now says the first argument looks like the hypotheses."""
    s, h = group
    if as_sample == "path":
        path = tmp_path / "hyp.npz"
        np.savez(path, **h)
        h = str(path)
    with pytest.raises(InputError, match=r"looks like the hypotheses: the order is critique_group\(sample, "):
        critique_group(h, s, config=AgentConfig(render=False, use_memory=False, max_reflections=0),
                       run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_sample_that_is_no_sample_is_named_before_the_group_id(tmp_path):
    """A dict with no keypoints and no group id: the sample is what is wrong, and is what the error names."""
    with pytest.raises(InputError, match="sample must be a Sample"):
        critique_group({"a": 1}, {"body_pose": np.zeros((2, 69))}, config={"use_memory": False},
                       run_dir=tmp_path / "run")


def test_scored_group_documents_what_a_user_reads():
    """``help(ScoredGroup)`` says which fields are typed records and which are dumps, and ``overall`` says its
    order and scale."""
    assert "index order" in (ScoredGroup.overall.__doc__ or "")
    assert "Rule dumps" in (ScoredGroup.__doc__ or "")

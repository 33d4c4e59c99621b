"""Review s18 (text, encodings, terminals and paths from the wider world): a VLM's words with lone surrogates and
escape sequences, rule texts that look like rich markup, a search query or import file that is not valid text,
an image whose file name is not UTF-8, and a memory folder named in UTF-8 under an ASCII locale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import StubOpenAIServer  # noqa: E402
from test_vlm_judge import N, images, make_ctx, make_judge  # noqa: E402, F401

from hmrcritic.cli import main  # noqa: E402
from hmrcritic.errors import InputError  # noqa: E402

ESC = "\x1b]0;pwned\x07\x1b[2J"
KEPT = ["emoji 🦵🏽 knee ✔", "مرحبا الركبة منحنية", "e\u0301 combining", "family 👨\u200d👩\u200d👧"]


def _unstorable(text: str) -> list[str]:
    """The characters of ``text`` that no UTF-8 file or terminal should get: surrogates and controls/overrides."""
    bidi = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    return sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cs", "Cc") or c in bidi})


def test_a_vlm_answer_with_lone_surrogates_and_escapes_is_kept_as_clean_text(images):  # noqa: F811
    """A rationale holding ``"\\ud800"`` (JSON for a lone surrogate: an emoji cut in half) was stored as it came:
    the critique then died at the memory write (Chroma: "surrogates not allowed") and report.html could not be
    written; ESC sequences went into scores.json, the memory and the CLI table. Other scripts, emoji sequences and
    combining marks are kept as they are."""
    weird = ["lone \ud800 surrogate", f"esc {ESC} \u202egnirts\u202c nul\x00"]
    texts = KEPT[:N - 2] + weird
    answer = {"scores": [{"index": i, "overall": 5 + i, "motion_structure": 5, "physical_feasibility": 5,
                          "image_alignment": 5, "rationale": t} for i, t in enumerate(texts)],
              "summary": f"sum \udcff {ESC}"}
    rules = {"rules": [{"text": f"knee \ud83e bent {ESC} backwards", "tags": ["legs"]}]}
    with StubOpenAIServer(default="fixed", fixed_answer=answer) as srv:
        crit = make_judge(srv).critique(make_ctx(images))
    with StubOpenAIServer(default="fixed", fixed_answer=rules) as srv:
        props = make_judge(srv).propose_rules(make_ctx(images), [])
    out = [s.rationale for s in crit.scores] + [crit.summary] + [r.text for r in props.rules]
    for text in out:
        assert not _unstorable(text), (_unstorable(text), text)
        text.encode("utf-8")  # what atomic_write_text and Chroma do with it
    assert [s.rationale for s in crit.scores][:N - 2] == [" ".join(t.split()) for t in KEPT[:N - 2]]
    assert "lone \ufffd surrogate" in out and "pwned" in out[N - 1] and "knee \ufffd bent" in out[-1]


def test_text_embeddings_take_a_lone_surrogate():
    """``memory search "$(printf 'caf\\xe9')"`` (a Latin-1 word in a UTF-8 locale reaches Python as ``\\udce9``)
    died with the tokenizer's "TypeError: TextEncodeInput must be Union[...]"."""
    from hmrcritic.memory.embeddings import embed_text

    vecs = embed_text(["caf\udce9 knee", "caf\ufffd knee"])
    assert vecs.shape == (2, 384) and np.allclose(vecs[0], vecs[1])


def _export_with(tmp_path: Path, **rule) -> tuple[object, Path]:
    """A fresh memory and an export of it holding one more rule (the first rule with ``rule``'s fields)."""
    from hmrcritic.memory.store import MemoryStore

    store = MemoryStore(tmp_path / "mem")
    store.export_json(tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    extra = {k: v for k, v in data["rules"][0].items() if k != "embedding"}
    extra.update(rule_id="user-odd", origin="user", **rule)
    data["rules"] = [extra]
    (tmp_path / "odd.json").write_text(json.dumps(data), encoding="utf-8")
    return store, tmp_path / "odd.json"


def test_a_memory_import_with_a_lone_surrogate_is_refused_naming_the_record(tmp_path):
    """A rule text with ``"\\ud800"`` failed the import with a TypeError from the tokenizer (or, with the file's
    own vectors, Chroma's "surrogates not allowed" after the explored groups were merged): now an InputError
    naming the record, before anything is written."""
    store, path = _export_with(tmp_path, text="knee \ud800 bent backwards")
    before = store.version()
    with pytest.raises(InputError, match=r"rules\[0\].*lone surrogate"):
        store.import_json(path)
    assert store.version() == before and "user-odd" not in {r.rule_id for r in store.rules.all()}


def test_memory_rules_and_search_show_a_rule_text_as_words(tmp_path, capsys):
    """An imported (or VLM-mined) rule text "[/b]" ended ``memory rules`` with rich's MarkupError, "[red]" was
    taken as a colour, and its escape sequences reached the terminal from ``memory rules`` and ``memory search``."""
    text = f"Feet [/b] below the floor [red]by more[/red] than 5 cm {ESC}"
    _, path = _export_with(tmp_path, text=text)
    mem = ["--memory-dir", str(tmp_path / "mem")]
    assert main(["memory", "import", str(path), *mem]) == 0
    capsys.readouterr()
    assert main(["memory", "rules", *mem]) == 0
    listed = capsys.readouterr().out
    assert main(["memory", "search", "feet below the floor", "-k", "1", *mem]) == 0
    found = capsys.readouterr().out
    for out in (listed, found):
        assert "\x1b" not in out and "\x07" not in out
        assert "[/b]" in out and "[red]" in out
    assert "user-odd" in found


def test_the_critique_table_shows_escape_sequences_as_question_marks(capsys):
    """A rationale from a run critiqued before the VLM's words were cleaned (``finished earlier``), or a
    ``--group-id``, carried escape sequences to the terminal through the table."""
    from hmrcritic.commands.agent import _print_table

    score = {"overall": 5.0, "motion_structure": 5.0, "physical_feasibility": 5.0, "image_alignment": 5.0}
    result = SimpleNamespace(judge="vlm", judge_model=None, group_id=f"g{ESC}", memory_version="m", ranking=[0],
                             scores=[SimpleNamespace(index=0, rationale=f"bent {ESC} knee", **score)],
                             reflections=[])
    _print_table(result)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "bent" in out and "pwned" in out


@pytest.mark.usefixtures("small_prior")
def test_critique_of_an_image_whose_name_is_not_utf8(tmp_path, capsys):
    """An image named in Latin-1 (``caf\\xe9.png``, from an old zip or camera) reaches Python as ``caf\\udce9``;
    its stem is the group id, and ``critique`` died with "surrogates not allowed" once that was hashed. The same
    for a ``--group-id`` typed in another encoding."""
    from PIL import Image

    from hmrcritic.commands import scene_from_spec

    scene = scene_from_spec("test:0")
    image = tmp_path / os.fsdecode(b"caf\xe9.png")
    Image.new("RGB", tuple(int(x) for x in scene.image_size), (120, 120, 120)).save(image, format="PNG")
    (tmp_path / "kp.json").write_text(json.dumps(np.asarray(scene.keypoints).tolist()), encoding="utf-8")
    common = ["-n", "2", "--no-render", "--max-reflections", "0", "--memory-dir", str(tmp_path / "mem")]
    assert main(["critique", "--image", str(image), "--keypoints", str(tmp_path / "kp.json"), *common,
                 "--out", str(tmp_path / "o1")]) == 0
    assert json.loads((tmp_path / "o1" / "scores.json").read_text(encoding="utf-8"))["group_id"].startswith(
        "caf\ufffd")
    (tmp_path / "o1" / "report.html").read_text(encoding="utf-8")
    assert main(["critique", "--scene", "test:0", *common, "--group-id", os.fsdecode(b"g\xe9"),
                 "--out", str(tmp_path / "o2")]) == 0
    assert json.loads((tmp_path / "o2" / "scores.json").read_text(encoding="utf-8"))["group_id"] == "g\ufffd"


def run_in_ascii_locale(code: str, **env: str) -> subprocess.CompletedProcess:
    """``python -c code`` where Python reads file names and writes streams as ASCII (``LC_ALL=C PYTHONUTF8=0``: an old
    cron or service environment), ``env`` added; asserts it exited 0."""
    full = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", **env}
    full.pop("PYTHONIOENCODING", None)
    done = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300,
                          encoding="utf-8", errors="replace")
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_a_memory_in_a_utf8_named_folder_opens_when_python_reads_names_as_ascii(tmp_path):
    """``LC_ALL=C PYTHONUTF8=0`` (an old cron or service environment): Python reads the UTF-8 name
    ``équipe`` as lone surrogates, which Chroma's Rust side cannot take; every memory under such a folder failed
    to open ("cannot open the Chroma memory ... surrogates not allowed")."""
    folder = tmp_path / "équipe 中文"
    code = ("import os, sys; from hmrcritic.memory.store import MemoryStore; "
            "s = MemoryStore(os.environ['MEM']); print(s.stats()['rules'], sys.getfilesystemencoding())")
    done = run_in_ascii_locale(code, MEM=str(folder))
    rules, fs_encoding = done.stdout.split()
    assert int(rules) > 0 and fs_encoding == "ascii"
    assert (folder / "chroma.sqlite3").exists() or any(folder.iterdir())


def test_trace_shows_a_group_ids_escape_sequences_as_question_marks(monkeypatch, capsys):
    """``critique --group-id "$(printf 'g\\e]0;pwned\\a')"`` is accepted (the run folder's name is cleaned), and
    ``trace --last`` printed the group id as it was: the terminal's title was rewritten by a trace."""
    from hmrcritic.agent import trace

    records = [{"event": "start", "run_id": "r1", "group_id": f"g{ESC}x", "resumed": False,
                "config": {"judge": "vlm", "learn": False, "max_reflections": 0}}]
    monkeypatch.setattr(trace, "read_trace", lambda run_id=None, last=False: records)
    assert main(["trace", "--last"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "pwned" in out

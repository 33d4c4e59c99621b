"""Docs review (s16): the user-facing docs against the code and the stored results.

The project's rule: a figure in a README or a note is one measured with a command in the repo, and a command
line the docs show must run. These tests read README.md, DEVELOPERS.md and docs/*.md and check them against the
typer app (no subprocess per flag), a real tiny export, and the result JSON the figures were copied from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "DEVELOPERS.md", "docs/CONTRACTS.md", "docs/DESIGN.md", "docs/REPRODUCE.md"]
README = ROOT / "README.md"
REPRODUCE = ROOT / "docs" / "REPRODUCE.md"


def _read(rel: str) -> str:
    return (ROOT / rel).read_text(encoding="utf-8")


def _code_spans(text: str) -> list[str]:
    """Fenced blocks and inline code spans (a ``\\``-continued line joined), where the docs put command lines."""
    text = text.replace("\\\n", " ")
    spans = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    return spans + re.findall(r"`([^`\n]+)`", rest)


def _options(cmd) -> set[str]:
    out = {"--help"}
    for p in cmd.params:
        out.update(o for o in list(p.opts) + list(p.secondary_opts) if o.startswith("-"))
    return out


def command_problems(text: str) -> list[str]:
    """Every ``hmrcritic CMD [SUB] [--flag ...]`` in ``text``'s code whose command, subcommand or option the CLI
    does not have (alternatives ``a|b`` are each checked; ``--set KEY=`` keys against the reproduce preset)."""
    from hmrcritic.alignment.reproduce import Preset
    from hmrcritic.cli import app

    root = typer.main.get_command(app)
    root_opts = _options(root)
    preset_keys = set(Preset.__dataclass_fields__)
    problems = []
    for span in _code_spans(text):
        for line in span.splitlines():
            for m in re.finditer(r"(?<![\w/.-])hmrcritic ([a-z][\w-]*)(.*)", line):
                name, rest = m.group(1), m.group(2)
                rest = re.split(r"\s#\s", rest)[0]  # a shell comment after the command
                cmd = root.commands.get(name)
                if cmd is None:
                    problems.append(f"unknown command {name!r} in {m.group(0)!r}")
                    continue
                subs = getattr(cmd, "commands", None)
                opts = set(root_opts) | _options(cmd)
                if subs:
                    first = re.match(r"\s+([a-z][\w-]*(?:\s*\\?\|\s*[a-z][\w-]*)*)", rest)
                    named = re.findall(r"[a-z][\w-]*", first.group(1)) if first else []
                    # "body info \| convert IN OUT \| export-obj OUT": the word after each "|" is a subcommand too
                    named += re.findall(r"\s\\?\|\s+([a-z][\w-]*)", rest)
                    bad = [s for s in named if s not in subs and s.upper() != s]
                    problems += [f"unknown subcommand {name} {s!r} in {m.group(0)!r}" for s in bad]
                    for s in named or list(subs):
                        if s in subs:
                            opts |= _options(subs[s])
                for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", rest):
                    if flag not in opts:
                        problems.append(f"{name}: no option {flag!r} in {m.group(0)!r}")
                for key in re.findall(r"--set\s+(\w+)=", rest):
                    if key not in preset_keys:
                        problems.append(f"reproduce: no preset field {key!r} in {m.group(0)!r}")
    return problems


def test_every_command_line_in_the_docs_exists_in_the_cli():
    problems = [f"{rel}: {p}" for rel in DOCS for p in command_problems(_read(rel))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("wrong", [
    "`hmrcritic explore --split train --rounds 3 --batchsize 8`",  # a misspelt flag
    "`hmrcritic memory stats|rulez`",  # a subcommand that does not exist
    "```\nhmrcritic evaluate-critics --split test\n```",  # a command that does not exist
    "`hmrcritic reproduce --out runs/x --set stepz=10`",  # a preset field that does not exist
    "`hmrcritic runs prune --older-than 7 -x`",  # a short option that does not exist
])
def test_the_command_check_catches_a_wrong_doc_line(wrong):
    """The check above is only worth something if it fails on a doc with a wrong command line."""
    assert command_problems(_read("README.md") + "\n" + wrong)
    assert not command_problems(_read("README.md"))


def contract_export_fields(text: str) -> tuple[set, set, set, set]:
    """The dataset.json, manifest-record, cond.npz and hyps.npz field names CONTRACTS.md lists."""
    header = re.search(r"dataset\.json \(DatasetHeader: (.*?)\), manifest\.jsonl", text, flags=re.S).group(1)
    # "source, split, ..., judge_model\n# = "model @ endpoint" of judge vlm (None for builtin), scorer = ...,
    # counts; resuming into it ..." -> the names before each "=" / "," up to the first ";"
    header = re.sub(r"\([^)]*\)", "", header.split(";")[0].replace("#", " "))
    header_fields = {re.match(r"\s*([a-z_]+)", part).group(1) for part in header.split(",")}
    # (up to the next definition or the reader's notes that follow it since session 30)
    record = re.search(r"class GroupRecord\(BaseModel\): (.*?)\n(?:def |# ----)", text, flags=re.S).group(1)
    record_fields = set(re.findall(r"[a-z_]+", record.replace("condition/hypotheses", "condition, hypotheses")
                                   .replace("ArrayRef(path, sha256)", "").replace("list[HypothesisScore]", "")))

    def npz_keys(kind: str) -> set[str]:
        body = re.search(rf"groups/<id>\.{kind}\.npz \{{(.*?)\}}", text, flags=re.S).group(1)
        body = re.sub(r"\([^)]*\)", "", body.replace("#", " ").replace("px+conf", ""))
        return {w.strip() for w in body.split(",")} - {""}

    return header_fields, record_fields, npz_keys("cond"), npz_keys("hyps")


def test_contracts_export_fields_match_a_real_export(tmp_path):
    """CONTRACTS.md names the fields of dataset.json (DatasetHeader), manifest.jsonl (GroupRecord) and the arrays of
    groups/<id>.cond.npz / .hyps.npz: a real tiny export must write exactly those (no more, no fewer)."""
    import numpy as np
    from test_export import cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export

    header_fields, record_fields, cond, hyps = contract_export_fields(_read("docs/CONTRACTS.md"))
    model = tiny_model(tmp_path / "tiny.pt")
    export(cfg_for(tmp_path / "ds", model), inputs=make_inputs(2))
    written_header = set(json.loads((tmp_path / "ds" / "dataset.json").read_text())) - {"format_version", "kind"}
    line = json.loads((tmp_path / "ds" / "manifest.jsonl").read_text().splitlines()[0])
    written_record = set(line) - {"format_version"}
    assert header_fields == written_header
    assert record_fields == written_record
    assert cond == set(np.load(tmp_path / "ds" / line["condition"]["path"]).files)
    assert hyps == set(np.load(tmp_path / "ds" / line["hypotheses"]["path"]).files)
    assert set(D.DatasetHeader.model_fields) - {"format_version", "kind"} == header_fields
    # the comparison fails on a contract naming a field the export does not write
    broken = _read("docs/CONTRACTS.md").replace("model_hash, seed, group_seed, checksum", "model_hash, seed, checksum, "
                                                "group_seeds")
    assert contract_export_fields(broken)[1] != written_record


# ---- figures quoted in the docs against the stored results they were copied from ----------------------------

def _json(rel: str) -> dict:
    return json.loads(_read(rel))


def _rows(d: dict, key: str) -> dict:
    return {r[key]: r for r in d["rows"]}


def _pct(v: float, base: float) -> str:
    return f"{(v / base - 1) * 100:+.1f}".replace("-", "−")


def test_reproduce_where_we_land_quotes_the_run_at_the_top():
    """'Where we land against the bar (the run at the top, the final code)' quoted session 14's run (−6.3 %,
    reprojection −7.2 %, implausible −31 %, DPO 0.006, SFT 0.024 vs 0.025) after the table above it had been
    replaced by session 15's: every figure of the paragraph must be the stored results.json's."""
    rows = _rows(_json("docs/results/reproduce_full/results.json"), "model")
    base, gpa, sft, dpo = rows["base"], rows["gpa"], rows["sft"], rows["dpo"]
    text = REPRODUCE.read_text(encoding="utf-8")
    para = text[text.index("Where we land against the bar (the run at the top"):]
    para = para[:para.index("\n\n")]
    pa = _pct(gpa["pa_mpjpe_mean_mm"], base["pa_mpjpe_mean_mm"])
    assert f"PA-MPJPE {pa} %, MPJPE {_pct(gpa['mpjpe_mean_mm'], base['mpjpe_mean_mm'])} %" in para
    assert f"PVE\n  {_pct(gpa['pve_mean_mm'], base['pve_mean_mm'])} %" in para
    assert f"reprojection {_pct(gpa['reproj_px'], base['reproj_px'])} %" in para
    imp = (gpa["implausible_rate"] / base["implausible_rate"] - 1) * 100
    assert f"implausible {round(imp):+d} %".replace("-", "−") in para
    assert f"We are at {pa} % on the mean" in para
    assert f"**{_pct(gpa['pa_mpjpe_best_mm'], base['pa_mpjpe_best_mm'])} % on best-of-100**" in para
    assert f"DPO's {dpo['implausible_rate']:.3f}" in para
    assert f"({sft['implausible_rate']:.3f} vs {gpa['implausible_rate']:.3f};" in para
    drift = [(rows[m]["pa_mpjpe_mean_mm"] / base["pa_mpjpe_mean_mm"] - 1) * 100
             for m in ("gpa_linear", "gpa_no_base_loss")]
    assert f"PA-MPJPE +{round(min(drift))}–{round(max(drift))} %" in para


def test_readme_mpjpe_trade_off_quotes_the_evaluate_critic_table():
    """'the explored memory ranks MPJPE worse than the starter memory (0.445 vs 0.473)': the evaluate-critic JSON
    the table above it comes from says 0.406 (full) vs 0.473 (no_reflection) in seed 0."""
    text = README.read_text(encoding="utf-8")
    seed0 = _rows(_json("docs/results/evaluate_critic.json"), "variant")
    full, starter = seed0["full"]["spearman_mpjpe"], seed0["no_reflection"]["spearman_mpjpe"]
    m = re.search(r"ranks \*MPJPE\* worse than the starter memory \(ρ MPJPE ([\d.]+) vs ([\d.]+)", text)
    assert m and (m.group(1), m.group(2)) == (f"{full:.3f}", f"{starter:.3f}")
    for seed in (1, 2):
        rows = _rows(_json(f"docs/results/evaluate_critic_seed{seed}.json"), "variant")
        pair = f"{rows['full']['spearman_mpjpe']:.3f} vs {rows['no_reflection']['spearman_mpjpe']:.3f}"
        assert pair in text.replace("\n  ", " ")


def test_readme_prototype_density_top1_is_the_stored_difference():
    """The top-1 'full − no_prototypes' of benchmarks/prototype_density.py was quoted as +0.8 / +1.9 / +2.6 mm —
    the difference of the rounded figures; the stored JSON's differences are 0.73 / 1.84 / 2.52 mm."""
    d = _json("benchmarks/results/prototype_density.json")
    diffs = " / ".join(f"{r['full_top1_mm'] - r['no_prototypes_top1_mm']:+.1f}" for r in d["rows"])
    text = README.read_text(encoding="utf-8").replace("\n  ", " ")
    assert f"top-1 {diffs} mm (the larger gains pick *worse*)" in text


def test_readme_critic_signals_range_is_the_stored_one():
    """'ranks a test group at ρ 0.07–0.12 on its own': critic_signals.json's probe reads 0.065 at k = 64."""
    probe = [r["spearman_within_group"] for r in _json("benchmarks/results/critic_signals.json")["prototype_probe"]]
    text = README.read_text(encoding="utf-8")
    assert f"ranks a test group at ρ {min(probe):.2f}–{max(probe):.2f} on its own" in text


def test_readme_tables_equal_their_stored_json():
    """The evaluate-critic, learning-curve, base-model and reproduce tables of README (already right: a guard)."""
    text = README.read_text(encoding="utf-8")
    seed0 = _json("docs/results/evaluate_critic.json")
    for r in seed0["rows"]:
        cells = (f"{r['spearman']:.3f}** ± {r['spearman_sem']:.3f}" if r["variant"] in ("full", "no_calibration")
                 else f"{r['spearman']:.3f} ± {r['spearman_sem']:.3f}")
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {r['variant']}") or
                    ln.startswith(f"| {r['variant']} ("))
        assert cells in line, (r["variant"], line)
        assert f"{r['top1_pa_mpjpe_mm']:.1f}" in line and f"{r['pearson_pointwise']:.3f}" in line
    curve = _json("docs/results/learning_curve/learning_curve.json")["rows"]
    sp = next(ln for ln in text.splitlines() if ln.startswith("| Spearman (PA-MPJPE)"))
    assert [c.strip() for c in sp.split("|")[2:-1]] == [f"{r['spearman']:.3f}" for r in curve]
    ev = json.loads((ROOT / "hmrcritic" / "assets" / "base_model.json").read_text())["eval"]
    line = next(ln for ln in text.splitlines() if ln.startswith("| PA-MPJPE best-of-16 / mean / mean pose"))
    cells = [re.findall(r"[\d.]+", c) for c in line.split("|")[2:4]]
    for split, quoted in zip(("test", "wild"), cells, strict=True):
        e = ev[split]
        stored = [e["pa_mpjpe_best_mm"], e["pa_mpjpe_mean_mm"], e["pa_mpjpe_meanpose_mm"]]
        assert all(abs(float(q) - s) <= 0.05 + 1e-6 for q, s in zip(quoted, stored, strict=True)), (quoted, stored)
    rep = _rows(_json("docs/results/reproduce_full/results.json"), "model")
    for model in ("gpa_linear", "gpa_no_base_loss"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {model} |"))
        r = rep[model]
        assert line.split("|")[2:5] == [f" {r['mpjpe_mean_mm']:.1f} ", f" {r['pa_mpjpe_mean_mm']:.1f} ",
                                        f" {r['pa_mpjpe_top1_mm']:.1f} "]


def test_readme_says_runs_prune_asks_before_it_removes(tmp_path, monkeypatch):
    """README: '`hmrcritic runs prune --older-than 7` removes what is older'. Run as written without a terminal
    (cron, CI) it asks, reads EOF and stops (exit 1) having removed nothing: the docs must name `--yes`."""
    from typer.testing import CliRunner

    from hmrcritic.cli import app

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    res = CliRunner().invoke(app, ["runs", "prune", "--older-than", "7"], input="")
    assert res.exit_code != 0  # what the docs have to warn about
    text = README.read_text(encoding="utf-8")
    row = next(ln for ln in text.splitlines() if "`runs prune [" in ln)
    assert "--yes" in row
    disk = text[text.index("**Disk.**"):]
    disk = disk[:disk.index("\n\n")]
    assert "--yes" in disk


def test_reproduce_score_histogram_shares_name_the_run_they_come_from():
    """REPRODUCE quoted '32 % in [0, 1), 56 % in [1, 2) (`export.score_histogram` in results.json)' — an earlier
    run's; the results.json stored in docs/results/reproduce_full/ has 34 % / 53 %: both must be told apart."""
    hist = _json("docs/results/reproduce_full/results.json")["export"]["score_histogram"]
    total = sum(hist.values())
    a, b = (round(100 * hist[k] / total) for k in ("0-1", "1-2"))
    above4 = sum(v for k, v in hist.items() if float(k.split("-")[0]) >= 4)
    text = REPRODUCE.read_text(encoding="utf-8").replace("\n", " ")
    assert f"the run at the top, whose results.json is in docs/results/reproduce_full/: {a} % / {b} %" in text
    assert above4 == 0 and "none above 4)" in text

"""``hmrcritic critique | trace | evaluate-critic``: the critique agent from the command line.

Thin: argument parsing, progress and printing; the work is in :mod:`hmrcritic.agent`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hmrcritic.commands import (
    BASE_URL_OPTION,
    FOCAL_HELP,
    INTRINSICS_HELP,
    JUDGE_HELP,
    KEYPOINT_LAYOUT_HELP,
    PRINCIPAL_POINT_HELP,
    VLM_MODEL_OPTION,
    is_tty,
    json_text,
    load_input_sample,
    progress_at_tenths,
    say_failed_groups,
    with_judge_endpoint,
)
from hmrcritic.config import env_chroma_url
from hmrcritic.errors import InputError
from hmrcritic.io import as_text


def _hypotheses_from_model(sample, model_path: str | None, n: int, seed: int) -> dict:
    import numpy as np
    import torch

    from hmrcritic.hmr import diffusion

    model = diffusion.load_model(model_path)
    model.eval()
    kp = torch.as_tensor(np.asarray(sample.keypoints), dtype=torch.float32)[None]
    K = torch.as_tensor(np.asarray(sample.K), dtype=torch.float32)[None]
    size = torch.as_tensor(np.asarray(sample.image_size), dtype=torch.float32)[None]
    cond = diffusion.condition_from_keypoints(kp, K, size)
    group = diffusion.sample(model, cond, num_generations=n, generator=torch.Generator().manual_seed(seed),
                             K=K, keypoints=kp)
    return {k: v for k, v in group.numpy(0).items() if k != "x0"}


def _check_sampled_camera(path: Path, sample) -> None:
    """Refuse hypotheses that ``hmrcritic sample`` (or a sampling ``critique``) drew under another camera than this
    critique's.

    ``sample`` (hypotheses.npz) and ``critique`` (sampled_hypotheses.npz) store the K and image size they solved
    each hypothesis' ``transl`` with; the critique projects the
    bodies with its own. A ``--focal``/``--principal-point``/``--intrinsics`` given to one command and not the other
    put every body off its keypoints: the reprojection evidence and the image-alignment scores then judged the
    camera, not the bodies. Files of other tools (no K) and the API's arrays are not checked. The file was already
    read by ``load_hypotheses`` (its size bounded), so reading two small members again is cheap."""
    import numpy as np

    from hmrcritic.agent.api import MAX_HYPOTHESES_FILE_BYTES
    from hmrcritic.io import read_npz

    try:
        z = read_npz(path, "K and image_size", MAX_HYPOTHESES_FILE_BYTES, "", keys=("K", "image_size"))
        K, size = np.asarray(z["K"], dtype=np.float64), np.asarray(z["image_size"], dtype=np.float64).ravel()
    except (InputError, KeyError, TypeError, ValueError):  # no camera stored (another tool's file), or no plain
        return  # numbers: load_hypotheses ignored these members, so does this check
    if K.shape != (3, 3) or size.shape != (2,) or not (np.isfinite(K).all() and np.isfinite(size).all()):
        return
    ours = np.asarray(sample.K, dtype=np.float64)
    our_size = np.asarray(sample.image_size, dtype=np.float64).ravel()
    if np.allclose(K, ours, rtol=1e-4, atol=1e-3) and np.array_equal(size, our_size):
        return

    def cam(k, wh):
        return (f"fx {k[0, 0]:g}, fy {k[1, 1]:g}, principal point ({k[0, 2]:g}, {k[1, 2]:g}) for a "
                f"{wh[0]:g}x{wh[1]:g} image")

    raise InputError(f"{path} was sampled with {cam(K, size)}; this critique's camera is {cam(ours, our_size)}: "
                     "give critique the same image and --focal / --principal-point / --intrinsics as the run that "
                     "sampled them, or the bodies are judged off their keypoints")


def _agent_config(given: dict):
    """``critique``'s AgentConfig from its flags (``None``: not given, the ``HMRCRITIC_*`` variable or default),
    built before any work: a bad value is pydantic's ValidationError, which ``cli.main`` words naming the flag typed
    or the variable set ("max_reflections (--max-reflections): …"), and an unknown judge is refused here, in
    make_judge's words."""
    from hmrcritic.agent.state import AgentConfig

    cfg = AgentConfig(**{k: v for k, v in given.items() if v is not None})
    if cfg.judge.strip().lower() not in ("builtin", "vlm"):
        from hmrcritic.agent.judges import make_judge

        make_judge(cfg.judge)  # raises its one-line error
    if cfg.judge.strip().lower() == "vlm":
        _check_vlm_endpoint()
    return cfg


def _check_vlm_endpoint() -> None:
    """Refuse ``--judge vlm`` with neither an endpoint nor a key before any work, naming ``--base-url``.

    ``VLMJudge`` refuses it too, but only once the critique starts — after the image was read and the hypotheses
    sampled (on a fresh home, after the training split was generated) — and in words that name only the variables:
    a user of ``critique`` was not told of the ``--base-url`` flag beside it. Runs inside ``with_judge_endpoint``,
    so a ``--base-url`` given is already ``HMRCRITIC_BASE_URL`` here. An unusable key is left to ``VLMJudge``,
    which says what is wrong with it."""
    from hmrcritic.config import JudgeSettings, api_key

    try:
        if api_key() or JudgeSettings().base_url is not None:
            return
    except InputError:
        return
    raise InputError("the VLM judge has no endpoint and no key: give --base-url URL for a local OpenAI-compatible "
                     "server (vLLM, Ollama; e.g. http://127.0.0.1:8000/v1) or set HMRCRITIC_BASE_URL, or set "
                     "HMRCRITIC_API_KEY (or OPENAI_API_KEY) for OpenAI")


def note_new_memory(memory: Path | None, chroma_url: str | None = None) -> None:
    """Say on stderr when an explicit ``--memory-dir`` holds no memory yet.

    Such a folder is seeded with the starter rules and used as if it were the memory asked for, so a mistyped path
    critiqued (or exported a dataset) with the unexplored starter memory without a word."""

    from hmrcritic.memory.store import holds_memory

    if memory is None or chroma_url or env_chroma_url():
        return
    if not holds_memory(memory.expanduser()):
        typer.echo(f"note: no memory at {memory} yet; a new one with only the starter rules is made there (an "
                   "explored memory is the folder `hmrcritic explore --memory-dir DIR` wrote)", err=True)


def note_unexplored_default_memory(memory: Path | None, chroma_url: str | None = None) -> None:
    """Say on stderr when the default memory (``<home>/memory``, no ``--memory-dir``) was never explored.

    It is the starter memory until ``hmrcritic explore`` runs: after ``make demo`` (which explores a memory of its
    own under its --out) the README's next steps critiqued and exported with it, saying nothing. Called once the
    inputs are read (a bad input's error stays the one line on stderr) — by ``export`` after its summary."""
    from hmrcritic import config
    from hmrcritic.memory.store import EXPLORE_FILES

    if memory is not None or chroma_url or env_chroma_url():
        return
    default = config.memory_dir()
    # explored_on.json / explore_progress.json: written by exploration (and by an import of an explored memory)
    if not any((default / name).exists() for name in EXPLORE_FILES[:2]):
        typer.echo(f"note: the memory at {default} was never explored (no explored rules, no score calibration): "
                   "`hmrcritic explore` explores it, or give --memory-dir an explored one (the demo's is "
                   "out/demo/memory)", err=True)


def register(app: typer.Typer) -> None:
    @app.command("critique")
    @with_judge_endpoint
    def critique_cmd(
        image: Path = typer.Option(None, "--image", help="Input image (with --keypoints)."),
        keypoints: Path = typer.Option(None, "--keypoints", help="Keypoint JSON in pixels: COCO-17 (list, COCO "
                                                                 "results/annotations), OpenPose BODY_25 or COCO-18, "
                                                                 "MMPose, AlphaPose (its COCO, Halpe-26 or OpenPose "
                                                                 "output), Halpe-26 or COCO-WholeBody-133."),
        scene: str = typer.Option(None, "--scene", help="A synthetic scene instead of an image: SPLIT:INDEX."),
        hypotheses: Path = typer.Option(None, "--hypotheses", help="Hypotheses .npz: global_orient, body_pose, "
                                                                   "betas, transl with a leading N (as `sample` "
                                                                   "writes), or poses (N,72) / (N,24,3), per-joint "
                                                                   "(N,23,3) rotations, one betas/transl row shared "
                                                                   "by all N."),
        model: str = typer.Option(None, "--model", help="Diffusion checkpoint to sample hypotheses from "
                                                        "(default: the shipped base model)."),
        n: int = typer.Option(16, "-n", "--num-generations",
                              help="Hypotheses to sample (with --model, or the shipped base model) when no "
                                   "--hypotheses are given."),
        seed: int = typer.Option(
            0, "--seed", min=0, max=2**32 - 1,
            help="Sampling seed (when sampling: without --hypotheses): the same seed gives the same group here. "
                 "Export seeds each input from (seed, input id) and evaluate-critic samples in batches, so their "
                 "groups differ."),
        judge: str = typer.Option(None, "--judge", help=JUDGE_HELP[:-1] + " (default: HMRCRITIC_JUDGE, else "
                                                                          "builtin)."),
        base_url: str = BASE_URL_OPTION,
        vlm_model: str = VLM_MODEL_OPTION,
        out: Path = typer.Option(Path("critique_out"), "--out", help="Folder for scores.json and report.html "
                                                                      "(and sampled_hypotheses.npz when it samples)."),
        learn: bool = typer.Option(None, "--learn/--no-learn", help="Write prototypes/rule statistics to memory "
                                                                    "(default: HMRCRITIC_LEARN or no)."),
        render: bool = typer.Option(None, "--render/--no-render", help="Render overlays and side views; "
                                                                       "--no-render is faster, without images "
                                                                       "(default: HMRCRITIC_RENDER or yes)."),
        memory: Path = typer.Option(None, "--memory-dir", "--memory",
                                    help="Memory folder (default: HMRCRITIC_MEMORY or <home>/memory)."),
        max_reflections: int = typer.Option(None, "--max-reflections", help="Revise rounds at most (default: "
                                            "HMRCRITIC_MAX_REFLECTIONS, else 2)."),
        group_id: str = typer.Option(None, "--group-id", help="Thread id (default: the sample id and a hash of "
                                                               "the inputs, so other inputs never collide)."),
        fresh: bool = typer.Option(False, "--fresh", help="Recompute even if this group was critiqued."),
        focal: float = typer.Option(None, "--focal", help=FOCAL_HELP),
        principal_point: str = typer.Option(None, "--principal-point", metavar="CX,CY", help=PRINCIPAL_POINT_HELP),
        intrinsics: Path = typer.Option(None, "--intrinsics", help=INTRINSICS_HELP),
        person: int = typer.Option(
            None, "--person", min=0,
            help="Which person of a keypoint file of several (an index from 0; default: the most confident)."),
        keypoint_layout: str = typer.Option(None, "--keypoint-layout", help=KEYPOINT_LAYOUT_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the scored group as JSON."),
    ) -> None:
        """Score a group of mesh hypotheses for one input and write a ranked table, scores.json and a
        self-contained HTML report.

        Examples:\n
          hmrcritic critique --scene test:3 --no-render --out /tmp/c3\n
          hmrcritic critique --image img.jpg --keypoints kp.json --hypotheses h.npz --judge vlm --out out/
        """
        from hmrcritic.agent.api import content_group_id, critique_group, load_hypotheses, write_scores
        from hmrcritic.agent.report import write_report

        if hypotheses is not None and model is not None:
            raise InputError("give --hypotheses (score these) or --model (sample new ones), not both")
        if hypotheses is None:  # in the option's words, before a split is loaded (generated on first use)
            from hmrcritic.hmr.diffusion import check_sampling_args

            check_sampling_args(n, steps=1)  # critique has no --steps option: only the group size is checked
        from hmrcritic.io import check_out_folder

        check_out_folder(out, "scores.json and report.html")  # before anything runs (sample, train-base, demo too)
        # a flag given beats the setting's HMRCRITIC_* variable; one not given leaves it to AgentConfig (fixed flag
        # defaults here overrode HMRCRITIC_JUDGE / _LEARN / _RENDER, which the config documents as the fallback)
        # --max-reflections through the constructor, with the other flags: checked against the field's bounds there.
        # Checked before the input is read: a bad --judge or --max-reflections was refused only after the scene's
        # split had been generated (minutes on a fresh home) and the hypotheses sampled
        given = {"judge": judge, "learn": learn, "render": render, "max_reflections": max_reflections}
        cfg = _agent_config(given)
        if memory is not None:
            cfg.memory_dir = str(memory)
        note_new_memory(memory)
        if cfg.judge == "vlm" and not cfg.render:
            # the VLM's images are the render node's grids: without them it scores from the evidence table alone,
            # which a user who turned rendering off for speed may not expect of a *vision* judge
            typer.echo("note: rendering is off (--no-render or HMRCRITIC_RENDER), so the VLM judge sees no images: "
                       "it scores from the evidence table alone", err=True)
        with _stdout_to_stderr(as_json):
            sample = load_input_sample(scene, image, keypoints, focal=focal, principal_point=principal_point,
                                       intrinsics=intrinsics, person=person, keypoint_layout=keypoint_layout)
        group_id = as_text(group_id) if group_id is not None else None
        if hypotheses is not None:
            hyps = load_hypotheses(hypotheses)
            _check_sampled_camera(hypotheses, sample)
        else:
            hyps = _hypotheses_from_model(sample, model, n, seed)
        group_id = group_id or content_group_id(sample, hyps)
        if cfg.use_memory:  # HMRCRITIC_USE_MEMORY=0: no memory is read, explored or not
            note_unexplored_default_memory(memory)

        def show(node, update, seconds):
            if not as_json:
                typer.echo(f"  {node:<13} {seconds * 1000:7.1f} ms", err=True)

        with _stdout_to_stderr(as_json):
            result = critique_group(sample, hyps, judge=judge, config=cfg, group_id=group_id, fresh=fresh,
                                    on_update=show)
        out.mkdir(parents=True, exist_ok=True)
        sampled = None
        if hypotheses is None:
            # the sampled group beside its scores: scores.json's indices named rows of arrays kept only in the run
            # folder's inputs.npz; --hypotheses reads this file back as the same group (the same group id). Not
            # "hypotheses.npz": that is `sample`'s file (with x0, K, …), which a critique into its folder replaced
            import numpy as np

            from hmrcritic.io import atomic_save_npz

            # with the camera the transl were solved under, as `sample`'s file has it: read back with other camera
            # flags, the group is refused (_check_sampled_camera) instead of judged off its keypoints
            sampled = atomic_save_npz(out / "sampled_hypotheses.npz", **hyps, K=np.asarray(sample.K, np.float32),
                                      image_size=np.asarray(sample.image_size, np.int64))
        write_scores(result, out)
        report = write_report(result, out, image_path=getattr(sample, "image_path", None))
        if as_json:
            # json_text (ASCII, strict), not model_dump_json: that wrote a --group-id's "é" or a summary's "×" as
            # the character, which a non-UTF-8 stdout (LC_ALL=C PYTHONUTF8=0, PYTHONIOENCODING=ascii) printed as
            # \xe9 / \xd7 — no JSON escape, so the document did not parse — and a Latin-1 one as a non-UTF-8 byte
            typer.echo(json_text(result.model_dump(mode="json")))
            return
        _print_table(result)
        typer.echo(f"scores: {out / 'scores.json'}\nreport: {report}\n"
                   + (f"hypotheses: {sampled}\n" if sampled is not None else "") + f"run: {result.run_id}"
                   + (" (finished earlier; use --fresh to recompute)" if result.finished_earlier
                      else " (resumed an earlier unfinished run)" if result.resumed else ""))

    @app.command("trace")
    def trace_cmd(
        run_id: str = typer.Argument(None, help="Run id (or a unique part of it)."),
        last: bool = typer.Option(False, "--last", help="The most recent run."),
        mermaid: bool = typer.Option(False, "--mermaid", help="Mermaid text: the run's node sequence (with a "
                                     "RUN_ID or --last), else the agent graph."),
        as_json: bool = typer.Option(False, "--json", help="Print the trace records as JSON."),
    ) -> None:
        """Print a run's node sequence with timings and what each node changed (or the graph as Mermaid).

        Examples:\n
          hmrcritic trace --last\n
          hmrcritic trace --mermaid
        """
        if run_id and last:
            raise InputError("give a run id or --last, not both")
        if mermaid and not (run_id or last):  # the agent's graph; with a run, that run's path through it
            if as_json:
                raise InputError("--json is for a run's trace records; --mermaid alone prints the graph")
            from hmrcritic.agent.graph import mermaid as draw

            typer.echo(draw())
            return
        from hmrcritic.agent.trace import format_trace, read_trace, trace_mermaid

        if not run_id and not last:  # `--json` alone was told "(or --mermaid)", which --json then refuses
            raise InputError("--json prints a run's trace records: give a RUN_ID or --last" if as_json else
                             "give a RUN_ID or --last (or --mermaid)")
        if mermaid and as_json:
            raise InputError("give --mermaid or --json, not both")
        from hmrcritic.redact import printable, scrub_tree

        records = read_trace(run_id, last=last)
        # a --group-id or a rationale with escape sequences in it is shown, not acted on by the terminal (--json
        # escapes them itself); --json is scrubbed as the text is (a secret this process knows that the writing
        # one did not)
        typer.echo(printable(trace_mermaid(records)) if mermaid else json.dumps(scrub_tree(records), indent=2)
                   if as_json else printable(format_trace(records)))

    @app.command("evaluate-critic")
    @with_judge_endpoint
    def evaluate_cmd(
        split: str = typer.Option("test", "--split", help="Labelled split to evaluate on."),
        num_groups: int = typer.Option(100, "--num-groups", help="Held-out groups to evaluate."),
        num_generations: int = typer.Option(16, "-n", "--num-generations", help="Hypotheses per group."),
        warmup_groups: int = typer.Option(200, "--warmup-groups",
                                          help="Train groups explored into the memory first (0: starter memory)."),
        batch_size: int = typer.Option(8, "--batch-size", help="Exploration batch size (groups per round)."),
        memory_dir: Path = typer.Option(None, "--memory-dir",
                                        help="Score with this explored memory instead of exploring a new one."),
        variants: str = typer.Option(None, "--variants", help="Comma-separated variants (default: all)."),
        source: str = typer.Option("auto", "--source",
                                   help="Hypotheses: model | perturbed | auto (model if it loads)."),
        judge: str = typer.Option("builtin", "--judge", help=JUDGE_HELP),
        base_url: str = BASE_URL_OPTION,
        vlm_model: str = VLM_MODEL_OPTION,
        max_reflections: int = typer.Option(2, "--max-reflections", help="Revise rounds of the full agent."),
        seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1,
                                 help="Sampling seed of the evaluated groups (the warm-up groups use seed + 1)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Critic quality on held-out labelled groups — Spearman/Kendall with −PA-MPJPE (and MPJPE, PVE),
        top-1 error — for the explored memory and its ablations (no_reflection = starter memory, no_rules,
        no_prototypes, no_calibration, no_revise, evidence_only).

        Example:\n
          hmrcritic evaluate-critic --split test --num-groups 30 --warmup-groups 64 --json
        """
        from hmrcritic.agent.evaluate_critic import evaluate_critic, format_table

        # a line at each stage's first item and each tenth of it, as export and evaluate say theirs: a line every
        # 10th item gave a 200-group warm-up 20 lines per stage, and a stage under 10 items none until its end.
        # On stderr with --json too (stdout is the JSON alone): an hour-long --json run in CI showed no sign of life
        stages: dict = {}

        def progress(stage, i, n):
            if stage not in stages:  # (braces in a split's name are not format fields)
                stages[stage] = progress_at_tenths("  " + stage.replace("{", "{{").replace("}", "}}")
                                                   + ": {done}/{total}")
            stages[stage](i, n)

        with _stdout_to_stderr(as_json):  # library chatter (e.g. split generation) must not break the JSON
            payload = evaluate_critic(split=split, num_groups=num_groups, num_generations=num_generations,
                                      warmup_groups=warmup_groups, batch_size=batch_size, memory_dir=memory_dir,
                                      variants=[v.strip() for v in (variants or "").split(",") if v.strip()] or None,
                                      source=source, judge=judge, max_reflections=max_reflections, seed=seed,
                                      progress=progress)
        typer.echo(json_text(payload) if as_json else format_table(payload))
        say_failed_groups(payload, "evaluate-critic")


def _stdout_to_stderr(active: bool):
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr) if active else contextlib.nullcontext()


def _print_table(result) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from hmrcritic.agent.schema import AXES

    # The heading is a plain line, not the table's title: rich cut a title wider than the table (a narrow
    # terminal lost the memory version). The rationale is the only column that gives way to a narrow terminal
    # (rich shrinks wrappable columns first, then all evenly: with every column no_wrap, COLUMNS=60 squeezed the
    # rank and hypothesis ids to nothing); each rationale stays one line, ending in "…". Cells are rich Text, so
    # "[/x]" in group ids and rationales (user and endpoint text) is not markup.
    # escape sequences in a rationale (a finished run critiqued before the VLM's words were cleaned, a judge of
    # one's own) or a --group-id are shown as "?", not acted on by the terminal
    from hmrcritic.redact import printable

    judge = result.judge + (f" ({result.judge_model})" if result.judge_model else "")
    typer.echo(printable(f"group {result.group_id} — judge {judge}, memory {result.memory_version}"))
    table = Table()
    for col in ("rank", "hyp", "overall", "motion", "physical", "image"):  # the three axes, abbreviated
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    table.add_column("rationale", justify="left", overflow="ellipsis", max_width=90)
    by_index = {s.index: s for s in result.scores}
    for rank, i in enumerate(result.ranking):
        s = by_index[i]
        table.add_row(str(rank + 1), f"h{i}", f"{s.overall:.2f}", *[f"{getattr(s, a):.2f}" for a in AXES],
                      # whole, for rich to cut at the column's width with "…": cut at 90 characters here first, a
                      # long rationale filled the 90-wide column exactly and read as complete
                      Text(printable(s.rationale), no_wrap=True, overflow="ellipsis"))
    import sys

    Console(width=None if is_tty(sys.stdout) else 150).print(table)
    from hmrcritic.agent.api import overall_scale_note

    if note := overall_scale_note(result):
        typer.echo(printable(note))
    rounds = max(0, len(result.reflections) - 1)
    if rounds:
        from hmrcritic.agent.trace import revision_rounds_text

        typer.echo(f"self-reflection: {revision_rounds_text(rounds)}")
    from hmrcritic.agent.report import memory_written_note

    if note := memory_written_note(result):  # --learn said nothing of what it wrote
        typer.echo(printable(note))

"""``train-base``, ``sample`` and ``evaluate``: the diffusion HMR model from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from hmrcritic.commands import (
    FOCAL_HELP,
    INTRINSICS_HELP,
    KEYPOINT_LAYOUT_HELP,
    PRINCIPAL_POINT_HELP,
    is_tty,
    load_input_sample,
    progress_at_tenths,
)
from hmrcritic.config import check_device
from hmrcritic.errors import InputError


def _progress_printer(prefix: str, stop_at: int | None = None):
    """Progress lines of a training run; the eta is to where this run ends: ``stop_at`` when it stops before the
    recipe's last step (the eta to the whole recipe read as if a ``--stop-at 500`` run had hours left)."""
    def show(rec: dict) -> None:
        total = rec.get("total", 0)
        end = min(total, stop_at) if stop_at is not None else total
        eta = max(end - rec["step"], 0) / max(rec.get("steps_per_s", 0), 1e-9)
        print(
            f"{prefix} step {rec['step']}/{total}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
            f"{rec['steps_per_s']:.2f} steps/s  eta {eta / 60:.1f} min"
            + (f" (to --stop-at {end})" if end < total else ""),
            flush=True,
        )

    return show


def _eval_progress():
    """The evaluation progress callback, on stderr: the report (or --json) on stdout stays clean, and a long --json
    run still shows it is working."""
    if is_tty(sys.stderr):
        def show(done: int, total: int) -> None:
            print(f"\r  evaluated {done}/{total}", end="\n" if done >= total else "", file=sys.stderr, flush=True)

        return show
    # a log file or CI (not a terminal): plain lines, at each tenth of the way and at the end
    return progress_at_tenths("  evaluated {done}/{total}")


def _note(msg: str) -> None:
    print(f"hmrcritic: {msg}", file=sys.stderr, flush=True)


def _keep_replaced_base_model(out: Path, model: Path) -> None:
    """Copy the package's current ``base_model.pt``/``.json`` into the run folder before ``--ship`` replaces them,
    so the model every figure was measured on can be put back (``cp``) where no git checkout holds it.

    A backup already in the run folder is kept: it is the model this run first replaced. Copied again, a second
    ``--ship`` of the run (or one run again after ship_model failed between the .pt and the .json) put this run's
    own weights over it, and the original was kept nowhere. Nothing is copied either where the assets already
    hold this run's model (nothing would be replaced)."""
    import filecmp
    import os
    import shutil

    from hmrcritic.hmr.diffusion import ASSETS_DIR

    shipped = ASSETS_DIR / "base_model.pt"
    if shipped.is_file() and filecmp.cmp(shipped, model, shallow=False):
        print(f"{shipped} is already this run's model: nothing to keep", flush=True)
        return
    kept_pt = out / "replaced_base_model.pt"
    for name in ("base_model.pt", "base_model.json"):
        kept = out / f"replaced_{name}"
        if kept.exists():
            print(f"the {name} this run first replaced stays kept: {kept}", flush=True)
        elif name == "base_model.json" and kept_pt.is_file() and not (
                shipped.is_file() and filecmp.cmp(shipped, kept_pt, shallow=False)):
            # another run shipped since the .pt was kept: the assets' .json describes that run's model, and kept
            # beside this .pt it made a pair of one model's weights and another's figures
            print(f"note: {ASSETS_DIR / name} no longer goes with the kept {kept_pt}: not kept", flush=True)
        elif (ASSETS_DIR / name).is_file():
            # copied under another name and renamed into place: a copy cut short (a full disk, Ctrl-C) never takes
            # the backup's name, where a re-run would keep it as the original and ship over the real one
            partial = kept.with_name(f"{kept.name}.partial")
            shutil.copy2(ASSETS_DIR / name, partial)
            os.replace(partial, kept)
            print(f"kept the replaced {name}: {kept}", flush=True)


def register(app: typer.Typer) -> None:
    @app.command("train-base")
    def train_base_cmd(
        seed: int = typer.Option(
            0, help="Seed of the whole recipe (init, data order, noise, augmentation).", min=0, max=2**32 - 1),
        steps: int = typer.Option(None, help="Training steps (default: the recipe's)."),
        batch_size: int = typer.Option(None, help="Batch size (default: the recipe's)."),
        out: Path = typer.Option(
            # the default is under the runs folder, not ./runs (as "runs/..." read): say which, as reproduce does
            None, help="Run folder (state.pt, log.jsonl, model.pt). Default: <runs>/train-base-seed<S> (<runs>: "
            "HMRCRITIC_RUNS, else <home>/runs)."
        ),
        resume: bool = typer.Option(
            True, "--resume/--no-resume",
            help="Continue from the run folder's last checkpoint (--no-resume: start over, deleting the folder's "
            "state, log, model.pt and model_stepN.pt exports)."
        ),
        threads: int = typer.Option(1, help="torch CPU threads (1 = bitwise reproducible; fastest on a busy machine)."),
        max_samples: int = typer.Option(None, help="Use only the first N training scenes (quick runs)."),
        stop_at: int = typer.Option(None, help="Stop after this step (resumable; the recipe's schedule is kept)."),
        device: str = typer.Option(None, help="cpu or cuda (default: HMRCRITIC_DEVICE, else cpu)."),
        ship: bool = typer.Option(
            False, help="Evaluate on test and wild and install as hmrcritic/assets/base_model.pt."
        ),
        guidance: float = typer.Option(30.0, help="Keypoint guidance of the extra guided --ship evaluation."),
        eval_limit: int = typer.Option(150, help="Scenes per split for the --ship evaluation (the guided one: "
                                                  "half of them)."),
    ) -> None:
        """Train the base diffusion model from its recipe (reproducible; resumes).

        Example: hmrcritic train-base --seed 0 --ship
        """
        import math
        from dataclasses import replace

        from hmrcritic.config import runs_dir
        from hmrcritic.hmr.train import TrainConfig, check_run_folder, ship_model, train_base

        cfg = TrainConfig(seed=seed, threads=threads, max_samples=max_samples)
        if steps is not None:
            cfg = replace(cfg, steps=steps)
        if batch_size is not None:
            cfg = replace(cfg, batch_size=batch_size)
        # everything that can be refused is refused before training (the --ship evaluation comes ~20 min later)
        if stop_at is not None and stop_at < 1:
            raise InputError(f"train-base: --stop-at must be ≥ 1 step, got {stop_at}")
        device = check_device(device)  # None: HMRCRITIC_DEVICE, else cpu
        if ship and eval_limit < 1:
            raise InputError(f"train-base: --eval-limit must be ≥ 1 scene, got {eval_limit}")
        if ship and not (math.isfinite(guidance) and guidance >= 0):
            raise InputError(f"train-base: --guidance must be a finite number ≥ 0, got {guidance}")
        if ship:  # ship_model found an unwritable assets folder only after the training and the evaluations
            from hmrcritic.hmr.train import check_ship_dest

            check_ship_dest()
        out = out or runs_dir() / f"train-base-seed{seed}"
        from hmrcritic.io import check_out_folder

        # --out is the run folder: a file there (a model.pt, taken for where the checkpoint goes) failed only at the
        # folder's making, as "File exists", after "training base model -> FILE" had been printed as if it had begun
        check_out_folder(out, "the run (state.pt, log.jsonl, model.pt)")
        check_run_folder(Path(out), resume)  # train_base checks too; here before the lines below are printed
        if stop_at is not None and stop_at >= cfg.steps:
            # the run trained all its steps and wrote model.pt, not the model_step<N>.pt the flag promises
            _note(f"--stop-at {stop_at} is not before the run's last step ({cfg.steps}): it trains all {cfg.steps} "
                  "steps and writes model.pt")
            stop_at = None
        if ship:
            from hmrcritic.hmr.diffusion import ASSETS_DIR

            # the install replaced the package's model without a word before the run (a 20-step trial with --ship
            # became the default model of sample, evaluate, critique and export): said now, and the old one is kept
            _note(f"--ship: after training and evaluating, this run's model replaces {ASSETS_DIR / 'base_model.pt'} "
                  f"(and base_model.json), the default model of every command; the one there now is kept in {out} "
                  "as replaced_base_model.pt/.json")
        print(
            f"training base model -> {out} ({cfg.steps} steps, batch {cfg.batch_size}, seed {seed})",
            flush=True,
        )
        path = train_base(cfg, out, resume=resume, progress=_progress_printer("train", stop_at), device=device,
                          stop_at=stop_at, notify=lambda msg: print(f"train: {msg}", flush=True))
        if path.name == "state.pt":  # stopped early: export the EMA weights at that step
            from hmrcritic.hmr.train import checkpoint_from_state

            path = checkpoint_from_state(path, Path(out) / f"model_step{stop_at}.pt", step=stop_at)
        print(f"model: {path}")
        if ship:
            from hmrcritic.hmr.diffusion import load_model
            from hmrcritic.hmr.evaluate import evaluate_model, format_report

            model = load_model(path, device=device)
            evals = {}
            runs = [
                ("test", "test", 0.0, eval_limit),
                ("wild", "wild", 0.0, eval_limit),
                (f"test_guided{guidance:g}", "test", guidance, max(1, eval_limit // 2)),
            ]
            for key, split, g, lim in runs:
                evals[key] = evaluate_model(
                    model, split=split, num_generations=16, limit=lim, guidance=g, progress=_eval_progress()
                )
                if evals[key]["n_samples"] < lim:
                    _note(f"split {split!r} has only {evals[key]['n_samples']} scenes; {key} evaluated them all "
                          f"(--eval-limit {lim})")
                print(format_report(evals[key]), flush=True)
            # base_model.json's "reproduce": every setting that makes the model or its figures. Without
            # --max-samples (other training data), --threads (a resume refuses another count; other kernels) and
            # --guidance (the guided row's key and figures) it named a command that gives another model or table
            cmd = f"hmrcritic train-base --seed {seed}"
            cmd += f" --steps {cfg.steps}" if steps is not None else ""
            cmd += f" --batch-size {cfg.batch_size}" if batch_size is not None else ""
            cmd += f" --max-samples {max_samples}" if max_samples is not None else ""
            cmd += f" --threads {threads}" if threads != 1 else ""
            cmd += (f" --stop-at {stop_at}" if stop_at else "") + f" --ship --eval-limit {eval_limit}"
            cmd += f" --guidance {guidance}" if guidance != 30.0 else ""  # str(float) round-trips; :g may not
            _keep_replaced_base_model(Path(out), path)
            pt, js = ship_model(path, evals, command=cmd)
            print(f"shipped: {pt} ({pt.stat().st_size / 1e6:.1f} MB), {js}")

    @app.command("sample")
    def sample_cmd(
        image: Path = typer.Option(None, help="Input image (PNG/JPEG)."),
        keypoints: Path = typer.Option(None, help="2D keypoints JSON in pixels (COCO-17 list or COCO results/"
                                                  "annotations, OpenPose BODY_25 or COCO-18, MMPose, AlphaPose (its "
                                                  "COCO, Halpe-26 or OpenPose output), Halpe-26, "
                                                  "COCO-WholeBody-133)."),
        scene: str = typer.Option(None, help="A synthetic scene instead: SPLIT:INDEX (e.g. test:3)."),
        num_generations: int = typer.Option(16, "-n", "--num-generations", help="Hypotheses to draw."),
        steps: int = typer.Option(10, help="DDIM steps."),
        eta: float = typer.Option(0.0, help="DDIM eta (0 = no fresh noise per step; any eta is reproducible given "
                                             "--seed)."),
        guidance: float = typer.Option(0.0, help="2D keypoint guidance strength (0 = the model alone)."),
        seed: int = typer.Option(
            0, help="Sampling seed: the same seed and inputs give the same hypotheses (one noise draw per batch, "
                    "so a scene sampled with other scenes gets other ones).", min=0, max=2**32 - 1),
        focal: float = typer.Option(None, help=FOCAL_HELP),
        principal_point: str = typer.Option(None, "--principal-point", metavar="CX,CY", help=PRINCIPAL_POINT_HELP),
        intrinsics: Path = typer.Option(None, "--intrinsics", help=INTRINSICS_HELP),
        person: int = typer.Option(
            None, help="Which person of a keypoint file of several (an index from 0; default: the most confident).",
            min=0),
        keypoint_layout: str = typer.Option(None, "--keypoint-layout", help=KEYPOINT_LAYOUT_HELP),
        out: Path = typer.Option(..., help="Output folder."),
        obj: bool = typer.Option(False, "--obj", help="Also write one .obj mesh per hypothesis."),
        render: bool = typer.Option(True, "--render/--no-render", help="Write overlays, side views and grid.png."),
        model: Path = typer.Option(None, help="Checkpoint (default: the shipped base model)."),
        device: str = typer.Option(None, help="cpu or cuda (default: HMRCRITIC_DEVICE, else cpu)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Draw a group of SMPL hypotheses for one input and write them (npz, renders, optional meshes).

        Examples:
          hmrcritic sample --image me.jpg --keypoints me.json -n 16 --out out/
          hmrcritic sample --scene test:0 -n 16 --out out/ --obj
        """
        from hmrcritic.hmr.diffusion import check_sampling_args, load_model, sample_to_dir

        check_sampling_args(num_generations, steps, eta, guidance)
        device = check_device(device)  # None: HMRCRITIC_DEVICE, else cpu
        from hmrcritic.io import check_out_folder

        # a file as --out failed only at the folder's making, after the scene's split had been generated (minutes
        # on a fresh home) and the model loaded, as "File exists: out"
        check_out_folder(out, "hypotheses.npz and the renders")
        item = load_input_sample(scene, image, keypoints, focal=focal, principal_point=principal_point,
                                 intrinsics=intrinsics, person=person, keypoint_layout=keypoint_layout)
        m = load_model(model, device=device)
        # steps ≤ the model's T, before the output folder is made
        check_sampling_args(num_generations, steps, eta, guidance, num_timesteps=m.num_timesteps)
        from hmrcritic.hmr.body import load_body_model
        from hmrcritic.hmr.evaluate import trained_body_model

        body = load_body_model(device=str(m.alphas_cumprod.device))  # the one sample_to_dir poses (cached)
        # evaluate's report says so; sample posed another body's shapes and keypoints without a word
        trained = trained_body_model(m, body)
        if trained and trained != body.name:
            _note(f"the model was trained on scenes of body model {trained}, not {body.name} (the body model in "
                  "use): its hypotheses are posed on another body")
        summary = sample_to_dir(
            m,
            item,
            out,
            num_generations=num_generations,
            steps=steps,
            eta=eta,
            guidance=guidance,
            seed=seed,
            obj=obj,
            render=render,
            body=body,
        )
        if as_json:
            print(json.dumps(summary))
        else:
            print(
                f"{num_generations} hypotheses -> {out}/hypotheses.npz"
                + (f", grid {summary['files']['grid']}" if render else "")
            )

    @app.command("evaluate")
    def evaluate_cmd(
        model: Path = typer.Option(None, help="Checkpoint (default: the shipped base model)."),
        split: str = typer.Option(None, help="test or wild (held out); train is in-sample. (default: test)"),
        data: Path = typer.Option(None, "--data", help="Your own labelled .npz instead of a split: keypoints (n,17,3) "
                                                      "px, K, image_size, and SMPL labels global_orient, body_pose, "
                                                      "betas, transl in the OpenCV camera frame (README)."),
        num_generations: int = typer.Option(16, "-n", "--num-generations", help="Hypotheses per input."),
        steps: int = typer.Option(10, help="DDIM steps."),
        eta: float = typer.Option(0.0, help="DDIM eta."),
        limit: int = typer.Option(None, help="Evaluate only the first K scenes."),
        # "B·N rows per network call" no longer: the rows go a bounded chunk at a time (hmr.evaluate.CHUNK_ROWS), the
        # sampling with --eta > 0 or --guidance too (ddim_sample_x0's row_chunks)
        batch_size: int = typer.Option(
            32, help="Inputs per batch (one noise draw per batch, so the groups depend on it; memory does not: the "
                     "B·N hypotheses are sampled and evaluated 512 at a time)."),
        seed: int = typer.Option(0, help="Sampling seed (with --batch-size: the groups depend on both).",
                                 min=0, max=2**32 - 1),
        guidance: float = typer.Option(0.0, help="2D keypoint guidance strength (0 = the model alone)."),
        joint_set: str = typer.Option("lsp14", help="lsp14 or smpl24."),
        no_nn: bool = typer.Option(False, "--no-nn", help="Skip the nearest-neighbour baseline."),
        device: str = typer.Option(None, help="cpu or cuda (default: HMRCRITIC_DEVICE, else cpu)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """MPJPE / PA-MPJPE / PVE (mean, best-of-N, mean pose), reprojection, implausible rate, diversity.

        Examples:
          hmrcritic evaluate --split test --num-generations 16 --limit 200 --json
          hmrcritic evaluate --data my_labelled.npz -n 16
        """
        from hmrcritic.hmr.diffusion import load_model
        from hmrcritic.hmr.evaluate import evaluate_model, format_report

        if joint_set not in ("lsp14", "smpl24"):
            raise InputError(f"--joint-set must be lsp14 or smpl24, got {joint_set!r}")
        if data is not None and split is not None:
            raise InputError("give --split or --data (your own labelled .npz), not both")
        split = split or "test"  # with --data: read by evaluate_model before the train split or any sampling
        if data is None and split == "train":
            # --help says "train is in-sample", the report did not: a user's first figures looked far better than test's
            _note("split 'train' is the base model's own training data: these figures are in-sample, not comparable "
                  "with test or wild")
        from hmrcritic.hmr.diffusion import check_sampling_args

        check_sampling_args(num_generations, steps, eta, guidance)
        device = check_device(device)  # None: HMRCRITIC_DEVICE, else cpu
        m = load_model(model, device=device)  # evaluate_model checks --steps against its timesteps first
        res = evaluate_model(
            m,
            split=split,
            num_generations=num_generations,
            steps=steps,
            eta=eta,
            limit=limit,
            batch_size=batch_size,
            seed=seed,
            joint_set=joint_set,
            nn_baseline=not no_nn,
            guidance=guidance,
            progress=_eval_progress(),
            notify=_note,  # a leftover non-default split (a quick test's --n): its figures compare with no others
            data=data,
        )
        if limit is not None and res["n_samples"] < limit:
            _note(f"{'split ' + repr(split) if data is None else str(data)} has only {res['n_samples']} scenes; "
                  f"evaluated all of them (--limit {limit})")
        print(json.dumps(res) if as_json else format_report(res))

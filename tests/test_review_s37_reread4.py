"""Fourth adversarial re-read of session 37's last changes (a655f7d, 85b0361; context 13b2bd6, 2b29361, a41463d,
139a74d). The learning-curve test failed before its fix (a misspelt explore_kwargs key refused only when round 1
began); the others pin what the re-read checked and found to hold."""

from __future__ import annotations

import contextlib
import inspect
import io
import pickle
import random

import pytest

from hmrcritic.errors import InputError


class _Stop(Exception):
    pass


# --- explore now answers an unknown keyword with an InputError (85b0361), but learning_curve forwards its
# ``explore_kwargs`` to explore only when round 1 begins: a typo there is refused after the held-out groups were
# sampled (minutes with the model) and round 0 scored, where every other setting of the curve is refused first


def test_learning_curve_refuses_a_misspelt_explore_kwarg_before_sampling_held_out_groups(tmp_path, monkeypatch):
    from hmrcritic.agent import groups
    from hmrcritic.agent import learning_curve as lc

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(groups, "verify_split", lambda split, images: None)

    def sampled(*a, **k):  # stands for the held-out sampling, the first slow step
        raise _Stop

    monkeypatch.setattr(lc, "_heldout", sampled)
    with pytest.raises(InputError, match="did you mean 'tau'"):
        lc.learning_curve(tmp_path / "memory", rounds=1, batch_size=2, heldout_groups=2, num_generations=4,
                          explore_kwargs={"tua": 0.5})


# --- checked and found to hold


def test_tenths_progress_says_the_same_lines_as_the_copies_it_replaced():
    """progress_at_tenths (export, evaluate, evaluate-critic) prints what its pre-a655f7d body printed, over random
    batch-wise sequences (jumps, repeats, a figure going back, totals of 0)."""
    from hmrcritic.agent.learning_curve import at_a_tenth
    from hmrcritic.commands import progress_at_tenths

    def old(line, out):
        last = [0]

        def show(done, total):
            if at_a_tenth(done, total, last[0]):
                out.append(line.format(done=done, total=total))
            last[0] = max(last[0], done)

        return show

    rng = random.Random(0)
    for _ in range(500):
        total, done, seq = rng.randint(0, 40), 0, []
        for _ in range(rng.randint(1, 20)):
            done = min(total + 1, done + rng.randint(0, 5)) if rng.random() < 0.9 else rng.randint(0, total)
            seq.append(done)
        want: list[str] = []
        f = old("  x: {done}/{total}", want)
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf):
            g = progress_at_tenths("  x: {done}/{total}")
            for d in seq:
                f(d, total)
                g(d, total)
        assert buf.getvalue().splitlines() == want


def test_explore_export_finetune_wrappers_keep_what_callers_rely_on():
    """reproduce filters its keywords by inspect.signature(engine); pickling (spawn workers) finds the wrapper;
    every keyword the CLI commands, demo, evaluate-critic's warm-up and learning-curve pass binds."""
    from hmrcritic.agent.explore import explore
    from hmrcritic.alignment.export import export
    from hmrcritic.alignment.finetune import finetune

    for f in (explore, export, finetune):
        assert pickle.loads(pickle.dumps(f)) is f
    params = inspect.signature(explore).parameters
    for k in ("split", "rounds", "batch_size", "tau", "judge", "error_metric", "ucb_c", "rules_k", "num_generations",
              "limit", "seed", "source", "max_reflections", "calibration_groups", "progress", "groups"):
        assert k in params
    inspect.signature(export).bind(object(), progress=lambda i, n: None)
    inspect.signature(finetune).bind(object(), progress=True, generations_given=None)

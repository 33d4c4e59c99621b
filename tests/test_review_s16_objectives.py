"""Review s16 (objectives): the alignment mathematics and training loop checked against formulas written out
independently here (float64), finite differences, a frozen reference, advantages edge cases and bit-exact resume."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from hmrcritic.alignment.objectives import ObjectiveConfig, compute_loss, frozen_reference
from hmrcritic.alignment.stats import group_advantages, zero_variance_mask

D = 5
T = 50


@dataclass
class Cond:
    keypoints: torch.Tensor  # (B, 3)


class Lin64(nn.Module):
    """eps(x_t, t, c) = tanh(W x_t + u·t/T + V c + b) in float64; records (x_t, t) of every call."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_timesteps = T
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - torch.linspace(1e-4, 0.05, T, dtype=torch.float64), 0))
        self.W = nn.Parameter(torch.randn(D, D, generator=g, dtype=torch.float64) * 0.5)
        self.u = nn.Parameter(torch.randn(D, generator=g, dtype=torch.float64))
        self.V = nn.Parameter(torch.randn(D, 3, generator=g, dtype=torch.float64) * 0.5)
        self.b = nn.Parameter(torch.randn(D, generator=g, dtype=torch.float64) * 0.1)
        self.calls = []

    def q_sample(self, x0, t, eps):
        ab = self.alphas_cumprod[t].unsqueeze(-1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def predict_eps(self, x_t, t, cond):
        self.calls.append((x_t.detach().clone(), t.detach().clone()))
        return torch.tanh(x_t @ self.W.T + t.double()[:, None] / T * self.u + cond.keypoints @ self.V.T + self.b)


def _eps_by_hand(model, x_t, t, x0):
    ab = model.alphas_cumprod[t].unsqueeze(-1)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def _err_by_hand(model, x0, t, eps, c):
    """mean_D (ε − ε_model(sqrt(ᾱ)x0 + sqrt(1−ᾱ)ε))², written out without the model's q_sample/predict_eps."""
    with torch.no_grad():
        ab = model.alphas_cumprod[t].unsqueeze(-1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        pred = torch.tanh(x_t @ model.W.T + t.double()[:, None] / T * model.u + c @ model.V.T + model.b)
        return ((eps - pred) ** 2).mean(1)


def _setup(seed=3):
    g = torch.Generator().manual_seed(seed)
    B, G = 3, 4
    x0 = torch.randn(B, G, D, generator=g, dtype=torch.float64)
    cond = Cond(torch.randn(B, 3, generator=g, dtype=torch.float64))
    scores = torch.tensor([[3.0, 7.0, 1.0, 6.0], [2.0, 2.0, 2.0, 2.0], [9.0, 0.5, 4.0, 4.0]], dtype=torch.float64)
    ref = frozen_reference(Lin64(0))
    pol = Lin64(1)
    return x0, cond, scores, pol, ref


def _logsig(z):
    return -math.log1p(math.exp(-z)) if z > 0 else z - math.log1p(math.exp(z))


@pytest.mark.parametrize("objective", ["gpa", "gpa_linear", "gpa_no_base_loss", "dpo", "sft"])
def test_each_loss_matches_its_formula_in_float64(objective):
    x0, cond, scores, pol, ref = _setup()
    cfg = ObjectiveConfig(objective=objective, beta=2.0, gpa_weight=0.3, base_loss_weight=0.7)
    out = compute_loss(pol, ref, x0, cond, scores, cfg, torch.Generator().manual_seed(9))
    kept = [0, 2]  # group 1 ties
    G = x0.shape[1]
    if objective.startswith("gpa"):
        x_t, t = pol.calls[0]
        xs = x0[kept].reshape(-1, D)
        eps = _eps_by_hand(pol, x_t, t, xs).view(len(kept), G, D)
        tg = t.view(len(kept), G)
        # one ε and one t per group, in the noisier half
        assert torch.allclose(eps, eps[:, :1].expand_as(eps), atol=1e-9)
        assert (tg == tg[:, :1]).all() and (tg >= T // 2).all() and (tg < T).all()
        # reference saw exactly the same noised inputs
        assert torch.equal(ref.calls[-1][0], x_t) and torch.equal(ref.calls[-1][1], t)
        total = 0.0
        for j, b in enumerate(kept):
            s = scores[b].tolist()
            m = sum(s) / G
            sd = math.sqrt(sum((v - m) ** 2 for v in s) / G)
            A = [(v - m) / (sd + 1e-8) for v in s]
            c = cond.keypoints[b].expand(G, 3)
            d = _err_by_hand(pol, x0[b], tg[j], eps[j], c) - _err_by_hand(ref, x0[b], tg[j], eps[j], c)
            sad = sum(a * float(di) for a, di in zip(A, d, strict=True))
            total += (cfg.beta * sad) if objective == "gpa_linear" else -_logsig(-cfg.beta * sad)
        expected = cfg.gpa_weight * total / len(kept)
        if objective != "gpa_no_base_loss":
            xb_t, tb = pol.calls[1]
            xb = x0.reshape(-1, D)
            eb = _eps_by_hand(pol, xb_t, tb, xb)
            expected += cfg.base_loss_weight * float(
                _err_by_hand(pol, xb, tb, eb, cond.keypoints.repeat_interleave(G, 0)).mean())
        else:
            assert len(pol.calls) == 1
    elif objective == "dpo":
        x_t, t = pol.calls[0]
        n = len(kept)
        xw = torch.stack([x0[b, int(torch.argmax(scores[b]))] for b in kept])
        xl = torch.stack([x0[b, int(torch.argmin(scores[b]))] for b in kept])
        xs = torch.cat([xw, xw, xl, xl])
        eps = _eps_by_hand(pol, x_t, t, xs)
        assert torch.equal(t[:n] + t[n:2 * n], torch.full((n,), T - 1))  # antithetic
        assert torch.equal(t[: 2 * n], t[2 * n:])
        assert torch.allclose(eps[: 2 * n], eps[2 * n:], atol=1e-9) and torch.allclose(eps[:n], eps[n:2 * n], atol=1e-9)
        c = cond.keypoints[kept].repeat(4, 1)
        dd = _err_by_hand(pol, xs, t, eps, c) - _err_by_hand(ref, xs, t, eps, c)
        terms = [-_logsig(-cfg.beta / 2 * float(dd[i] - dd[2 * n + i])) for i in range(2 * n)]
        expected = sum(terms) / len(terms)
    else:
        x_t, t = pol.calls[0]
        xb = torch.stack([x0[b, int(torch.argmax(scores[b]))] for b in kept])
        eps = _eps_by_hand(pol, x_t, t, xb)
        expected = float(_err_by_hand(pol, xb, t, eps, cond.keypoints[kept]).mean())
    # rel 1e-7, not 1e-10: gpa_loss rounds the advantages to float32 (`scores.to(torch.float32)`) even for float64
    # inputs, a ~1e-8 relative difference (reported, not changed)
    assert out.loss.item() == pytest.approx(expected, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("objective", ["gpa", "gpa_linear", "dpo", "sft"])
def test_gradient_matches_finite_differences(objective):
    x0, cond, scores, pol, ref = _setup()
    cfg = ObjectiveConfig(objective=objective, beta=2.0)

    def loss():
        return compute_loss(pol, ref, x0, cond, scores, cfg, torch.Generator().manual_seed(9)).loss

    pol.zero_grad()
    loss().backward()
    h = 1e-6
    for p in pol.parameters():
        flat = p.data.view(-1)
        for i in range(0, flat.numel(), 3):
            old = flat[i].item()
            with torch.no_grad():
                flat[i] = old + h
                up = loss().item()
                flat[i] = old - h
                down = loss().item()
                flat[i] = old
            assert p.grad.view(-1)[i].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)
    assert all(q.grad is None for q in ref.parameters())


# ------------------------------------------------------------------------------------------ advantages


def test_advantages_edge_cases_by_hand():
    s = torch.tensor([[1.0, 3.0], [4.0, 4.0], [2.0, 2.0 + 1e-7], [0.0, 5.0], [1.0, 1.0]])
    a = group_advantages(s, "group")
    assert torch.allclose(a[0], torch.tensor([-1.0, 1.0]), atol=1e-7)  # a pair: ±1
    assert torch.equal(a[1], torch.zeros(2)) and torch.equal(a[2], torch.zeros(2))  # ties within tolerance
    assert zero_variance_mask(s).tolist() == [False, True, True, False, True]
    # batch: centred per group, divided by the population std of every score of the batch
    flat = s.double().flatten()
    sd = math.sqrt(((flat - flat.mean()) ** 2).mean())
    assert torch.allclose(group_advantages(s, "batch")[3], torch.tensor([-2.5 / (sd + 1e-8), 2.5 / (sd + 1e-8)]))
    assert torch.equal(group_advantages(s, "none")[3], torch.tensor([-2.5, 2.5]))
    # partial ties: equal scores get equal advantages, which sum to zero
    p = group_advantages(torch.tensor([[2.0, 2.0, 8.0]]))
    assert p[0, 0] == p[0, 1] and abs(float(p.sum())) < 1e-6
    # a group of one carries no preference
    assert torch.equal(group_advantages(torch.tensor([[7.0]])), torch.zeros(1, 1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("objective", ["gpa", "gpa_linear", "dpo", "sft"])
def test_non_finite_scores_are_a_clear_error_not_a_silent_nan_or_a_nan_winner(objective, bad):
    """Before: gpa returned a NaN loss, and dpo/sft trained on the NaN-scored hypothesis as the group's best."""
    x0, cond, scores, pol, ref = _setup()
    scores[0, 1] = bad
    with pytest.raises(ValueError, match="finite"):
        compute_loss(pol, ref, x0, cond, scores, ObjectiveConfig(objective=objective), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="finite"):
        group_advantages(scores)


# ------------------------------------------------------------------------------------------ training loop


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from test_finetune import TINY, write_dataset

    from hmrcritic.hmr.diffusion import HMRDiffusion, save_model

    root = tmp_path_factory.mktemp("s16")
    torch.manual_seed(0)
    model = HMRDiffusion(TINY)
    for head in (model.joint_out, model.shape_out):
        torch.nn.init.normal_(head.weight, std=0.05)
    base = save_model(model, root / "base.pt", extra={})
    data = write_dataset(root / "prefs", n_groups=6, N=5)
    tied = root / "tied"
    write_dataset(tied, n_groups=1, N=5, tie_first=True)  # one group, all scores equal
    return root, base, data, tied


def _fcfg(data, base, out, **kw):
    from hmrcritic.alignment.finetune import FinetuneConfig

    kw = {"steps": 4, "batch_size": 2, "num_generations": 4, "checkpoint_every": 2, "lr": 1e-3, **kw}
    return FinetuneConfig(data=str(data), model=str(base), out=str(out), **kw)


def test_sft_with_one_generation_is_refused_not_a_silent_no_op(tiny):
    """Best-of-1 has no best: every group of one hypothesis is a tie, so SFT skipped them all and every step was
    a zero loss without gradient — a run that "finished" and saved the base model unchanged."""
    from hmrcritic.errors import InputError

    root, base, data, _ = tiny
    with pytest.raises(InputError, match="num-generations"):
        _fcfg(data, base, root / "sft1.pt", objective="sft", num_generations=1)


def test_a_dataset_of_single_hypothesis_groups_is_refused(tiny, tmp_path):
    """G = min(--num-generations, smallest group): a hand-written dataset with a group of one hypothesis made G = 1
    for every objective, so no step carried a preference (GPA trained on its base loss only, DPO/SFT nothing)."""
    from test_finetune import write_dataset

    from hmrcritic.alignment.finetune import finetune
    from hmrcritic.errors import InputError

    _, base, _, _ = tiny
    one = write_dataset(tmp_path / "one", n_groups=3, N=1)
    for objective in ("gpa", "dpo", "sft"):
        with pytest.raises(InputError, match="hypothes"):
            finetune(_fcfg(one, base, tmp_path / f"{objective}.pt", objective=objective))


@pytest.mark.parametrize("objective", ["sft", "dpo", "gpa_no_base_loss"])
def test_an_all_tied_batch_steps_nothing(objective, tiny, tmp_path):
    """Every group tied: the loss carries no gradient, so the loop must not move the weights or Adam's moments
    (AdamW skips parameters whose grad is None; with weight decay on too)."""
    from hmrcritic.alignment.finetune import finetune
    from hmrcritic.hmr.diffusion import load_model

    root, base, _, tied = tiny
    out = tmp_path / "t.pt"
    finetune(_fcfg(tied, base, out, objective=objective, steps=3, checkpoint_every=1, weight_decay=0.1,
                   num_generations=5, ema=0.0))
    st = torch.load(str(out) + ".state.pt", weights_only=True)
    b = load_model(base).state_dict()
    assert all(torch.equal(st["policy"][k], b[k]) for k in b)
    assert st["opt"]["state"] == {}  # no moments were ever taken
    log = [json.loads(line) for line in (tmp_path / "t.pt.log.jsonl").read_text().splitlines()]
    assert [r["grad_norm"] for r in log] == [0.0, 0.0, 0.0]
    assert all(r["zero_variance_share"] == 1.0 for r in log)


def test_reference_is_frozen_through_a_finetune(tiny, tmp_path, monkeypatch):
    """The reference stays in eval mode without grads and bit-identical to the base after every step, and it is
    a separate copy (not the EMA, not the policy)."""
    from hmrcritic.alignment import finetune as F
    from hmrcritic.hmr.diffusion import load_model

    root, base, data, _ = tiny
    seen = []
    real = F.compute_loss

    def spy(policy, reference, *a, **k):
        out = real(policy, reference, *a, **k)
        seen.append((policy, reference))
        return out

    monkeypatch.setattr(F, "compute_loss", spy)
    F.finetune(_fcfg(data, base, tmp_path / "r.pt", steps=3))
    b = load_model(base).state_dict()
    policy, ref = seen[-1]
    assert ref is not policy and all(r is ref for _, r in seen)
    assert not ref.training and policy.training
    assert all(not p.requires_grad and p.grad is None for p in ref.parameters())
    rs = ref.state_dict()
    assert all(torch.equal(rs[k], b[k]) for k in b)
    assert any(not torch.equal(policy.state_dict()[k], b[k]) for k in b)  # and the policy did move


def test_resume_gives_the_same_parameters_and_log_when_the_checkpoint_is_mid_window(tiny, tmp_path):
    """N steps straight vs killed after step 5 (last state at step 4, mid logging window) and resumed: bit-identical
    policy/EMA/optimizer state and the same log, every field but the timing. Then a finished run extended with a
    larger --steps: the same parameters (its log has the extra record of the earlier final step)."""
    from hmrcritic.alignment.finetune import finetune

    root, base, data, _ = tiny
    kw = {"steps": 7, "log_every": 5, "checkpoint_every": 2, "objective": "gpa"}
    finetune(_fcfg(data, base, tmp_path / "a.pt", **kw))

    from test_finetune import Killed, kill_at

    with pytest.raises(Killed):
        finetune(_fcfg(data, base, tmp_path / "b.pt", **kw), progress=kill_at(5))
    assert torch.load(tmp_path / "b.pt.state.pt", weights_only=True)["step"] == 4
    finetune(_fcfg(data, base, tmp_path / "b.pt", **kw))
    finetune(_fcfg(data, base, tmp_path / "c.pt", **{**kw, "steps": 3}))
    finetune(_fcfg(data, base, tmp_path / "c.pt", **kw))
    sa, sb, sc = (torch.load(tmp_path / f"{n}.pt.state.pt", weights_only=True) for n in "abc")
    for other in (sb, sc):
        for part in ("policy", "ema"):
            assert all(torch.equal(sa[part][k], other[part][k]) for k in sa[part])
        for i, s in sa["opt"]["state"].items():
            assert all(torch.equal(s[k], other["opt"]["state"][i][k]) for k in s)
    la, lb = ([{k: v for k, v in json.loads(line).items() if k != "steps_per_s"}
               for line in (tmp_path / f"{n}.pt.log.jsonl").read_text().splitlines()] for n in "ab")
    assert [r["step"] for r in la] == [5, 7]
    assert la == lb


BAD_K = ([[float("nan"), 0, 256], [0, 500, 256], [0, 0, 1]], [[0, 0, 256], [0, 0, 256], [0, 0, 1]])


@pytest.mark.parametrize("K", BAD_K)
def test_a_dataset_with_broken_intrinsics_is_refused_by_name_not_blamed_on_the_learning_rate(K, tiny, tmp_path,
                                                                                              monkeypatch):
    """NaN or zero focal lengths: validate said ok and the finetuner stopped with "diverged … at step 1 (the last saved
    state … is kept); lower --lr or --beta" — no state existed, and the learning rate had not acted yet."""
    from test_finetune import write_dataset

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.finetune import finetune
    from hmrcritic.errors import AssetError

    _, base, _, _ = tiny
    good = D.condition_arrays
    # write the group files as a buggy writer would, past the writer's own checks
    monkeypatch.setattr(D, "condition_arrays", lambda kp, _K, size: {**good(kp, np.eye(3), size),
                                                                     "K": np.asarray(K, np.float32)})
    monkeypatch.setattr(D, "check_condition", lambda arrays, where: None)
    data = write_dataset(tmp_path / "d", n_groups=3, N=4)
    monkeypatch.undo()
    report = D.validate_dataset(data)
    assert not report.ok and any("focal" in e for e in report.errors)
    with pytest.raises(AssetError, match="focal"):
        finetune(_fcfg(data, base, tmp_path / "o.pt"))


def test_a_nan_loss_at_the_first_step_does_not_blame_the_learning_rate(tiny, tmp_path, monkeypatch):
    from hmrcritic.alignment import finetune as F

    root, base, data, _ = tiny
    real = F.compute_loss

    def nan_loss(*a, **k):
        out = real(*a, **k)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(F, "compute_loss", nan_loss)
    with pytest.raises(F.TrainingDiverged) as exc:
        F.finetune(_fcfg(data, base, tmp_path / "n.pt"))
    assert "--lr" not in str(exc.value).split("not --lr")[0] and "before any update" in str(exc.value)
    assert "is kept" not in str(exc.value)


def test_an_all_tied_sft_batch_logs_no_loss_sft():
    """GPA leaves loss_gpa out and DPO loss_dpo when every group ties; SFT logged loss_sft = 0.0, which pulled the
    window's logged SFT loss toward zero (the finetuner averages each key over the steps that report it)."""
    x0, cond, _, pol, _ = _setup()
    tied = torch.full(x0.shape[:2], 4.0, dtype=torch.float64)
    out = compute_loss(pol, None, x0, cond, tied, ObjectiveConfig(objective="sft"), torch.Generator().manual_seed(0))
    assert "loss_sft" not in out.metrics and out.metrics["zero_variance_share"] == 1.0
    x0, cond, scores, pol, _ = _setup()
    out = compute_loss(pol, None, x0, cond, scores, ObjectiveConfig(objective="sft"), torch.Generator().manual_seed(0))
    assert out.metrics["loss_sft"] == out.metrics["loss"] > 0


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_an_all_tied_step_after_real_steps_does_not_step_adam_on_stale_moments(objective, tmp_path, tiny,
                                                                                 monkeypatch):
    """Batches of one group, one group tied: after steps that built Adam moments, the tied group's step (a loss
    without gradient) must leave the weights as they were — no update from the stale moments, no decay."""
    from test_finetune import write_dataset

    from hmrcritic.alignment import finetune as F

    _, base, _, _ = tiny
    data = write_dataset(tmp_path / "mixed", n_groups=3, N=4, tie_first=True)
    seen = []
    real = F.compute_loss

    def spy(policy, reference, x0, cond, scores, *a, **k):
        weights = {n: p.detach().clone() for n, p in policy.named_parameters()}
        seen.append((bool(zero_variance_mask(scores).all()), weights))
        return real(policy, reference, x0, cond, scores, *a, **k)

    monkeypatch.setattr(F, "compute_loss", spy)
    F.finetune(_fcfg(data, base, tmp_path / "m.pt", objective=objective, steps=9, batch_size=1, weight_decay=0.1))
    tied_steps = [i for i, (tied, _) in enumerate(seen[:-1]) if tied and i > 0]
    assert tied_steps, "the tied group was never drawn after a real step"
    for i in tied_steps:
        before, after = seen[i][1], seen[i + 1][1]
        assert all(torch.equal(before[n], after[n]) for n in before)
    moved = [i for i, (tied, _) in enumerate(seen[:-1]) if not tied]
    assert any(not torch.equal(seen[i][1]["joint_out.weight"], seen[i + 1][1]["joint_out.weight"]) for i in moved)


def test_a_divergence_before_the_first_checkpoint_does_not_claim_a_saved_state(tiny, tmp_path):
    from hmrcritic.alignment.finetune import TrainingDiverged, finetune

    root, base, data, _ = tiny
    out = tmp_path / "boom.pt"
    with pytest.raises(TrainingDiverged, match="lower --lr") as exc:
        finetune(_fcfg(data, base, out, steps=6, lr=1e30, checkpoint_every=50, ema=0.0))
    assert not (tmp_path / "boom.pt.state.pt").exists()
    assert "is kept" not in str(exc.value) and "no state was saved yet" in str(exc.value)


def test_threads_are_set_for_the_run_recorded_and_given_back(tiny, tmp_path):
    """Finetuned weights differ in their last bits between torch thread counts (one per core by default), so a
    table reproduced on another machine could not be matched bit for bit, and nothing said which count made it.
    ``threads`` fixes the count for the run (the caller's setting comes back), the checkpoint records the count
    used, and a run resumes under another count (it changes rounding, not meaning)."""
    from hmrcritic.alignment.finetune import finetune
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.diffusion import load_model

    root, base, data, _ = tiny
    before = torch.get_num_threads()
    a = finetune(_fcfg(data, base, tmp_path / "a.pt", threads=1, steps=2))
    assert torch.get_num_threads() == before
    assert load_model(a).checkpoint_extra["torch_threads"] == 1
    b = finetune(_fcfg(data, base, tmp_path / "a.pt", threads=2, steps=4))  # resumed at another count
    assert load_model(b).checkpoint_extra["torch_threads"] == 2
    c = finetune(_fcfg(data, base, tmp_path / "c.pt", steps=2))
    assert load_model(c).checkpoint_extra["torch_threads"] == before
    with pytest.raises(InputError, match="--threads"):
        _fcfg(data, base, tmp_path / "d.pt", threads=0)

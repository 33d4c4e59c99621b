"""Session 30 (mutation audit): tests that kill mutants the suite let survive. Each names the behaviour it pins
and why it matters; the session's report lists the mutant each one kills."""

from __future__ import annotations

import pytest
import torch

# ------------------------------------------------------------------------------------------- alignment objectives


def _tiny_policy_and_batch(B: int = 3, G: int = 4):
    """The real denoiser (a tiny config of it), its frozen reference, and a batch of B groups of G hypotheses."""
    from hmrcritic.alignment.objectives import frozen_reference
    from hmrcritic.hmr.diffusion import X_DIM, Condition, DiffusionConfig, HMRDiffusion

    torch.manual_seed(0)
    policy = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2, T=100))
    reference = frozen_reference(policy)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(B, G, X_DIM, generator=g)
    cond = Condition(keypoints=torch.rand(B, 17, 3, generator=g), box=torch.rand(B, 4, generator=g))
    scores = torch.rand(B, G, generator=g) * 10
    return policy, reference, x0, cond, scores


@pytest.mark.parametrize("objective", ["dpo", "gpa"])
def test_a_policy_still_equal_to_its_reference_has_no_reward_accuracy(objective):
    """reward_accuracy is "the share of groups whose best-scored hypothesis the policy already denoises better,
    relative to the reference, than the worst" (objectives._reward_metrics). At step 0 the policy *is* the reference:
    every implicit reward is exactly 0, so no group is yet won — 0.0 for DPO as for GPA. Counting a tie as a win
    (``<= 0``) logged DPO at 100 % accuracy before it had learnt anything."""
    from hmrcritic.alignment.objectives import ObjectiveConfig, compute_loss

    policy, reference, x0, cond, scores = _tiny_policy_and_batch()
    out = compute_loss(policy, reference, x0, cond, scores, ObjectiveConfig(objective=objective),
                       torch.Generator().manual_seed(2))
    assert out.metrics["reward_margin"] == 0.0
    assert out.metrics["reward_accuracy"] == 0.0


# ------------------------------------------------------------------------------------------------ evaluate-critic
import test_review_s22_curve as s22  # noqa: E402

from hmrcritic.agent.judges import BuiltinJudge  # noqa: E402

data = s22.data  # tiny train/test splits of session 22's curve tests (a module fixture)


class FailsOnOneGroup(BuiltinJudge):
    """The builtin judge, except that its critique of the first test group raises (as a VLM judge's answer that
    cannot be read does): that group is a failure of the variant, its ρ undefined (NaN)."""

    name = "fails-on-one"

    def critique(self, ctx):
        if ctx.group_id.endswith("-000000"):
            raise RuntimeError("the judge cannot read this group")
        return super().critique(ctx)


@pytest.mark.usefixtures("small_prior")
def test_a_group_with_an_undefined_rho_leaves_the_standard_error_of_the_others(data):
    """evaluate-critic's ``spearman_sem`` is the SE over the groups a variant *scored* (finite ρ): one failed
    critique (an undefined ρ) made the SE over all of them NaN — printed "—", the row's spread lost — though
    ``spearman`` itself is the mean over the groups scored."""
    import math

    from hmrcritic.agent.evaluate_critic import evaluate_critic

    res = evaluate_critic(split="test", num_groups=3, num_generations=3, warmup_groups=0, source="perturbed",
                          variants=["full", "evidence_only"], judge=FailsOnOneGroup(),
                          workdir=data / "eval-s30")
    for row in res["rows"]:
        assert row["groups_scored"] == 2, row  # the failed group is left out of the variant's figures
        assert math.isfinite(row["spearman"]) and math.isfinite(row["spearman_sem"]), row

"""The critique agent: a LangGraph ``render → recall → critique → reflect ⟲ → memory_write`` graph.

What a notebook uses, importable from here (each loads on first access; importing this package loads nothing)::

    from hmrcritic.agent import critique_group, critique_groups, ScoredGroup, write_report
    result = critique_group(sample, hypotheses)            # -> ScoredGroup (scores, ranking, rationales)
    result.scores[result.ranking[0]].rationale

``critique_group`` / ``critique_groups`` / ``write_scores`` / ``forget_group`` / ``discard_run`` and the records
``ScoredGroup`` / ``GroupResult`` live in :mod:`hmrcritic.agent.api`; ``write_report`` in ``agent.report``;
``AgentConfig`` (the agent settings, ``config=`` of ``critique_group``) in ``agent.state``; ``HypothesisScore`` /
``GroupCritique`` in ``agent.schema``; ``Judge`` (the protocol of a custom judge), ``JudgeContext``, ``BuiltinJudge``
and ``make_judge`` in ``agent.judges``. Exploration is the submodule ``hmrcritic.agent.explore`` (its function
``explore.explore``). Signatures: docs/CONTRACTS.md "agent/".
"""

from hmrcritic import _lazy_exports

_EXPORTS = {
    **dict.fromkeys(("critique_group", "critique_groups", "critique_labelled", "write_scores", "forget_group",
                     "discard_run", "content_group_id", "overall_scale_note", "ScoredGroup", "GroupResult"),
                    "hmrcritic.agent.api"),
    **dict.fromkeys(("write_report", "render_html"), "hmrcritic.agent.report"),
    "AgentConfig": "hmrcritic.agent.state",
    **dict.fromkeys(("HypothesisScore", "GroupCritique"), "hmrcritic.agent.schema"),
    **dict.fromkeys(("Judge", "JudgeContext", "BuiltinJudge", "make_judge"), "hmrcritic.agent.judges"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())

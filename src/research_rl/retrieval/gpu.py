"""Where a loaded FAISS index searches: on CPU, or cloned to the GPUs, sharded or replicated, by config.

retriever.dense keys read here:
- use_gpu: move the index to GPU when faiss has GPU support and sees a GPU;
- gpu_required: with use_gpu, refuse to run on CPU (GpuUnavailableError) instead of falling back;
- gpu_shard: true splits the vectors over the GPUs (faiss IndexShards: each GPU holds 1/n of the
  index, so the 65 GB flat wiki-18 index fits on 80 GB cards); false replicates the whole index on
  each GPU (IndexReplicas: more queries per second, each GPU must hold all of it);
- gpu_float16: store vectors as float16 on GPU (half the memory, slightly lower scores' precision);
- gpu_count: use the first n GPUs (default: all visible, CUDA_VISIBLE_DEVICES applies).
The clone is faiss's own `index_cpu_to_all_gpus` with `GpuMultipleClonerOptions`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any


class GpuUnavailableError(RuntimeError):
    """retriever.dense.gpu_required is set but faiss cannot put the index on a GPU here."""


@dataclass(frozen=True)
class GpuPlacement:
    use_gpu: bool
    required: bool
    shard: bool
    float16: bool
    ngpu: int  # -1: every visible GPU


def placement(dense_cfg: dict[str, Any]) -> GpuPlacement:
    """The GPU options of retriever.dense, defaults filled in, types checked (the schema checks them too)."""
    values = {
        "use_gpu": dense_cfg.get("use_gpu", False),
        "gpu_required": dense_cfg.get("gpu_required", False),
        "gpu_shard": dense_cfg.get("gpu_shard", True),
        "gpu_float16": dense_cfg.get("gpu_float16", False),
    }
    for key, value in values.items():
        if not isinstance(value, bool):
            raise ValueError(f"retriever.dense.{key} must be true or false, got {value!r}")
    count = dense_cfg.get("gpu_count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise ValueError(f"retriever.dense.gpu_count must be a positive integer or null, got {count!r}")
    return GpuPlacement(
        use_gpu=values["use_gpu"],
        required=values["gpu_required"],
        shard=values["gpu_shard"],
        float16=values["gpu_float16"],
        ngpu=-1 if count is None else count,
    )


def faiss_gpu_count() -> int:
    """GPUs faiss can use here: 0 with faiss-cpu (no StandardGpuResources) or no visible GPU."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def place_index(index: Any, dense_cfg: dict[str, Any]) -> Any:
    """The index to search: `index` itself on CPU, or its clone over the GPUs that the config asks for."""
    import faiss

    options = placement(dense_cfg)
    if not options.use_gpu:
        return index
    available = faiss_gpu_count()
    if available == 0 or isinstance(index, faiss.IndexHNSW):
        why = (
            "faiss has no GPU index (HNSW)"
            if available
            else f"this faiss {faiss.__version__} has no GPU support or sees no GPU"
            + ("" if hasattr(faiss, "StandardGpuResources") else " (faiss-cpu is installed, not faiss-gpu)")
        )
        if options.required:
            raise GpuUnavailableError(
                f"retriever.dense.use_gpu and gpu_required are set but {why}; "
                "install a GPU build of faiss on this node, or set gpu_required: false to search on CPU"
            )
        print(f"retriever: use_gpu is set but {why}; searching on CPU", file=sys.stderr)
        return index
    if options.ngpu > available:
        raise GpuUnavailableError(f"retriever.dense.gpu_count is {options.ngpu} but faiss sees {available} GPU(s)")
    cloner = faiss.GpuMultipleClonerOptions()
    cloner.shard = options.shard
    cloner.useFloat16 = options.float16
    used = available if options.ngpu == -1 else options.ngpu
    layout = "sharded over" if options.shard else "replicated on"
    print(f"retriever: index of {index.ntotal} vectors {layout} {used} GPU(s)", file=sys.stderr)
    return faiss.index_cpu_to_all_gpus(index, co=cloner, ngpu=options.ngpu)

"""protofast: prototypical and pairwise soft targets for sensor-to-language
training, on a Rust core.

The core (:func:`kmeans`, :func:`kmeans_plusplus`, :class:`LabelStore`,
:func:`nearest_prototype`, :func:`label_hashes`, :func:`match_clusters`) is compiled Rust and
needs only numpy. The training layer (:class:`PrototypeManager`, :class:`InfoNCELoss`,
:class:`SemanticAlignmentLoss`, :func:`compute_retrieval_metrics`, :class:`ClusteringReport`,
:class:`DistributedError`) needs torch and is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core import (
    KMeansResult,
    LabelStore,
    ProtofastError,
    get_amx,
    get_num_threads,
    kmeans,
    kmeans_plusplus,
    label_hashes,
    match_clusters,
    nearest_prototype,
    set_amx,
    set_num_threads,
)
from ._protofast import __version__

if TYPE_CHECKING:
    from ._distributed import DistributedError
    from .loss import InfoNCELoss, SemanticAlignmentLoss
    from .manager import ClusteringReport, PrototypeManager
    from .metrics import compute_retrieval_metrics

__all__ = [
    "ClusteringReport",
    "DistributedError",
    "InfoNCELoss",
    "KMeansResult",
    "LabelStore",
    "PrototypeManager",
    "ProtofastError",
    "SemanticAlignmentLoss",
    "__version__",
    "compute_retrieval_metrics",
    "get_amx",
    "get_num_threads",
    "kmeans",
    "kmeans_plusplus",
    "label_hashes",
    "match_clusters",
    "nearest_prototype",
    "set_amx",
    "set_num_threads",
]

_LAZY = {
    "ClusteringReport": "manager",
    "DistributedError": "_distributed",
    "PrototypeManager": "manager",
    "InfoNCELoss": "loss",
    "SemanticAlignmentLoss": "loss",
    "compute_retrieval_metrics": "metrics",
}


def __getattr__(name: str) -> Any:
    """Imports the torch-based names on first use (``import protofast`` stays light)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'protofast' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

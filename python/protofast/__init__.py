"""protofast: prototypical and pairwise soft targets for sensor-to-language
training, on a Rust core.

The core (:func:`kmeans`, :class:`LabelStore`, :func:`nearest_prototype`) is
compiled Rust; the training-facing layer (``PrototypeManager``,
``InfoNCELoss``) is a thin torch layer on top of it.
"""

from ._core import (
    KMeansResult,
    LabelStore,
    ProtofastError,
    get_num_threads,
    kmeans,
    nearest_prototype,
    set_num_threads,
)
from ._protofast import __version__

__all__ = [
    "KMeansResult",
    "LabelStore",
    "ProtofastError",
    "__version__",
    "get_num_threads",
    "kmeans",
    "nearest_prototype",
    "set_num_threads",
]

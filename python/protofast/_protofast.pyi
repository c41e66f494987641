"""Type stubs of the compiled core. Users import from ``protofast`` instead."""

from typing import final

import numpy as np
import numpy.typing as npt

__all__ = [
    "LabelStore",
    "ProtofastError",
    "get_amx",
    "get_num_threads",
    "group_labels_raw",
    "kmeans_raw",
    "kmeans_plusplus_raw",
    "label_hashes_raw",
    "label_targets_raw",
    "match_clusters_raw",
    "nearest_prototype_raw",
    "rows_match_raw",
    "set_amx",
    "set_num_threads",
    "__version__",
]

__version__: str

class ProtofastError(ValueError):
    """Invalid input to protofast. The message names the argument and the problem."""

def kmeans_raw(
    x: npt.NDArray[np.float32],
    k: int,
    *,
    n_init: int,
    max_iter: int,
    tol: float,
    seed: int,
    init: str,
    init_centroids: npt.NDArray[np.float32] | None,
    spherical: bool,
    n_local_trials: int | None = None,
    reassign: bool = True,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], float, int, bool]: ...
def kmeans_plusplus_raw(
    x: npt.NDArray[np.float32], k: int, *, seed: int, n_local_trials: int | None = None
) -> npt.NDArray[np.int64]: ...
def nearest_prototype_raw(
    queries: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32], metric: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def group_labels_raw(
    labels: list[str],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
def rows_match_raw(
    rows: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    first: npt.NDArray[np.int64],
    inverse: npt.NDArray[np.int64],
) -> bool | None: ...
def label_targets_raw(
    emb: npt.NDArray[np.float32],
    counts: npt.NDArray[np.float32],
    *,
    hard: float,
    pairwise: float,
    inv_temperature: float,
    logits: npt.NDArray[np.float32] | None = None,
    clusters: npt.NDArray[np.int64] | None = None,
    prototype: float = 0.0,
    want_semantic: bool = False,
    first: npt.NDArray[np.int64] | None = None,
    inverse: npt.NDArray[np.int64] | None = None,
) -> tuple[npt.NDArray[np.float32], float | None] | None: ...
def label_hashes_raw(labels: list[str]) -> npt.NDArray[np.int64]: ...
def match_clusters_raw(
    previous: npt.NDArray[np.int64], current: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.int64]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def set_amx(enabled: bool) -> bool: ...
def get_amx() -> bool: ...

@final
class LabelStore:
    def __new__(cls, max_samples_per_label: int | None = None) -> LabelStore: ...
    def add(
        self, labels: list[str], embeddings: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.int64]: ...
    def add_grouped(
        self, labels: list[str], embeddings: npt.NDArray[np.float32]
    ) -> tuple[
        npt.NDArray[np.int64],
        tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]],
    ]: ...
    def intern_grouped(
        self, labels: list[str]
    ) -> tuple[
        npt.NDArray[np.int64],
        tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]],
    ]: ...
    def intern(self, labels: list[str]) -> npt.NDArray[np.int64]: ...
    def lookup(self, labels: list[str]) -> npt.NDArray[np.int64]: ...
    def add_sums(
        self,
        ids: npt.NDArray[np.int64],
        sums: npt.NDArray[np.float32],
        counts: npt.NDArray[np.int64],
    ) -> None: ...
    def means(self) -> npt.NDArray[np.float32]: ...
    def labels(self) -> list[str]: ...
    def counts(self) -> npt.NDArray[np.int64]: ...
    def __len__(self) -> int: ...
    @property
    def dim(self) -> int | None: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def max_samples_per_label(self) -> int | None: ...
    def state(self) -> dict[str, object]: ...
    def load_state(
        self,
        max_samples_per_label: int | None,
        dim: int | None,
        labels: list[str],
        counts: npt.NDArray[np.int64],
        data: npt.NDArray[np.float32],
        window_rows: npt.NDArray[np.int64],
    ) -> None: ...

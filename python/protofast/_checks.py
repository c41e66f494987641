"""Argument checks of the torch layer (loss, manager, metrics), with one message style.

Every message names the argument and reads ``"<name> must be <what>, got <value>"``. Wrong types
raise ``TypeError``, wrong values ``ValueError``. (The numpy front of the core, ``_core.py``,
checks its own arguments in the core's style, ``"<name>: <problem>"``, like the Rust errors.)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = [
    "check_bool",
    "check_choice",
    "check_embeddings",
    "check_int",
    "check_labels",
    "check_nonnegative",
    "check_pair",
    "check_positive",
    "check_weight",
]


def check_bool(name: str, value: Any) -> bool:
    """``value`` itself if it is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {bound}, got {value}")
    return value


def _real(name: str, value: Any, what: str) -> float:
    if type(value) is float:  # the common case, without the abstract-class check
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a finite float ``> 0`` (temperatures)."""
    value = _real(name, value, "a real number")
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    """``value`` as a finite float ``>= 0`` (tolerances)."""
    value = _real(name, value, "a real number")
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_weight(name: str, value: Any) -> float:
    """``value`` as a float in ``[0, 1]`` (blend weights)."""
    value = _real(name, value, "a real number in [0, 1]")
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        options = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be {options}, got {value!r}")
    return value


def check_embeddings(name: str, value: Any, rows: int | None = None) -> Tensor:
    """``value`` if it is a 2-D floating tensor (with ``rows`` rows, when given)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")
    if value.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N x D), got shape {tuple(value.shape)}")
    if rows is not None and value.shape[0] != rows:
        raise ValueError(
            f"{name} must have one row per label: expected {rows} rows, got {value.shape[0]}"
        )
    return value


def check_pair(imu: Tensor, text: Tensor) -> None:
    """``imu_embeddings`` and ``text_embeddings`` (checked 2-D tensors) have the same shape and
    device."""
    if imu.shape != text.shape:
        raise ValueError(
            f"imu_embeddings and text_embeddings must have the same shape, "
            f"got {tuple(imu.shape)} and {tuple(text.shape)}"
        )
    if imu.device != text.device:
        raise ValueError(
            f"imu_embeddings is on {imu.device} but text_embeddings is on {text.device}"
        )


def check_labels(name: str, value: Any) -> list[str]:
    """``value`` as a list of str (the list itself when it is one); a bare str is refused."""
    if isinstance(value, str | bytes):
        raise TypeError(f"{name} must be a sequence of str, not a single {type(value).__name__}")
    if type(value) is list:
        labels = value
    else:
        try:
            labels = list(value)
        except TypeError:
            raise TypeError(
                f"{name} must be a sequence of str, got {type(value).__name__}"
            ) from None
    if not set(map(type, labels)) <= {str}:  # exact str everywhere: the common case
        for i, label in enumerate(labels):
            if not isinstance(label, str):
                raise TypeError(f"{name}[{i}] must be a str, got {type(label).__name__}")
    return labels

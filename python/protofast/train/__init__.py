"""The training job: an IMU encoder trained against label texts on real data (UCI HAPT, UEA
BasicMotions).

Run it with ``protofast-train`` or ``python -m protofast.train`` (see ``README.md`` beside this
file). The job uses only the public API of :mod:`protofast`; the library never imports it.
The names below are imported on first use, so that ``import protofast.train.data`` stays free
of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ablation import ablation_settings, run_ablation
    from .checkpoint import CHECKPOINT_NAME
    from .cli import build_parser, main
    from .config import TrainConfig
    from .loop import SUMMARY_NAME, train
    from .model import IMUEncoder
    from .prepare import PreparedData, prepare_data
    from .text_head import TextHead

__all__ = [
    "CHECKPOINT_NAME",
    "SUMMARY_NAME",
    "IMUEncoder",
    "PreparedData",
    "TextHead",
    "TrainConfig",
    "ablation_settings",
    "build_parser",
    "main",
    "prepare_data",
    "run_ablation",
    "train",
]

_LAZY = {
    "CHECKPOINT_NAME": "checkpoint",
    "SUMMARY_NAME": "loop",
    "IMUEncoder": "model",
    "PreparedData": "prepare",
    "TextHead": "text_head",
    "TrainConfig": "config",
    "ablation_settings": "ablation",
    "build_parser": "cli",
    "main": "cli",
    "prepare_data": "prepare",
    "run_ablation": "ablation",
    "train": "loop",
}


def __getattr__(name: str) -> Any:
    """Imports the job's modules on first use of one of their names."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'protofast.train' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

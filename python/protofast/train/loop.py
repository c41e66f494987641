"""One training run: align IMU windows with label-text embeddings.

Trains a small 1-D CNN (:class:`protofast.train.model.IMUEncoder`) so that each HAPT window
lands next to the embedding of a natural description of its activity, with the symmetric InfoNCE
loss of :class:`protofast.InfoNCELoss` and, optionally, pairwise and prototypical soft targets
(:class:`protofast.PrototypeManager`), as in the design note.

**Label texts.** Every training sample gets one of its activity's *training* descriptions at
random (:mod:`protofast.train.data.descriptions`); that description string is the sample's label
text, so the prototype manager clusters dozens of distinct texts, and ``--hard-targets label``
treats samples with the *same description* as positives. The epoch's order and descriptions
depend only on ``(seed, epoch)``, so a resumed run continues exactly.

Outputs in ``cfg.output_dir``: ``checkpoint.pt`` (see :mod:`protofast.train.checkpoint`),
``summary.json`` and the figures of :mod:`protofast.train.figures`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protofast import InfoNCELoss, PrototypeManager

from . import ddp
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .evaluate import class_embeddings, evaluate, other_activity_target_mass
from .figures import prototypes_ready, write_figures
from .model import IMUEncoder
from .prepare import PreparedData, prepare_data
from .prototypes import make_prototypes
from .text_head import TextHead

__all__ = ["PROGRESS_LOG_INTERVAL_S", "SUMMARY_NAME", "jsonable", "train"]

logger = logging.getLogger("protofast")

SUMMARY_NAME = "summary.json"

#: Seconds between two progress lines when stderr is not a terminal.
PROGRESS_LOG_INTERVAL_S = 30.0


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _lr_lambda(total_steps: int, warmup: int) -> Any:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def _make_manager(cfg: TrainConfig, device: torch.device) -> Any:
    return PrototypeManager(
        num_clusters=cfg.num_clusters,
        update_interval=cfg.update_interval,
        device=device,
        seed=cfg.seed,
    )


def train(
    cfg: TrainConfig,
    data: PreparedData | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one training job and write its outputs.

    Args:
        cfg: Run settings.
        data: Prepared data (loaded with :func:`prepare_data` when ``None``).
        progress: Show progress: a live tqdm bar when stderr is a terminal (or in a notebook);
            otherwise (a log file, a pipe) a log line at most every
            :data:`PROGRESS_LOG_INTERVAL_S` seconds, besides the log line of every epoch.

    Returns:
        The summary (also written to ``<output_dir>/summary.json``).

    Raises:
        FileNotFoundError: If the data or the ``--resume`` checkpoint is missing.
        ValueError: On invalid settings.
    """
    t_start = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = _resolve_device(cfg.device)
    ranks = ddp.current()  # several processes (torchrun): see protofast.train.ddp
    main = ranks is None or ranks.rank == 0
    loaded_here = data is None
    if data is None:
        data = prepare_data(cfg)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    model = IMUEncoder(
        in_channels=data.split.train.x.shape[1], embed_dim=data.train_text_emb.shape[1]
    ).to(device)
    head = TextHead(data.train_text_emb.shape[1], cfg.text_head).to(device)
    net: torch.nn.Module = ddp.Pair(model, head)
    if ranks is not None:
        net = torch.nn.parallel.DistributedDataParallel(net)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_train = len(data.split.train)
    steps_per_epoch = max(1, n_train // cfg.batch_size)
    # the LR schedule always spans --epochs; --max-steps only stops early (so that a run
    # stopped by --max-steps and resumed later follows the same schedule)
    schedule_steps = max(1, cfg.epochs * steps_per_epoch)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(schedule_steps, max(1, schedule_steps // 20))
    )

    text_emb_all = torch.from_numpy(data.train_text_emb).to(device)
    manager = (
        make_prototypes(
            cfg.prototype_form,
            num_clusters=cfg.num_clusters,
            update_interval=cfg.update_interval,
            seed=cfg.seed,
            device=device,
            label_embeddings=dict(zip(data.train_texts, text_emb_all.cpu(), strict=True)),
        )
        if cfg.use_prototypes
        else None
    )
    # the sensor form clusters the IMU embeddings: it is fed after the forward pass
    sensor_fed = manager is not None and cfg.prototype_form == "sensor"
    loss_fn = InfoNCELoss(
        temperature=cfg.temperature,
        use_soft_targets=cfg.use_soft_targets,
        soft_target_temperature=cfg.soft_target_temperature,
        soft_target_weight=cfg.soft_target_weight,
        use_prototypes=cfg.use_prototypes,
        prototype_weight=cfg.prototype_weight,
        prototype_manager=manager,
        hard_targets=cfg.hard_targets,  # type: ignore[arg-type]
        target_embeddings=dict(zip(data.train_texts, text_emb_all.cpu(), strict=True)),
        gather=ranks is not None,
    ).to(device)

    history: dict[str, list[Any]] = {
        "step": [],
        "loss": [],
        "acc": [],
        "other_mass": [],
        "epoch_eval": [],
    }
    step = 0
    if cfg.resume:
        step, history = load_checkpoint(
            cfg.resume, model, head, optimizer, scheduler, manager, device
        )
        logger.info(
            "resumed from %s at step %d (epoch %d)", cfg.resume, step, step // steps_per_epoch + 1
        )

    # description table: row c lists the training-text ids of class c (padded)
    n_desc = np.bincount(data.train_text_class, minlength=len(data.activities))
    desc_table = np.zeros((len(data.activities), max(1, int(n_desc.max()))), dtype=np.int64)
    for c in range(len(data.activities)):
        ids = np.flatnonzero(data.train_text_class == c)
        desc_table[c, : len(ids)] = ids
    y_train = data.y_train
    x_train = data.split.train.x
    train_class_emb = None

    bar = _Progress(progress and main, total_steps, min(step, total_steps))
    mine = ddp.share(cfg.batch_size, ranks)
    t_train = time.perf_counter()
    while step < total_steps:
        epoch = step // steps_per_epoch
        # the epoch's plan depends only on (seed, epoch): a resumed run continues exactly
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(n_train, generator=gen).numpy()
        rng = np.random.default_rng([cfg.seed, epoch])
        cls_epoch = y_train[order]
        pick = (rng.random(n_train) * n_desc[cls_epoch]).astype(np.int64)
        desc_epoch = desc_table[cls_epoch, pick]
        model.train()
        head.train()
        for b in range(step - epoch * steps_per_epoch, steps_per_epoch):
            sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            idx = order[sl][mine]
            cls_np = cls_epoch[sl][mine]
            desc_idx = desc_epoch[sl][mine]
            texts = [data.train_texts[i] for i in desc_idx]
            x = torch.from_numpy(x_train[idx]).to(device)
            frozen = text_emb_all[torch.as_tensor(desc_idx, device=device)]
            if manager is not None and not sensor_fed:
                manager.add_labels(texts, frozen)
            imu, text = net(x, frozen)
            if sensor_fed and manager is not None:
                manager.add_labels(texts, imu.detach())
            loss, _ = loss_fn(imu, text, texts, return_metrics=False)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            with torch.no_grad():
                if train_class_emb is None or head.proj is not None:
                    train_class_emb = class_embeddings(
                        head(text_emb_all), data.train_text_class, len(data.activities)
                    )
                cls_t = torch.as_tensor(cls_np, device=device)
                acc = float(((imu @ train_class_emb.T).argmax(1) == cls_t).float().mean())
            loss_v = float(loss.detach())
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"non-finite loss {loss_v} at step {step}")
            history["step"].append(step)
            history["loss"].append(loss_v)
            history["acc"].append(acc)
            if step % 5 == 1 or step == total_steps:
                mass = other_activity_target_mass(loss_fn, texts, text, cls_t)
                history["other_mass"].append([step, mass])
            bar.step(step, epoch, loss_v, acc)
            if step >= total_steps:
                break
        if cfg.checkpoint and ranks is not None and manager is not None:
            manager.sync()  # every rank's samples in the store: rank 0's file resumes all ranks
        if not main:
            continue
        ev = evaluate(
            model,
            head,
            data,
            data.split.test,
            data.y_test,
            device,
            episodes=min(cfg.eval_episodes, 10),
            seed=cfg.seed,
        )
        ev_row = {
            "epoch": epoch + 1,
            "step": step,
            "acc_train_texts": ev["acc_train_texts"],
            "acc_heldout_texts": ev["acc_heldout_texts"],
            "macro_f1_train_texts": ev["macro_f1_train_texts"],
        }
        history["epoch_eval"].append(ev_row)
        logger.info(
            "epoch %d (step %d): loss %.4f | test acc %.3f (train texts) %.3f (held-out texts)"
            " | macro-F1 %.3f",
            epoch + 1,
            step,
            float(np.mean(history["loss"][-steps_per_epoch:])),
            ev["acc_train_texts"],
            ev["acc_heldout_texts"],
            ev["macro_f1_train_texts"],
        )
        if cfg.checkpoint:
            save_checkpoint(
                out_dir / CHECKPOINT_NAME,
                model,
                head,
                optimizer,
                scheduler,
                manager,
                step // steps_per_epoch,
                step,
                history,
                cfg,
            )
    bar.close()
    train_s = time.perf_counter() - t_train
    if not main:
        return {"rank": ranks.rank if ranks is not None else 0, "steps": step}

    final = evaluate(
        model,
        head,
        data,
        data.split.test,
        data.y_test,
        device,
        episodes=cfg.eval_episodes,
        seed=cfg.seed,
    )
    mass_values = [m for _, m in history["other_mass"]]
    fig_manager = manager if isinstance(manager, PrototypeManager) else None
    if cfg.figures and (fig_manager is None or not prototypes_ready(fig_manager)):
        fig_manager = _fit_figure_manager(cfg, data, device)
    summary: dict[str, Any] = {
        "config": cfg.to_dict(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "n_train_windows": n_train,
        "n_test_windows": len(data.split.test),
        "test_people": data.split.test_people,
        "activities": data.class_names,
        "n_train_texts": len(data.train_texts),
        "n_heldout_texts": len(data.heldout_texts),
        "steps": step,
        "epochs_completed": round(step / steps_per_epoch, 2),
        "final_train_loss": float(np.mean(history["loss"][-20:])) if history["loss"] else None,
        "other_activity_target_mass": float(np.mean(mass_values)) if mass_values else None,
        "metrics": {k: v for k, v in final.items() if not k.startswith("per_class")},
        "per_class_f1_train_texts": dict(
            zip(data.class_names, final["per_class_f1_train_texts"], strict=True)
        ),
        "per_class_f1_heldout_texts": dict(
            zip(data.class_names, final["per_class_f1_heldout_texts"], strict=True)
        ),
        "epoch_eval": history["epoch_eval"],
        "timings_s": {**data.timings, "train_s": train_s},
    }
    if manager is not None:
        summary["prototypes"] = {
            "form": cfg.prototype_form,
            "num_updates": int(getattr(manager, "num_updates", 0)),
            "cluster_labels": jsonable(getattr(manager, "cluster_labels", {})),
        }
    if cfg.figures:
        summary["figures"] = write_figures(out_dir, history, data, fig_manager)
    if cfg.checkpoint:
        summary["checkpoint"] = str(out_dir / CHECKPOINT_NAME)
    elapsed = time.perf_counter() - t_start
    summary["timings_s"]["total_s"] = (
        elapsed if loaded_here else elapsed + sum(data.timings.values())
    )
    (out_dir / SUMMARY_NAME).write_text(json.dumps(jsonable(summary), indent=2))
    return summary


def _interactive() -> bool:
    """Whether progress can be drawn as a live bar: stderr is a terminal, or a notebook."""
    from tqdm.auto import tqdm

    if any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__):
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False


class _Progress:
    """Progress of the training loop: a live tqdm bar on a terminal, rare log lines otherwise.

    A bar redrawn on every step floods a redirected stderr (one ``\\r``-separated copy of the
    bar per step), so without a terminal there is no bar; a line is logged at most every
    :data:`PROGRESS_LOG_INTERVAL_S` seconds instead. On a terminal the bar's postfix (epoch,
    loss, batch accuracy) is set without a redraw of its own: it shows at the bar's next
    redraw, at most every ``mininterval`` seconds.
    """

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self.total = total
        self.bar: Any = None
        self.log = False
        if enabled and _interactive():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc="train",
                dynamic_ncols=True,
                mininterval=0.5,
                leave=True,
            )
        else:
            self.log = enabled
        self.last_time = time.perf_counter()
        self.last_step = initial

    def step(self, step: int, epoch: int, loss: float, acc: float) -> None:
        """Record one finished optimiser step."""
        if self.bar is not None:
            self.bar.set_postfix(
                epoch=epoch + 1, loss=f"{loss:.3f}", acc=f"{acc:.2f}", refresh=False
            )
            self.bar.update(1)
        elif self.log:
            now = time.perf_counter()
            if now - self.last_time >= PROGRESS_LOG_INTERVAL_S:
                logger.info(
                    "step %d/%d (epoch %d): loss %.4f, batch acc %.2f, %.1f steps/s",
                    step,
                    self.total,
                    epoch + 1,
                    loss,
                    acc,
                    (step - self.last_step) / (now - self.last_time),
                )
                self.last_time, self.last_step = now, step

    def close(self) -> None:
        """Close the bar (if any)."""
        if self.bar is not None:
            self.bar.close()


def _fit_figure_manager(cfg: TrainConfig, data: PreparedData, device: torch.device) -> Any:
    """Cluster the training texts once (for the figure of runs without prototypes)."""
    manager = _make_manager(cfg, device)
    manager.add_labels(list(data.train_texts), torch.from_numpy(data.train_text_emb).to(device))
    manager.update_prototypes()
    return manager


def jsonable(obj: Any) -> Any:
    """Convert numpy / torch values (nested in dicts, lists, tuples) to plain JSON types.

    Args:
        obj: Any value.

    Returns:
        ``obj`` with dict keys as strings, tuples as lists, and numpy scalars, arrays and
        tensors as Python numbers and (nested) lists.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | torch.Tensor):
        return jsonable(obj.tolist())
    return obj

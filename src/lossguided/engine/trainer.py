"""A small trainer: the step is data -> forward (per-sample losses) -> backward -> optimizer and per-batch LR.
Around it, once per epoch: loss recording, validation, a JSONL metrics line, checkpoints, early stopping.

Resuming reads `out_dir/last.pt` (model, optimizer, epoch, step, RNG, recorder) and continues with the next epoch
(or inside the epoch, after a `save_every_steps` checkpoint),
so a killed run that is started again finishes as if it had never stopped.

What it refuses: a folder another run holds (`runlock`), a loss or weights that stop being finite (the run ends
naming the epoch and step, and nothing of that epoch is saved), checkpoints that do not fit on the disk (checked
before the first byte; best.pt, last.pt and metrics.jsonl are written first and renamed together, so they never
hold different epochs).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lossguided import runlock, signals
from lossguided.config import ConfigError, TrainConfig
from lossguided.data.datasets import one_line_worker_error
from lossguided.data.loader import create_loader
from lossguided.data.manifest import ClassMap, DataError
from lossguided.data.transforms import BatchTransform, normalization
from lossguided.disk import DiskFullError
from lossguided.distributed import (
    all_gather_objects,
    all_reduce_max,
    all_reduce_sum,
    broadcast_buffers,
    default_device,
    get_info,
)
from lossguided.engine import checkpoint
from lossguided.engine.evaluate import evaluate
from lossguided.engine.loss import create_criterion, torch_smoothing
from lossguided.engine.optim import create_optimizer, create_scheduler
from lossguided.engine.recorder import LossRecorder
from lossguided.io import atomic_paths, remove_stale_temps, write_text

log = logging.getLogger("lossguided")


class NonFiniteError(ConfigError):
    """The loss or the weights stopped being finite: these settings do not train this model (the lr, usually)."""


@dataclass
class FitResult:
    best_val_error: float | None
    epochs_done: int
    stopped_early: bool
    resumed_from: int | None


class Trainer:
    """Trains `model` on `train_set` under `cfg`. `update=False` only records losses (eval mode, no gradients)."""

    def __init__(
        self,
        model: nn.Module,
        train_set,
        *,
        cfg: TrainConfig,
        classes: ClassMap,
        out_dir: str | Path,
        run_config: dict | None = None,
        run_key: dict | None = None,
        val_set=None,
        recorder: LossRecorder | None = None,
        update: bool = True,
        loader_kwargs: dict | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.info = get_info()
        self.cfg, self.classes, self.out_dir = cfg, classes, Path(out_dir)
        self.run_config = run_config or {}
        self.run_key = run_key  # what makes a run this run; a last.pt with another key is not resumed
        self.device = device or default_device(self.info)
        self.update, self.recorder, self.val_set = update, recorder, val_set
        self.on_cuda = self.device.type == "cuda"
        self.model = model.to(self.device)
        model_name = (self.run_config.get("model") or {}).get("name") or ""
        self.channels_last = self.on_cuda and use_channels_last(cfg.channels_last, model_name)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.on_cuda:
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels once
        self.amp_dtype = amp_dtype(self.device) if self.on_cuda and cfg.amp else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 and update else None
        self.loader_kwargs = loader_kwargs or {}
        self.loader = create_loader(
            train_set, batch_size=cfg.batch_size, shuffle=update, seed=cfg.seed, info=self.info, **self.loader_kwargs
        )
        self.steps_per_epoch = len(self.loader)
        self.optimizer = create_optimizer(self.model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = create_scheduler(
            self.optimizer,
            total_steps=cfg.epochs * self.steps_per_epoch,
            lr_min_ratio=cfg.lr_min_ratio,
            warmup_steps=cfg.warmup_steps,
            sched=cfg.sched,
            steps_per_epoch=self.steps_per_epoch,
        )
        self.criterion = create_criterion(num_classes=len(classes), smoothing=cfg.smoothing)
        self.normalization = normalization(self.run_config.get("model"))
        mean, std = self.normalization
        self.transform = BatchTransform(mean=mean, std=std, flip=cfg.flip).to(self.device)
        self.mixup = None  # timm's Mixup/CutMix of the training batches (off while losses are recorded)
        if (cfg.mixup > 0 or cfg.cutmix > 0) and update and recorder is None:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=cfg.mixup,
                cutmix_alpha=cfg.cutmix,
                label_smoothing=torch_smoothing(cfg.smoothing, len(classes)),
                num_classes=len(classes),
            )
        self.ema = None  # timm's ModelEmaV3 of the weights (train.ema_decay): what is evaluated and shipped
        if cfg.ema_decay is not None and update:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)
        forward = torch.compile(self.model) if cfg.compile else self.model  # saved and evaluated: self.model
        self.net = self._ddp(forward) if self.info.enabled and update else forward
        self.epoch = self.step = 0
        self.resume_point: dict | None = None  # where a mid-epoch checkpoint left the current epoch
        self.best, self.bad_epochs = None, 0
        self.history: list[dict] = []  # one metrics record per finished epoch; metrics.jsonl is rebuilt from it
        self._tb = None  # TensorBoard writer (False: the package is not installed)

    def _ddp(self, module: nn.Module) -> nn.Module:
        """DDP with the settable options: bucket views (no second copy of the gradients) and, on NCCL, bf16
        compression of the gradient all-reduce (half the bytes; the head of 50,030 classes is most of them)."""
        net = DistributedDataParallel(
            module,
            device_ids=[self.device.index] if self.on_cuda else None,
            gradient_as_bucket_view=self.cfg.ddp_bucket_view,
        )
        if self.cfg.ddp_bf16_compress:
            if self.on_cuda:
                from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

                net.register_comm_hook(None, default_hooks.bf16_compress_hook)
            elif self.info.is_main:
                log.warning("ddp_bf16_compress applies to NCCL on CUDA only; gradients go uncompressed on gloo")
        return net

    # -- the step ---------------------------------------------------------------------------------------------
    def run_step(self, images: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = self.transform(images.to(self.device, non_blocking=True))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        soft = None
        if self.mixup is not None and self.net.training and x.shape[0] % 2 == 0:  # timm mixes pairs: even batches
            x, soft = self.mixup(x, labels)
        amp = self.amp_dtype is not None
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=amp):
            logits = self.net(x)
        if soft is None:
            losses = self.criterion(logits.float(), labels)
        else:  # the mixed soft targets (their smoothing included), per sample
            losses = -(soft * logits.float().log_softmax(1)).sum(1)
        loss = losses.mean()
        if self.update:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:  # fp16 where bf16 is not native: scaled so small gradients do not vanish
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self.step += 1
            self.scheduler.step_update(self.step)
            if self.ema is not None:
                self.ema.update(self.model, step=self.step)
        if self.recorder is not None:
            self.recorder.update(ids.to(self.device, non_blocking=True), losses, logits, labels)
        return loss.detach()

    # -- epochs -----------------------------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        self.loader.set_epoch(self.epoch)
        self.net.train(self.update)
        self.transform.train(self.update)
        total, seen, start = torch.zeros((), device=self.device), 0, time.perf_counter()
        done, point = 0, self.resume_point
        if point is not None:  # continue the interrupted epoch after its last saved batch
            done, total, seen = point["batches"], torch.tensor(point["total"], device=self.device), point["seen"]
        self.resume_point = None
        self.loader.skip(done)
        seen_before, every, n_batches = seen, self.cfg.save_every_steps, len(self.loader)
        # iter() draws the loader's base seed from the global generator: a fresh iterator every epoch without
        # persistent workers, only the first one with them. Persistent workers draw from a copy, so a resumed run
        # (a fresh process) and an uninterrupted one use the generator alike; a mid-epoch resume puts the saved
        # generators back after that draw.
        keep = self._rng_state() if self.loader.persistent_workers else None
        batches = iter(self.loader)
        if point is not None or keep is not None:
            self._set_rng_state(point["rng"] if point is not None else keep)
        bar = tqdm(
            batches,
            desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
            disable=not self.info.is_main,
            initial=done,
            total=n_batches,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            leave=False,
            file=sys.stderr,
        )
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)  # batch of the first non-finite loss
        with torch.set_grad_enabled(self.update):
            for i, (images, labels, ids) in enumerate(bar, start=done):
                loss = self.run_step(images, labels, ids)
                total += loss * len(ids)
                seen += len(ids)
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), i, first_bad)  # no sync
                if i % 20 == 0:
                    self._check_finite(first_bad, i, n_batches)
                    rate = (seen - seen_before) * self.info.world_size / (time.perf_counter() - start)
                    bar.set_postfix(loss=f"{total.item() / seen:.3f}", img_s=f"{rate:.0f}", refresh=False)
                if every and (i + 1) % every == 0 and i + 1 < n_batches:
                    self._check_finite(first_bad, i, n_batches, weights=True)
                    self._save_mid_epoch(i + 1, total, seen)
                if i + 1 < n_batches and self._stop_now(i):
                    self._check_finite(first_bad, i, n_batches, weights=self.update)
                    self._save_mid_epoch(i + 1, total, seen)
                    raise signals.Preempted(self._stopped_at(f"after batch {i + 1} of {n_batches}"))
        self._check_finite(first_bad, n_batches - 1, n_batches, weights=self.update)
        self.loader.skip(0)
        seen_now = seen - seen_before
        if self.recorder is not None:
            self.recorder.end_epoch()
        if self.info.enabled:  # the same collectives, in the same order, on every rank
            if self.update:
                broadcast_buffers(self.model)  # every rank evaluates (and rank 0 saves) the same BN statistics
            sums = all_reduce_sum(torch.stack([total.double(), torch.tensor(float(seen), device=self.device).double()]))
            total, seen = sums[0], int(sums[1].item())  # over all ranks (padding repeats a few samples)
        elapsed = time.perf_counter() - start
        if self.info.enabled:
            seen_now = int(all_reduce_sum(torch.tensor(float(seen_now), device=self.device).double()).item())
        return {
            "train_loss": total.item() / max(seen, 1),
            "images_per_s": seen_now / elapsed,
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_time_s": elapsed,
        }

    def _stop_now(self, i: int) -> bool:
        """Whether a stop was requested (SIGTERM). Under torchrun every rank must stop at the same step, so the
        ranks agree by a max-reduce every 20 steps (where the step already syncs); alone, at every step."""
        if not self.info.enabled:
            return signals.stop_requested()
        if i % 20:
            return False
        flag = torch.tensor(float(signals.stop_requested()), device=self.device)
        return bool(all_reduce_max(flag).item() > 0)

    def _stopped_at(self, where: str) -> str:
        return (
            f"{self.out_dir}: stopped by SIGTERM in epoch {self.epoch + 1} {where} (step {self.step}); last.pt "
            "holds it: rerun the same command to resume"
        )

    def _check_finite(self, first_bad: torch.Tensor, last: int, n_batches: int, *, weights: bool = False) -> None:
        """NonFiniteError naming the epoch and step when a loss of this epoch up to batch `last` (or, with
        `weights`, a weight) is not finite; called before anything is saved, so no checkpoint holds NaN weights."""
        bad = int(first_bad.item())
        if bad >= 0:
            what, batch = "the loss is not finite", bad
        elif weights and not self._weights_finite():
            what, batch = "the weights are not finite", last
        else:
            return
        step = self.step - (last - batch) if self.update else self.step
        raise NonFiniteError(
            f"{self.out_dir}: training diverged in epoch {self.epoch + 1}, step {step} (batch {batch + 1} of "
            f"{n_batches}): {what} at lr {self.cfg.lr:g}; nothing of this epoch was saved; try a lower lr"
        )

    def _weights_finite(self) -> bool:
        floats = [t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()]
        return not floats or bool(torch.stack([torch.isfinite(t).all() for t in floats]).all())

    def fit(self, *, resume: bool = True) -> FitResult:
        """Train (or record) the remaining epochs; the folder is this process's for the whole call (`runlock`)."""
        locked = self._lock()
        try:
            with signals.polling():
                return self._fit(resume=resume)
        except DataError as e:  # a worker's error arrives with its traceback in the message: keep its last line
            raise one_line_worker_error(e) from None
        finally:
            if self._tb:  # its writer thread must not outlive the run (a later fork would inherit its locks)
                self._tb.close()
            self._tb = None
            if locked:
                runlock.release(self.out_dir)

    def _lock(self) -> bool:
        """The main rank takes the folder's lock; every rank learns the outcome, so all stop together."""
        self._on_main(lambda: runlock.acquire(self.out_dir), catch=ConfigError)
        return self.info.is_main

    def _fit(self, *, resume: bool) -> FitResult:
        if self.info.is_main:
            remove_stale_temps(self.out_dir)  # half-written files of a run killed while saving
            if not resume:  # starting over: the old run's epochs must not stay in front of the new ones
                (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)
        resumed = self._resume() if resume else None
        stopped = self.cfg.patience is not None and self.bad_epochs >= self.cfg.patience  # stopped before the kill
        if self.epoch < self.cfg.epochs and not stopped:  # best.pt and last.pt each hold the weights at least: a
            weights = self.model.state_dict()  # disk without room for them stops now, not after an epoch's work
            self._on_main(lambda: checkpoint.ensure_room(self.out_dir, [weights, weights]))
        while self.epoch < self.cfg.epochs and not stopped:
            record = {"epoch": self.epoch + 1, **self.train_epoch()}
            if self.val_set is not None:
                val = evaluate(
                    self.ema.module if self.ema is not None else self.model,
                    self.val_set,
                    class_names=self.classes.names,
                    amp=self.cfg.amp,
                    device=self.device,
                    loader_kwargs=self.loader_kwargs,
                    normalization=self.normalization,
                )
                record |= {"val_mean_top1_error": val["mean_top1_error"], "val_top1_error": val["top1_error"]}
            self.epoch += 1
            improved = self._track_best(record.get("val_mean_top1_error"))
            stopped = self.cfg.patience is not None and self.bad_epochs >= self.cfg.patience
            self._save_epoch(record, improved)
            msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            if self.info.is_main:
                log.info("%s%s", msg, " (early stop)" if stopped else "")
            if self.epoch < self.cfg.epochs and not stopped and self._stop_now(0):
                raise signals.Preempted(self._stopped_at("at its end"))
        return FitResult(self.best, self.epoch, stopped, resumed)

    def _track_best(self, val_error: float | None) -> bool:
        if val_error is None:
            return True  # without validation the latest model is the best we know
        if self.best is None or val_error < self.best:
            self.best, self.bad_epochs = val_error, 0
            return True
        self.bad_epochs += 1
        return False

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "classes": list(self.classes.names),
            "config": self.run_config,
            "run_key": self.run_key,
            "model_name": self.run_config.get("model", {}).get("name"),
            "normalization": {"mean": list(self.normalization[0]), "std": list(self.normalization[1])},
            "epoch": self.epoch,
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,  # with the step: the schedule's position, whatever the world
            "best_val_error": self.best,
            "bad_epochs": self.bad_epochs,
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "history": list(self.history),
        }
        if self.recorder is not None:
            state["recorder"] = self.recorder.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def _rng_state(self) -> dict:
        return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if self.on_cuda else None}

    def _set_rng_state(self, rng: dict) -> None:
        torch.set_rng_state(rng["cpu"].cpu())
        if self.on_cuda and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)

    def _save_epoch(self, record: dict, improved: bool) -> None:
        """best.pt (when improved), last.pt and metrics.jsonl (rebuilt from the history) are all written to
        temporaries first and then renamed, in that order: a full disk changes none of them, and a kill between two
        renames leaves a last.pt of the previous epoch, so the rerun redoes this epoch and writes all three again."""
        record = {k: v.item() if hasattr(v, "item") else v for k, v in record.items()}  # plain numbers
        self.history.append(record)
        rngs = all_gather_objects(self._rng_state())  # every rank's generators, so a resumed run flips the same
        self._on_main(lambda: self._write_epoch(rngs, improved))

    def _write_epoch(self, rngs: list, improved: bool) -> None:
        state = self.state_dict() | {"rng_ranks": rngs}
        files = [(self.out_dir / "last.pt", state)]
        if improved:
            drop = ("optimizer", "recorder", "rng", "rng_ranks", "history", "ema")
            best = {k: v for k, v in state.items() if k not in drop}
            if self.ema is not None:  # the averaged weights are the ones validated, so the ones shipped
                best["model"] = state["ema"]
            files.insert(0, (self.out_dir / "best.pt", best))
        checkpoint.ensure_room(self.out_dir, [s for _, s in files])
        metrics, summary = self.out_dir / "metrics.jsonl", self.out_dir / "summary.csv"
        with atomic_paths(*(p for p, _ in files), metrics, summary) as tmps:
            for tmp, (_, s) in zip(tmps, files, strict=False):
                checkpoint.write(tmp, s)
            tmps[-2].write_text("".join(json.dumps(r) + "\n" for r in self.history))
            tmps[-1].write_text(summary_csv(self.history))
        self._tensorboard(self.history[-1])

    def _tensorboard(self, record: dict) -> None:
        """The epoch's numbers as TensorBoard scalars in OUT/tb, where the tensorboard package is installed."""
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._tb = False
                return
            self._tb = SummaryWriter(str(self.out_dir / "tb"))
        if self._tb:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, record["epoch"])
            self._tb.flush()

    def _on_main(self, work, *, catch: type[Exception] = DiskFullError) -> None:
        """`work()` on the main rank; then every rank learns whether it failed with `catch` (a full disk, a held
        folder), so all stop together with its line instead of the others waiting forever in the next collective.
        A barrier for the rest."""
        error = None
        if self.info.is_main:
            try:
                work()
            except catch as e:
                error = e
        failed = all_gather_objects(None if error is None else str(error))[0]
        if error is not None:
            raise error
        if failed is not None:
            raise catch(failed)

    def _save_mid_epoch(self, batches: int, total: torch.Tensor, seen: int) -> None:
        """last.pt inside an epoch: the weights after `batches` batches, each rank's running loss and generators,
        and the epoch's recorded losses so far. best.pt and metrics.jsonl only change at the end of an epoch."""
        pending = self.recorder.pending_state() if self.recorder is not None else None
        ranks = all_gather_objects({**self._rng_state(), "total": float(total.item()), "seen": seen})
        rngs = [{"cpu": r["cpu"], "cuda": r["cuda"]} for r in ranks]
        totals, seen_by_rank = [r["total"] for r in ranks], [r["seen"] for r in ranks]
        progress = {"batches": batches, "world_size": self.info.world_size, "totals": totals, "seen": seen_by_rank}
        state = {"rng_ranks": rngs, "mid_epoch": progress}
        if pending is not None:
            state["recorder_pending"] = pending
        self._on_main(lambda: checkpoint.save(self.out_dir / "last.pt", self.state_dict() | state))

    def _resume(self) -> int | None:
        path = self.out_dir / "last.pt"
        if not path.is_file():
            return None
        state = checkpoint.load(path, map_location=self.device)
        checkpoint.check_same_classes(state, self.classes, path=str(path), source="the training data")
        saved = state.get("run_key")
        if saved is not None and self.run_key is not None and saved != self.run_key:
            diff = sorted(k for k in self.run_key.keys() | saved.keys() if saved.get(k) != self.run_key.get(k))
            raise ConfigError(
                f"{path}: holds a run with other {', '.join(diff)}; rerun with the same settings, "
                "use another --out, or start over (--no-resume; `run`: remove the folder)"
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        saved_spe = int(state.get("steps_per_epoch") or self.steps_per_epoch)
        if saved_spe != self.steps_per_epoch:  # another world size: the same share of the schedule, not the same step
            self.step = round(self.step * self.steps_per_epoch / saved_spe)
            if self.info.is_main:
                log.info(
                    "%s: %d steps an epoch then, %d now (another world size): the schedule resumes at step %d",
                    path,
                    saved_spe,
                    self.steps_per_epoch,
                    self.step,
                )
        self.best, self.bad_epochs = state["best_val_error"], int(state["bad_epochs"])
        self.scheduler.step_update(self.step)
        rngs = state.get("rng_ranks")
        if rngs is not None and len(rngs) == self.info.world_size:
            self._set_rng_state(rngs[self.info.rank])
        else:
            torch.set_rng_state(state["rng"].cpu())
            if rngs is not None and self.info.is_main:
                log.warning(
                    "%s was saved by %d ranks, resuming with %d: random flips differ from an uninterrupted run",
                    path,
                    len(rngs),
                    self.info.world_size,
                )
        if "history" in state:  # drop a metrics line the kill cut short, add one it kept from being written
            self.history = list(state["history"])
            if self.info.is_main:
                write_text(self.out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        if self.recorder is not None and "recorder" in state:
            self.recorder.load_state_dict({k: v.cpu() for k, v in state["recorder"].items()})
        mid = state.get("mid_epoch")
        if mid is not None and mid["world_size"] == self.info.world_size:
            r = self.info.rank
            self.resume_point = {
                "batches": int(mid["batches"]),
                "total": mid["totals"][r],
                "seen": int(mid["seen"][r]),
                "rng": rngs[r],
            }
            if self.recorder is not None and self.info.is_main and "recorder_pending" in state:
                self.recorder.load_pending(state["recorder_pending"], self.device)
        elif mid is not None and self.info.is_main:  # other shards: this epoch's order restarts, the weights stay
            log.warning(
                "%s was saved inside epoch %d by %d ranks; with %d the epoch's data starts over",
                path,
                self.epoch + 1,
                mid["world_size"],
                self.info.world_size,
            )
        if self.info.is_main:
            where = f" + {mid['batches']} batches" if self.resume_point else ""
            log.info("resumed from %s at epoch %d%s (step %d)", path, self.epoch, where, self.step)
        return self.epoch


SUMMARY_COLUMNS = ("epoch", "train_loss", "val_mean_top1_error", "val_top1_error", "lr", "images_per_s")


def summary_csv(history: list[dict]) -> str:
    """timm's `summary.csv`: one row per epoch, the columns a spreadsheet or a plot script reads."""
    lines = [",".join(SUMMARY_COLUMNS)]
    for r in history:
        lines.append(",".join("" if r.get(c) is None else f"{r[c]:.6g}" for c in SUMMARY_COLUMNS))
    return "\n".join(lines) + "\n"


CHANNELS_LAST_OFF = ("resnest",)  # timm's RTX 3090 CSVs: resnest101e trains at 254 img/s NCHW, 96 NHWC


def use_channels_last(setting: bool | None, model_name: str) -> bool:
    """`train.channels_last` when set, else by architecture: on, except for the families where NHWC measured
    slower (ResNeSt's split attention)."""
    if setting is not None:
        return bool(setting)
    return not any(model_name.startswith(f) for f in CHANNELS_LAST_OFF)


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU computes it natively (Ampere and later), else fp16 (with a GradScaler)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    """Per-rank offset so that flips differ across ranks while the run stays reproducible."""
    s = seed + get_info().rank
    torch.manual_seed(s)
    np.random.seed(s % 2**32)

"""Per-sample loss recording from the training step's own forward pass (no second forward).

The step hands its per-sample losses and ids to `update`, which only appends detached device tensors (no host sync
in the hot path). At the end of an epoch they are gathered from every rank and folded into per-id sums and counts,
each id at most once per epoch, so the padding DistributedSampler adds never counts a sample twice.
"""

from __future__ import annotations

import numpy as np
import torch

from lossguided.engine.distributed import all_gather_tensors


class LossRecorder:
    """Running per-id average of the training loss. `ids`: every id of the training set [N]."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.sort(np.asarray(ids, dtype=np.int64))
        self.sums = np.zeros(len(self.ids), dtype=np.float64)
        self.counts = np.zeros(len(self.ids), dtype=np.int64)
        self.preds = np.full(len(self.ids), -1, dtype=np.int64)  # the model's class for each sample, last epoch
        self._ids: list[torch.Tensor] = []
        self._losses: list[torch.Tensor] = []
        self._preds: list[torch.Tensor] = []

    def update(self, ids: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor) -> None:
        """ids [B], per-sample losses [B] and logits [B, K] of one step (the argmax is kept, not the logits)."""
        self._ids.append(ids.detach())
        self._losses.append(losses.detach().float())
        self._preds.append(logits.detach().argmax(1))

    def end_epoch(self) -> None:
        """Gather this epoch's records from all ranks and add them; every id must appear."""
        if not self._ids:
            return
        ids = torch.cat(self._ids)
        losses = torch.cat(self._losses)
        preds = torch.cat(self._preds)
        self._ids, self._losses, self._preds = [], [], []
        ids = torch.cat(all_gather_tensors(ids)).cpu().numpy()
        losses = torch.cat(all_gather_tensors(losses)).cpu().numpy().astype(np.float64)
        preds = torch.cat(all_gather_tensors(preds)).cpu().numpy()
        ids, first = np.unique(ids, return_index=True)  # padding repeats a few samples: keep one record each
        pos = np.searchsorted(self.ids, ids)
        pos = pos.clip(0, len(self.ids) - 1)
        if not np.array_equal(self.ids[pos], ids):
            raise RuntimeError("recorded ids that are not in the training set")
        self.sums[pos] += losses[first]
        self.counts[pos] += 1
        self.preds[pos] = preds[first]

    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids [N], mean loss [N] float32, n_records [N], last prediction [N]); a sample never recorded is an
        error, not a zero."""
        missing = self.counts == 0
        if missing.any():
            raise RuntimeError(f"{missing.sum()} samples were never recorded, e.g. ids {self.ids[missing][:5]}")
        return self.ids, (self.sums / self.counts).astype(np.float32), self.counts.copy(), self.preds.copy()

    def pending_state(self) -> dict[str, torch.Tensor]:
        """This epoch's records so far from every rank (a collective), for a mid-epoch checkpoint."""
        parts = (self._ids, self._losses, self._preds)
        return {name: torch.cat(all_gather_tensors(torch.cat(p) if p else torch.zeros(0, dtype=dtype))).cpu()
                for name, p, dtype in zip(("ids", "losses", "preds"), parts, (torch.int64, torch.float32, torch.int64),
                                          strict=True)}  # fmt: skip

    def load_pending(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        """Put an interrupted epoch's records back (on one rank: `end_epoch` gathers and de-duplicates)."""
        self._ids = [state["ids"].to(device)]
        self._losses = [state["losses"].to(device)]
        self._preds = [state["preds"].to(device)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"ids": torch.from_numpy(self.ids), "sums": torch.from_numpy(self.sums),
                "counts": torch.from_numpy(self.counts), "preds": torch.from_numpy(self.preds)}  # fmt: skip

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not np.array_equal(state["ids"].numpy(), self.ids):
            raise ValueError("recorder state belongs to another training set")
        self.sums = state["sums"].numpy().copy()
        self.counts = state["counts"].numpy().copy()
        self.preds = state["preds"].numpy().copy()

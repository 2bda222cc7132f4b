"""Per-sample loss recording from the training step's own forward pass (no second forward).

The step hands its per-sample losses, ids and logits to `update`, which only appends small detached device tensors
(no host sync in the hot path): the loss, the argmax, the probability of the given label and the top-5 classes with
their probabilities (from one `topk` and one `logsumexp` over the batch's logits, never a [N, K] table). At the end of
an epoch they are gathered from every rank and folded into per-id values, each id at most once per epoch, so the
padding DistributedSampler adds never counts a sample twice. Only when asked (`pred_probs=K`, for cleanlab) does it
also keep each sample's whole softmax [K] in float16, written at the end of each epoch into an [N, K] array the
caller owns (a memmap: `lossguided losses --pred-probs`); an epoch's [N / world, K] of them wait on the device.
"""

from __future__ import annotations

import numpy as np
import torch

from lossguided.distributed import all_gather_tensors

TOP_K = 5
_FIELDS = ("ids", "losses", "preds", "p_label", "top_classes", "top_probs")
_DTYPES = (torch.int64, torch.float32, torch.int64, torch.float32, torch.int32, torch.float16)


class LossRecorder:
    """Running per-id average of the training loss, plus the last epoch's prediction, probability of the given label
    and top-5 (class, probability). `ids`: every id of the training set [N].

    `pred_probs`: K to also keep each sample's softmax over the K classes (float16, last epoch), 0 not to (no [B, K]
    copy per step). Every rank must pass the same K (the epoch's gather is a collective); they are written into
    `pred_probs_out` [N, K] (rows in sorted-id order, the loss table's), on a rank that passes one."""

    def __init__(self, ids: np.ndarray, *, pred_probs: int = 0, pred_probs_out: np.ndarray | None = None) -> None:
        if pred_probs < 0 or (pred_probs_out is not None and pred_probs_out.shape != (len(ids), pred_probs)):
            shape = None if pred_probs_out is None else pred_probs_out.shape
            raise ValueError(f"pred_probs_out must be [N, K] = [{len(ids)}, {pred_probs}], got {shape}")
        self.pred_probs, self.pred_probs_out = pred_probs, pred_probs_out
        self._fields = _FIELDS + (("probs",) if pred_probs else ())
        self._dtypes = _DTYPES + ((torch.float16,) if pred_probs else ())
        self.ids = np.sort(np.asarray(ids, dtype=np.int64))
        n = len(self.ids)
        self.sums = np.zeros(n, dtype=np.float64)
        self.counts = np.zeros(n, dtype=np.int64)
        self.preds = np.full(n, -1, dtype=np.int64)  # the model's class for each sample, last epoch
        self.p_label = np.full(n, np.nan, dtype=np.float32)  # probability of the given label, last epoch
        self.top_classes = np.full((n, TOP_K), -1, dtype=np.int32)
        self.top_probs = np.zeros((n, TOP_K), dtype=np.float16)
        self._pending: dict[str, list[torch.Tensor]] = {f: [] for f in self._fields}

    def update(
        self, ids: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None = None
    ) -> None:
        """ids [B], per-sample losses [B] and logits [B, K] of one step. Without `labels`, the probability of the
        given label is exp(-loss), exact for plain cross-entropy (the recording stage trains without smoothing)."""
        logits = logits.detach().float()
        losses = losses.detach().float()
        top, classes = logits.topk(min(TOP_K, logits.shape[1]), dim=1)
        lse = logits.logsumexp(1, keepdim=True)
        if labels is not None:
            p_label = (logits.gather(1, labels.view(-1, 1).to(logits.device)) - lse).exp().squeeze(1)
        else:
            p_label = (-losses).exp()
        if top.shape[1] < TOP_K:  # fewer classes than TOP_K: pad with class -1, probability 0
            pad = TOP_K - top.shape[1]
            top = torch.cat([top, torch.full_like(top[:, :1], -torch.inf).expand(-1, pad)], 1)
            classes = torch.cat([classes, torch.full_like(classes[:, :1], -1).expand(-1, pad)], 1)
        values = (ids.detach(), losses, logits.argmax(1), p_label, classes.int(), (top - lse).exp().half())
        if self.pred_probs:
            values += ((logits - lse).exp().half(),)
        for name, value in zip(self._fields, values, strict=True):
            self._pending[name].append(value)

    @property
    def _ids(self) -> list[torch.Tensor]:  # this epoch's pending ids per step (tests peek at them)
        return self._pending["ids"]

    @property
    def _losses(self) -> list[torch.Tensor]:
        return self._pending["losses"]

    def _gathered(self) -> dict[str, torch.Tensor]:
        """This epoch's records so far from every rank, concatenated (a collective); [B*, ...] CPU tensors."""
        out = {}
        for name, dtype in zip(self._fields, self._dtypes, strict=True):
            width = TOP_K if name.startswith("top") else self.pred_probs if name == "probs" else None
            parts = self._pending[name]
            local = torch.cat(parts) if parts else torch.zeros((0, width) if width else 0, dtype=dtype)
            flat = torch.cat(all_gather_tensors(local.reshape(-1))).cpu()
            out[name] = flat.view(-1, width) if width else flat
        return out

    def end_epoch(self) -> None:
        """Gather this epoch's records from all ranks and add them; every id must appear."""
        if not self._pending["ids"]:
            return
        rec = self._gathered()
        self._pending = {f: [] for f in self._fields}
        ids, first = np.unique(rec["ids"].numpy(), return_index=True)  # padding repeats a few samples: keep one each
        pos = np.searchsorted(self.ids, ids).clip(0, len(self.ids) - 1)
        if not np.array_equal(self.ids[pos], ids):
            raise RuntimeError("recorded ids that are not in the training set")
        self.sums[pos] += rec["losses"].numpy().astype(np.float64)[first]
        self.counts[pos] += 1
        self.preds[pos] = rec["preds"].numpy()[first]
        self.p_label[pos] = rec["p_label"].numpy()[first]
        self.top_classes[pos] = rec["top_classes"].numpy()[first]
        self.top_probs[pos] = rec["top_probs"].numpy()[first]
        if self.pred_probs_out is not None:
            self.pred_probs_out[pos] = rec["probs"].numpy()[first]

    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids [N], mean loss [N] float32, n_records [N], last prediction [N]); a sample never recorded is an
        error, not a zero."""
        missing = self.counts == 0
        if missing.any():
            raise RuntimeError(f"{missing.sum()} samples were never recorded, e.g. ids {self.ids[missing][:5]}")
        return self.ids, (self.sums / self.counts).astype(np.float32), self.counts.copy(), self.preds.copy()

    def probabilities(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p_label [N] float32, top_classes [N, 5] int32, top_probs [N, 5] float16) of the last recorded epoch, in
        the ids' order; `LossTable.from_recording(manifest, *rec.table(), *rec.probabilities())` keeps them."""
        return self.p_label.copy(), self.top_classes.copy(), self.top_probs.copy()

    def pending_state(self) -> dict[str, torch.Tensor]:
        """This epoch's records so far from every rank (a collective), for a mid-epoch checkpoint."""
        return self._gathered()

    def load_pending(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        """Put an interrupted epoch's records back (on one rank: `end_epoch` gathers and de-duplicates). A checkpoint
        from before the probabilities were recorded gets placeholders (the next epoch records them)."""
        n = len(state["ids"])
        for name, dtype in zip(self._fields, self._dtypes, strict=True):
            if name in state:
                value = state[name]
            elif name == "probs":  # recorded without them: NaN rows, which the writer refuses
                value = torch.full((n, self.pred_probs), torch.nan, dtype=dtype)
            elif name.startswith("top"):
                value = torch.full((n, TOP_K), -1 if name == "top_classes" else 0, dtype=dtype)
            else:
                value = torch.full((n,), torch.nan, dtype=dtype)
            self._pending[name] = [value.to(device)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "ids": torch.from_numpy(self.ids),
            "sums": torch.from_numpy(self.sums),
            "counts": torch.from_numpy(self.counts),
            "preds": torch.from_numpy(self.preds),
            "p_label": torch.from_numpy(self.p_label),
            "top_classes": torch.from_numpy(self.top_classes),
            "top_probs": torch.from_numpy(self.top_probs),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not np.array_equal(state["ids"].numpy(), self.ids):
            raise ValueError("recorder state belongs to another training set")
        self.sums = state["sums"].numpy().copy()
        self.counts = state["counts"].numpy().copy()
        self.preds = state["preds"].numpy().copy()
        for name in ("p_label", "top_classes", "top_probs"):  # absent from checkpoints written before they existed
            if name in state:
                setattr(self, name, state[name].numpy().copy())

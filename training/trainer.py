"""Training: settings, batches, the truncated-BPTT loop, early stopping on validation NDCG@10.

Each user's training history (data.split) is unrolled block by block: block b feeds events
bT+1..(b+1)T from the state left by block b-1 (detached between blocks: truncated back-propagation
per block) and every position predicts the next event. All users of a batch start at the initial
state with pos 0, so the chunk schedule is anchored at each user's first event, exactly as in the
service: the state after a user's n-th event here is the state the service holds after it.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from data.dataset import PAD_ID, SequenceDataset
from data.split import training_item_counts, training_sequences
from model.config import ModelConfig
from model.network import PopularityRecommender, SequentialRecommender, build_model
from training.batching import length_sorted_batches, pad_right
from training import distributed
from training.device import (autocast, compile_steps, eager_steps, resolve_device, to_device,
                             uncompile)
from training.evaluation import evaluate_protocols
from training.loss import linear_cross_entropy
from training.lr_schedule import LearningRate
from training.resume import data_fingerprint, load_state, save_state
from training.settings import TrainSettings

EARLY_STOPPING_METRIC = "ndcg@10"  # on the validation targets


@dataclass
class TrainReport:
    """What happened during training, and the final evaluation of the kept weights."""

    metrics: dict[str, dict[str, float]]  # {"valid": {...}, "test": {...}} of the restored best model
    # the same with the user's history masked out of the ranking (the published tables' protocol)
    seen_excluded: dict[str, dict[str, float]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per validation
    best_epoch: int = 0  # epoch whose weights were kept (0: no epoch run, e.g. popularity)
    epochs: int = 0  # epochs run (the last one possibly cut short)
    steps: int = 0  # optimizer steps
    seconds_per_epoch: float = 0.0  # mean wall time of the training pass of one epoch (no eval)
    train_seconds: float = 0.0  # total wall time including per-epoch validation
    parameters: int = 0  # trained parameters
    stopped: str = "completed"  # completed | early_stopping | max_seconds

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def count_parameters(model: SequentialRecommender) -> int:
    """Trained weights; the popularity model has none (only counts)."""
    if isinstance(model, PopularityRecommender):
        return 0
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _rows(state: Any, count: int) -> Any:
    """The first `count` users of a batched state."""
    return type(state)(*(f[:count] for f in state))


def _detached(state: Any) -> Any:
    return type(state)(*(f.detach() for f in state))


class EpochResult(NamedTuple):
    """What train_epoch did."""

    loss: float  # mean loss per target
    targets: int  # targets seen, over all ranks
    stopped: bool  # cut short: out of time, or on_step said so
    batches: int  # batches completed (one cut by on_step mid-batch does not count)


def train_epoch(model: SequentialRecommender, optimizer: torch.optim.Optimizer,
                sequences: list[np.ndarray], batches: list[np.ndarray], settings: TrainSettings,
                bar: tqdm, deadline: float | None,
                cluster: distributed.Cluster = distributed.SINGLE,
                on_step: Callable[[], bool] | None = None,
                fused: bool | None = None) -> EpochResult:
    """One pass over the batches. Returns (mean loss per target, targets seen, stopped early: out
    of time, or told to by on_step, which runs after every optimizer step: mid-epoch validation;
    batches completed).

    model: the network, or its DDP wrapper when cluster.parallel; it runs on its parameters'
    device. batches: the global batches, sharded here by cluster.rank (training/distributed.py).
    fused: the output layer and the loss in slices (training/loss.py); None: where it pays, on the
    CPU in fp32 and one process (DDP must see the model's own forward to synchronise gradients).
    Per batch, the padded users go to the device in one copy; per block, nothing is read back on
    the host (target counts come from the host-side lengths, the loss is summed on the device).
    """
    core = distributed.unwrap(model)
    core.train()
    device = next(core.parameters()).device
    block = core.block_size
    if fused is None:
        fused = model is core and device.type == "cpu" and settings.precision == "fp32"
    total_loss = torch.zeros((), device=device)  # summed on the device: read once per epoch
    local_targets, total_targets = 0, 0
    for done, rows in enumerate(batches):
        lengths = np.array([len(sequences[r]) for r in rows], dtype=np.int64)
        width = int(lengths.max()) - 1  # input positions of the longest user of the global batch
        mine = rows[cluster.rank::cluster.world]
        # A rank without users in this batch keeps one all-padding row (no target, no loss).
        padded = to_device(pad_right([sequences[r] for r in mine] or [np.zeros(0, np.int64)],
                                     length=width + 1), device)  # [b, L]
        inputs, targets = padded[:, :-1], padded[:, 1:]  # x_t predicts x_{t+1}: [b, L-1] each
        # Events with a next event to predict; rows come longest first (length_sorted_batches).
        predicting = lengths[cluster.rank::cluster.world] - 1
        state = core.initial_state(padded.shape[0], device=device)
        for start in range(0, width, block):
            # targets in this block over all ranks (the loss divisor) and on this rank
            count = int(np.clip(lengths - 1 - start, 0, block).sum())
            local = int(np.clip(predicting - start, 0, block).sum())
            active = max(int((predicting > start).sum()), 1)  # rows with a target here: a prefix
            state = _rows(state, active)
            x = inputs[:active, start: start + block]  # [a, t]
            y = targets[:active, start: start + block]  # [a, t], 0 where the row has ended
            if settings.compile == "reduce-overhead":  # a new step for the CUDA graph trees
                torch.compiler.cudagraph_mark_step_begin()
            candidates, ignore = None, PAD_ID
            if settings.sampled_softmax:
                candidates, y = sampled_candidates(y, core.config.num_items,
                                                   settings.sampled_softmax)
                ignore = IGNORE  # y indexes candidates
            if fused:
                features, state = core.run(x, state, first_pos=start)  # [a, t, F]
                weight, bias = core.output_layer()
                if candidates is not None:
                    weight, bias = weight[candidates], bias[candidates]
                projected = core.project(features)  # [a, t, d]
                summed = linear_cross_entropy(projected.reshape(-1, projected.shape[-1]),
                                              weight, bias, y.reshape(-1), ignore)
            else:
                with autocast(device, settings.precision):
                    # [a, t, I], or [a, t, C] with candidates
                    logits, state = model(x, state, first_pos=start, candidates=candidates)
                    summed = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             y.reshape(-1), ignore_index=ignore, reduction="sum")
            # the mean over the block's targets over all ranks, or the sum over them / the targets
            # of a full block (settings.loss_weighting); DDP's mean over ranks undoes the factor
            loss = summed * (cluster.world / (count if settings.loss_weighting == "step"
                                              else settings.batch_size * cluster.world * block))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(core.parameters(), settings.clip_norm)
            optimizer.step()
            state = _detached(state)  # truncated back-propagation: the next block starts here
            total_loss += summed.detach()
            local_targets += local
            total_targets += count
            bar.update(count)
            if on_step is not None and on_step():
                return EpochResult(float(total_loss) / max(local_targets, 1), total_targets, True,
                                   done)
        if not bar.disable:  # one read-back per batch, only to show the running loss
            bar.set_postfix(loss=f"{float(total_loss) / max(local_targets, 1):.4f}",
                            refresh=False)
        late = deadline is not None and time.perf_counter() > deadline
        if deadline is not None and distributed.any_rank(late, cluster, device):
            return EpochResult(float(total_loss) / max(local_targets, 1), total_targets, True,
                               done + 1)
    return EpochResult(float(total_loss) / max(local_targets, 1), total_targets, False,
                       len(batches))


IGNORE = -100  # the target index of padding positions under the sampled softmax


def sampled_candidates(targets: Tensor, num_items: int, negatives: int) -> tuple[Tensor, Tensor]:
    """The sampled softmax's items for one block, and each target's index among them.

    targets: [a, t] item ids, 0 = padding. Candidates: the block's distinct targets (each one is a
    negative for the other positions, so frequent items are drawn as negatives about as often as
    they occur) and `negatives` items drawn uniformly from 1..I-1 with the global generator,
    sorted and distinct: [C]. Returns (candidates, index [a, t] into them; IGNORE at padding).
    No log-Q correction: the model is trained on this biased softmax and evaluated on all items.
    """
    drawn = torch.randint(1, num_items, (negatives,), device=targets.device)
    candidates = torch.unique(torch.cat([targets[targets != PAD_ID], drawn]))  # sorted
    index = torch.searchsorted(candidates, targets.contiguous())
    return candidates, torch.where(targets == PAD_ID, torch.full_like(index, IGNORE), index)


def _fit_popularity(model: PopularityRecommender, dataset: SequenceDataset,
                    settings: TrainSettings, cluster: distributed.Cluster) -> TrainReport:
    began = time.perf_counter()
    model.fit(torch.from_numpy(training_item_counts(dataset)).to(model.log_counts.device))
    fit_seconds = time.perf_counter() - began
    both = (evaluate_protocols(model, dataset, batch_size=settings.eval_batch_size)
            if cluster.is_main else {"all": {}, "seen_excluded": {}})
    return TrainReport(metrics=both["all"], seen_excluded=both["seen_excluded"],
                       seconds_per_epoch=fit_seconds,
                       train_seconds=time.perf_counter() - began, parameters=0)


def train_model(dataset: SequenceDataset, config: ModelConfig, settings: TrainSettings,
                progress: bool = True,
                state_file: str | Path | None = None) -> tuple[SequentialRecommender, TrainReport]:
    """Build the model of `config`, train it on `dataset`'s training histories, keep the epoch with
    the best validation NDCG@10, and evaluate it (leave-one-out, full ranking).

    Runs on settings.device; under torchrun (WORLD_SIZE > 1) as one rank of a data-parallel job
    (training/distributed.py), where only rank 0 evaluates: the other ranks' report has no metrics.
    state_file: save the training state there after every epoch, and resume from it when it
    exists (training/resume.py); not under torchrun, whose ranks each have their own RNG.
    Returns (model in eval mode with the best weights, on the training device; report).
    """
    if config.num_items != dataset.num_items:
        raise ValueError(f"num_items: config has {config.num_items}, data set has "
                         f"{dataset.num_items} (including padding)")
    cluster = distributed.from_environment()
    if state_file is not None and cluster.world > 1:
        raise ValueError("resume: a training state is kept by single-process training only")
    device = distributed.process_device(cluster, resolve_device(settings.device))
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    if device.type == "cuda" and settings.deterministic:
        # cuBLAS needs this to be deterministic (PyTorch's reproducibility notes)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(settings.deterministic)
    opened = distributed.join(cluster, device)
    try:
        model = build_model(config).to(device)
        torch.manual_seed(settings.seed + cluster.rank)  # dropout differs between ranks
        if isinstance(model, PopularityRecommender):
            report = _fit_popularity(model, dataset, settings, cluster)
            return model.eval(), report
        report = _train_network(model, dataset, settings, rng, progress and cluster.is_main,
                                cluster, None if state_file is None else Path(state_file))
        return model.eval(), report
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        distributed.leave(opened)


def training_windows(model: SequentialRecommender, dataset: SequenceDataset) -> list[np.ndarray]:
    """What each user trains on: the whole training history for the recurrent models (read from
    the first event, as served); the last input_window + 1 events of it for a window model."""
    sequences = training_sequences(dataset)
    window = model.input_window
    return sequences if window is None else [s[-(window + 1):] for s in sequences]


def make_optimizer(model: SequentialRecommender, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay on the weight matrices and embeddings, none on biases and
    norms) or Adam (L2 penalty on everything)."""
    if settings.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings.lr,
                                weight_decay=settings.weight_decay)
    decayed = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    plain = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decayed, "weight_decay": settings.weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=settings.lr)


class _Selection:
    """Early stopping: validates, keeps the best weights, counts validations without a gain."""

    def __init__(self, model: SequentialRecommender, dataset: SequenceDataset,
                 settings: TrainSettings, progress: bool) -> None:
        self.model, self.dataset, self.settings, self.progress = model, dataset, settings, progress
        self.best_score, self.best_epoch, self.best_weights = -1.0, 0, None
        self.without_gain = 0
        self.history: list[dict[str, Any]] = []

    def validate(self, epoch: int, step: int, record: dict[str, Any]) -> bool:
        """Validate now; returns True when patience has run out."""
        both = evaluate_protocols(self.model, self.dataset,
                                  batch_size=self.settings.eval_batch_size, splits=("valid",))
        self.model.train()
        valid = both["all"]["valid"]
        score = valid[EARLY_STOPPING_METRIC]
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.without_gain = score, epoch, 0
            self.best_weights = {k: v.detach().clone()
                                 for k, v in self.model.state_dict().items()}
        else:
            self.without_gain += 1
        self.history.append({"epoch": epoch, "step": step, **record, "valid": valid,
                             "valid_seen_excluded": both["seen_excluded"]["valid"],
                             "best": improved})
        if self.progress:
            tqdm.write(f"epoch {epoch} step {step}: valid {EARLY_STOPPING_METRIC} {score:.4f}"
                       f"{'  (best)' if improved else ''}")
        return bool(self.settings.patience and self.without_gain >= self.settings.patience)

    def snapshot(self) -> dict[str, Any]:
        """What restore() needs to go on as if never stopped."""
        return {"best_score": self.best_score, "best_epoch": self.best_epoch,
                "best_weights": self.best_weights, "without_gain": self.without_gain,
                "history": list(self.history)}

    def restore(self, saved: dict[str, Any]) -> None:
        self.best_score, self.best_epoch = saved["best_score"], saved["best_epoch"]
        self.best_weights, self.without_gain = saved["best_weights"], saved["without_gain"]
        self.history = list(saved["history"])


def _train_network(model: SequentialRecommender, dataset: SequenceDataset,
                   settings: TrainSettings, rng: np.random.Generator,
                   progress: bool, cluster: distributed.Cluster = distributed.SINGLE,
                   state_file: Path | None = None) -> TrainReport:
    """Train with early stopping. Under DDP only rank 0 validates; its stop decisions are
    broadcast (distributed.from_main), so every rank stops at the same step.

    state_file: where to save the training state after every epoch, and to resume from when it
    exists (training/resume.py).
    """
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, settings)
    selection = _Selection(model, dataset, settings, progress)
    sequences = training_windows(model, dataset)
    fingerprint = data_fingerprint(sequences)
    epoch_seconds: list[float] = []
    steps, first_epoch, skip, spent = 0, 1, 0, 0.0
    saved = None
    if state_file is not None and Path(state_file).is_file():
        saved = load_state(state_file, model.config, settings, fingerprint)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        selection.restore(saved["selection"])
        steps, spent, epoch_seconds = saved["steps"], saved["seconds"], list(saved["epoch_seconds"])
        torch.set_rng_state(saved["torch_rng"])
        if saved.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        if saved["batches_done"] < saved["batches"]:  # cut short: finish that epoch's batches
            rng.bit_generator.state = saved["rng_epoch_start"]
            first_epoch, skip = saved["epoch"], saved["batches_done"]
        else:
            rng.bit_generator.state = saved["rng"]
            first_epoch = saved["epoch"] + 1
    began = time.perf_counter() - spent  # the budget and the rate count the resumed parts too
    deadline = None if settings.max_seconds is None else began + settings.max_seconds
    trained = distributed.wrap(compile_steps(model, settings.compile), cluster, device)
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    trainable = np.flatnonzero(lengths >= 2)  # a user needs two events for one prediction
    if trainable.size == 0:
        raise ValueError("dataset: no user has two training events to learn from")
    targets_per_epoch = int((lengths[trainable] - 1).sum())
    # one optimizer step per block of every batch: the schedule's horizon in steps
    steps_per_epoch = sum(-(-(int(lengths[trainable][rows].max()) - 1) // model.block_size)
                          for rows in length_sorted_batches(lengths[trainable],
                                                            settings.batch_size * cluster.world))
    rate = LearningRate(optimizer, settings, total_steps=steps_per_epoch * settings.epochs,
                        began=began, use_clock=cluster.world == 1)
    rate.update(steps)

    stopped, epoch = "completed", saved["epoch"] if saved else 0
    # a run that stopped early stays stopped unless it is resumed with more patience
    patience_out = bool(saved and saved["stopped"] == "early_stopping" and settings.patience
                        and selection.without_gain >= settings.patience)
    if patience_out or (saved and settings.max_seconds is not None
                        and spent >= settings.max_seconds):
        stopped = "early_stopping" if patience_out else "max_seconds"
        first_epoch = settings.epochs + 1  # nothing left to train: evaluate the kept weights

    def validate(record: dict[str, Any]) -> bool:
        """Rank 0 validates (with the eager steps); every rank follows its decision."""
        out = False
        if cluster.is_main:
            with eager_steps(model):
                out = selection.validate(epoch, steps, record)
        return bool(distributed.from_main([float(out)], cluster, device)[0])

    def on_step() -> bool:
        nonlocal steps, patience_out
        steps += 1
        rate.update(steps)  # the rate of the next step
        if settings.eval_every and steps % settings.eval_every == 0:
            patience_out = validate({"complete": False, "lr": settings.lr * rate.last_factor})
        return patience_out

    for epoch in range(first_epoch, settings.epochs + 1):
        # the same global batches on every rank; each trains its shard of every batch
        rng_epoch_start = rng.bit_generator.state
        batches = [trainable[b] for b in length_sorted_batches(
            lengths[trainable], settings.batch_size * cluster.world, rng)]
        first, skip = skip, 0
        epoch_began = time.perf_counter()
        with tqdm(total=targets_per_epoch, desc=f"epoch {epoch}/{settings.epochs}", unit="ev",
                  unit_scale=True, disable=not progress, leave=False, dynamic_ncols=True) as bar:
            loss, seen, cut_short, done = train_epoch(trained, optimizer, sequences,
                                                      batches[first:], settings, bar, deadline,
                                                      cluster, on_step)
        done += first
        cut_short = done < len(batches)
        seconds = time.perf_counter() - epoch_began
        if not cut_short and not first or not epoch_seconds:  # a cut epoch is no epoch's timing
            epoch_seconds.append(seconds)
        record = {"loss": loss, "seconds": seconds, "events": seen,
                  "lr": settings.lr * rate.last_factor,
                  "events_per_second": seen / max(seconds, 1e-9), "complete": not cut_short}
        # what an uninterrupted run would hold if this epoch turns out to be cut by the budget
        before_validation = selection.snapshot() if state_file is not None else None
        if not patience_out:
            patience_out = validate(record)
        elif selection.history:
            selection.history[-1].update(record)
        if progress:
            tqdm.write(f"epoch {epoch}: loss {loss:.4f}  {seen / max(seconds, 1e-9):,.0f} events/s")
        late = deadline is not None and time.perf_counter() > deadline
        if patience_out:
            stopped = "early_stopping"
        elif deadline is not None and distributed.any_rank(late, cluster, device):
            stopped = "max_seconds"
        if state_file is not None and cluster.is_main:
            kept = selection.snapshot()
            if cut_short and stopped == "max_seconds" and before_validation is not None:
                # An uninterrupted run does not validate here: resume with the record it would
                # have (best weights, validations without gain); the cut's record stays as a note.
                kept = {**before_validation, "history": kept["history"]}
            save_state(state_file, {
                "config": model.config.to_dict(), "settings": settings.to_dict(),
                "data": fingerprint, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "selection": kept, "epoch": epoch,
                "batches": len(batches), "batches_done": done, "steps": steps,
                "epoch_seconds": epoch_seconds, "seconds": time.perf_counter() - began,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                "rng_epoch_start": rng_epoch_start, "rng": rng.bit_generator.state,
                "stopped": stopped if stopped != "completed" else None})
        if stopped != "completed":
            break

    uncompile(model)
    if selection.best_weights is not None:
        model.load_state_dict(selection.best_weights)
    both = (evaluate_protocols(model, dataset, batch_size=settings.eval_batch_size)
            if cluster.is_main else {"all": {}, "seen_excluded": {}})
    return TrainReport(metrics=both["all"], seen_excluded=both["seen_excluded"],
                       history=selection.history, best_epoch=selection.best_epoch,
                       epochs=epoch, steps=steps,
                       seconds_per_epoch=float(np.mean(epoch_seconds)) if epoch_seconds else 0.0,
                       train_seconds=time.perf_counter() - began,
                       parameters=count_parameters(model), stopped=stopped)

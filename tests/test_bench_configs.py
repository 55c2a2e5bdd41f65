"""Every variant of the offline benchmark configs builds, validates and names valid methods, and
the chosen-settings budget rule gives every method the same views and the same grid."""
import os

import pytest

from metatpt_jax.bench import methods as methods_lib
from metatpt_jax.bench import runner
from tests.config_files import ROOT, config_module

V2 = config_module("bench_v2")
V2_VARIANTS = ("levels", "dev", "dev_metatpt", "dev_steps", "dev_budget", "demo", "test",
               "test_ablations", "test_chosen")


@pytest.mark.parametrize("variant", V2_VARIANTS)
def test_every_v2_variant_validates(variant):
  cfg = V2.get_config(variant)
  runner.validate_config(cfg)
  for name, mcfg in cfg.methods.items():
    kind, _ = methods_lib.method_spec(mcfg)
    assert name.startswith(kind), (name, kind)  # a row's name says which method it is
  # Settings are chosen on shifted train images; everything else reads held-out test images.
  assert cfg.data.split == ("train" if variant.startswith("dev") else "test")


def test_unknown_v2_variant_names_the_valid_ones():
  with pytest.raises(ValueError, match="dev_budget"):
    V2.get_config("dev_budgte")


def test_budget_grid_gives_every_method_the_same_views_and_grid():
  grid = V2.budget_grid()
  cells = {"tpt": set(), "metatpt": set()}
  for name, mcfg in grid.items():
    kind, spec = methods_lib.method_spec(mcfg)
    if kind == "zero_shot" or name.endswith("first_order"):
      continue
    assert (spec.n_views, spec.num_keep) == (64, 6)
    steps = spec.steps if kind == "tpt" else spec.outer_steps
    lr = spec.lr if kind == "tpt" else spec.prompt_lr
    cells[kind].add((steps, lr))
  expected = {(s, lr) for s in V2.BUDGET_STEPS for lr in V2.BUDGET_LRS.values()}
  assert cells == {"tpt": expected, "metatpt": expected}


def test_chosen_settings_are_cells_of_the_budget_grid():
  grid = V2.budget_grid()
  chosen = V2.get_config("test_chosen").methods
  for name, mcfg in chosen.items():
    if name != "zero_shot":
      assert name in grid and dict(mcfg) == dict(grid[name]), name


@pytest.mark.parametrize("variant", ("", "demo"))
def test_v1_configs_validate(variant):
  module = config_module("bench_v1")
  cfg = module.get_config(variant) if variant else module.get_config()
  runner.validate_config(cfg)
  for mcfg in cfg.methods.values():
    methods_lib.method_spec(mcfg)


V3 = config_module("bench_v3")


@pytest.mark.parametrize("variant", tuple(V3.VARIANTS))
def test_every_v3_variant_validates_and_reads_its_split(variant):
  cfg = V3.get_config(variant)
  runner.validate_config(cfg)
  for name, mcfg in cfg.methods.items():
    kind, _ = methods_lib.method_spec(mcfg)
    assert name.startswith(kind.removesuffix("_ensemble")), (name, kind)
  # Settings (and the candidate domains) are chosen on the development split only.
  dev = variant.startswith(("levels", "dev", "backbones_dev_"))
  assert cfg.data.split == ("dev" if dev else "test")
  assert all(d.startswith("artwork:") for d in cfg.data.domains)
  # the pretraining's caption, except the backbone table's CoOp row (its trained context)
  want = {"backbones_coop": "checkpoints/prompts_v3/coop.npz",
          "backbones_dev_coop": "checkpoints/prompts_v3/coop.npz",
          "backbones_coop_authors_crops": "checkpoints/prompts_v3/authors_crops/coop.npz"}
  assert cfg.prompt.init == want.get(variant, "an emoji of") and cfg.prompt.n_ctx == 3
  if variant.startswith("backbones_"):
    assert (cfg.output_dir, cfg.seeds) == (("runs/bench_v3_backbones_dev", (0,)) if dev else
                                           ("runs/bench_v3_backbones", (0, 1, 2)))
    backbone = variant.removeprefix("backbones_").removeprefix("dev_").removesuffix(
        "_authors_crops")
    assert cfg.prompt.backbone == ("" if backbone in ("clip", "coop") else backbone)
    for path in (cfg.prompt.init, cfg.prompt.backbone_checkpoint):  # the committed prompts
      assert not path.endswith(".npz") or os.path.isfile(os.path.join(ROOT, path)), path


def test_v3_metatpt_variants_each_change_one_thing_of_the_reconstruction():
  methods = V3.get_config("dev_metatpt").methods
  _, reconstruction = methods_lib.method_spec(methods["metatpt"])
  for name in V3.METATPT_VARIANTS:
    kind, spec = methods_lib.method_spec(methods[name])
    assert kind == "metatpt" and spec != reconstruction
    changed = {f for f in spec.field_names() if getattr(spec, f) != getattr(reconstruction, f)}
    assert len(changed) == 1, (name, changed)


def test_a_split_its_domains_lack_is_refused_before_any_data_is_read():
  from metatpt_jax.errors import UserError
  cfg = V3.get_config("dev")
  cfg.data.split = "train"
  with pytest.raises(UserError, match="a split of"):
    runner.validate_config(cfg)
  cfg = V2.get_config("dev")
  cfg.data.split = "dev"
  with pytest.raises(UserError, match="valid splits"):
    runner.validate_config(cfg)


def test_a_cell_of_a_smaller_domain_holds_the_whole_domain():
  import numpy as np

  from metatpt_jax.data.labelled import Domain
  cfg = V3.get_config("levels")  # "every development image"
  domain = Domain("artwork:symbola:plain", np.zeros((7, 4, 4, 3), np.uint8),
                  np.zeros(7, np.int32), ["a"])
  assert runner.cell_size(cfg, domain) == 7
  cfg.data.num_images = 5
  assert runner.cell_size(cfg, domain) == 5

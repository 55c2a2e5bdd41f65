"""Test-time methods on the prompt backbones (MaPLe, MMRL; plain CLIP / CoOp is every other
test): every adapted prompt tensor gets a gradient through TPT and through MetaTPT's second
order, the kept-views-only gradient pass equals differentiating every view (TPT on MaPLe's
way), and every registered method runs on each backbone."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metatpt_jax import backbones, losses, metatpt, registry, tpt
from metatpt_jax import generator as gen
from metatpt_jax.clip import model
from metatpt_jax.frozen_clip import ModelSpec, class_features, encode_images, logits
from metatpt_jax.hypergrad import hypergradients
from tests import method_helpers as h
from tests import test_every_method

BACKBONES = {  # micro CLIP: 2 layers a tower
    "maple": dict(depth=2),
    "mmrl": dict(rep_layers=(2,), rep_dim=16, alpha=0.7),
    "mmrl_first_block": dict(rep_layers=(1, 2), rep_dim=16, alpha=1.0),
}


def backbone_frozen(name, dtype=jnp.float32, seed=0):
  bb = backbones.get(name.split("_")[0], **BACKBONES[name])
  params = model.init_params(jax.random.key(seed), h.TEST_ARCH)
  params = dict(params, logit_scale=jnp.log(30.0))
  prompt = bb.init(params, h.TEST_ARCH, jax.random.key(seed + 1))
  # off the authors' init (zero-mean, 0.02): larger tensors so every path carries signal
  prompt = jax.tree.map(lambda x, k: x + 0.3 * jax.random.normal(k, x.shape), prompt,
                        _keys_like(prompt, seed + 2))
  frozen = backbones.make_frozen(bb, params, h.TEST_ARCH, h.CLASS_NAMES, prompt)
  frozen = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                        else x, frozen)
  return frozen, ModelSpec(h.TEST_ARCH, compute_dtype=dtype, backbone=bb)


def _keys_like(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, list(jax.random.split(jax.random.key(seed), len(leaves))))


def _nonzero_everywhere(tree):
  return {jax.tree_util.keystr(p): float(jnp.abs(x).max())
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


TPT = tpt.TPTSpec(n_views=8, selection_ratio=0.25)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_tpt_tunes_every_adapted_tensor(name):
  frozen, mspec = backbone_frozen(name)
  views = TPT.make_views(h.random_images(0, 1)[0], jax.random.key(3))
  tuned, _ = jax.jit(tpt.tune_prompt_on_views, static_argnums=(2, 3))(frozen, views, TPT, mspec)
  moved = _nonzero_everywhere(jax.tree.map(jnp.subtract, tuned, frozen.ctx_init))
  assert set(moved) and all(v > 0 for v in moved.values()), moved
  assert set(tuned) == set(mspec.backbone.adapt)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_tpt_gradient_on_the_kept_views_alone_is_every_views_gradient(name, x64):
  """The library's TPT step (tune_prompt_on_views: kept views alone on the gradient pass)
  equals one AdamW step on the authors' gradient (every view encoded with gradient, then the
  confident ones selected); in float64, so equality is checked to 1e-9, not fp32 round-off."""
  frozen, mspec = backbone_frozen(name, dtype=jnp.float64)
  views = TPT.make_views(h.random_images(0, 1)[0].astype(jnp.float64), jax.random.key(3))
  # jitted here and below: op-by-op float64 differentiation of both towers took most of a minute
  tuned, metrics = jax.jit(tpt.tune_prompt_on_views, static_argnums=(2, 3))(frozen, views, TPT,
                                                                            mspec)

  def every_view(ctx):  # the authors' way: every view's features with gradient, then select
    text = class_features(frozen, ctx, mspec)
    view_logits = logits(frozen, encode_images(frozen, views, mspec, ctx=ctx), text)
    return losses.marginal_entropy(view_logits[metrics["selected"]])

  def kept_only(ctx):  # ours: the kept views alone on the gradient pass
    text = class_features(frozen, ctx, mspec)
    kept = encode_images(frozen, views[metrics["selected"]], mspec, ctx=ctx)
    return losses.marginal_entropy(logits(frozen, kept, text))

  want = jax.jit(jax.grad(every_view))(frozen.ctx_init)
  got = jax.jit(jax.grad(kept_only))(frozen.ctx_init)
  assert min(_nonzero_everywhere(got).values()) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9,
                                                       atol=1e-12 * np.abs(a).max()), want, got)
  assert TPT.steps == 1
  opt = tpt.make_optimizer(TPT.lr, TPT.b1, TPT.b2, TPT.eps, TPT.weight_decay)
  step, _ = opt.update(want, opt.init(frozen.ctx_init), frozen.ctx_init)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-15),
               optax.apply_updates(frozen.ctx_init, step), tuned)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_metatpt_second_order_reaches_every_adapted_tensor(name):
  frozen, mspec = backbone_frozen(name)
  spec = metatpt.MetaTPTSpec(n_views=8, selection_ratio=0.5, inner_lr=0.5,
                             generator=gen.GeneratorSpec(hidden=8))
  phi = h.init_phi(spec, perturb=0.3)
  g2, g1 = jax.jit(hypergradients, static_argnums=(4, 5))(
      frozen, phi, h.random_images(3, 1)[0], jax.random.key(4), spec, mspec)
  second = _nonzero_everywhere(g2["ctx"])
  assert set(second) and all(0 < v < np.inf for v in second.values()), second
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g2["ctx"], g1["ctx"])
  assert max(jax.tree.leaves(diff)) > 1e-6 * max(second.values()), "no second-order term"


# One configured code path of every registered method (the first in test_every_method's order).
_PATHS = {}
for _path in sorted(test_every_method.PATHS, key=str):
  _PATHS.setdefault(_path[0], _path)


@pytest.mark.parametrize("kind", sorted(_PATHS))
@pytest.mark.parametrize("name", ["maple", "mmrl"])
def test_every_method_runs_on_the_backbone(kind, name, monkeypatch):
  assert set(_PATHS) == set(registry.names())
  monkeypatch.setattr(h, "tiny_frozen", lambda **kw: backbone_frozen(name))
  path = _PATHS[kind]
  test_every_method.run_code_path(path, *test_every_method.PATHS[path])


def test_the_benchmark_runs_on_maple_and_fingerprints_its_prompt(tmp_path):
  """bench_tiny:tpt (zero-shot + TPT) on MaPLe from a Dassl file, through the runner: records
  of a setting that names the backbone, its fields and the file's digest, never plain CLIP's."""
  from metatpt_jax.bench import records, runner
  from metatpt_jax.clip import checkpoint, config
  from tests import test_backbones, test_bench
  from tests.config_files import config_module
  arch = config.get_arch("tiny")
  checkpoint.save_hf(model.init_params(jax.random.key(0), arch), arch, str(tmp_path / "ckpt"))
  (tmp_path / "images" / "cat").mkdir(parents=True)
  (tmp_path / "images" / "dog").mkdir(parents=True)
  for i, name in enumerate(("cat", "dog", "cat", "dog")):
    pixels = np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    test_bench.Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
  path = test_backbones.save_dassl(tmp_path / "maple" / "model.pth.tar-2",
                                   test_backbones.maple_state(arch, depth=2))
  cfg = config_module("bench_tiny").get_config("tpt")
  cfg.model.checkpoint = str(tmp_path / "ckpt")
  cfg.data.domains = (f"folder:{tmp_path / 'images'}:clean",)
  cfg.data.num_images, cfg.plot_views, cfg.progress_bar = 4, False, False
  cfg.methods.tpt.n_views = 8
  for backbone in ("maple", ""):
    cfg.output_dir = str(tmp_path / (backbone or "clip"))
    cfg.prompt.backbone, cfg.prompt.backbone_checkpoint = backbone, path if backbone else ""
    cfg.prompt.maple.depth = 2
    assert "| tpt |" in runner.run(cfg)
  maple = records.RecordStore(str(tmp_path / "maple"), read_only=True).all()
  clip = records.RecordStore(str(tmp_path / "clip"), read_only=True).all()
  assert len(maple) == len(clip) == 8
  assert not {r["fingerprint"] for r in maple} & {r["fingerprint"] for r in clip}
  settings = json.loads((tmp_path / "maple" / records.SETTINGS_FILE).read_text())
  for setting in settings.values():
    backbone = setting["prompt"]["backbone"]
    assert backbone["name"] == "maple" and backbone["depth"] == 2
    assert backbone["adapt"] == ["ctx", "proj", "deep_text", "deep_proj"]
    assert len(backbone["checkpoint"]) == 16


def test_the_backbone_digest_is_read_once_and_follows_the_files_bytes(tmp_path):
  """The fingerprint's digest of the Dassl file is cached per version of the file (inode,
  size, times), so every cell of a run reads it once, and a file rewritten in place gets a new
  digest."""
  import os

  import ml_collections

  from metatpt_jax.bench import cells, defaults
  path = tmp_path / "model.pth.tar-2"
  prompt_cfg = ml_collections.ConfigDict(defaults.prompt_config())
  prompt_cfg.backbone, prompt_cfg.backbone_checkpoint = "maple", str(path)
  path.write_bytes(b"first")
  os.utime(path, ns=(1_000_000_000, 1_000_000_000))
  first = cells.backbone_setting(prompt_cfg)["checkpoint"]
  hits = cells._file_digest.cache_info().hits
  assert cells.backbone_setting(prompt_cfg)["checkpoint"] == first
  assert cells._file_digest.cache_info().hits == hits + 1
  path.write_bytes(b"other")  # same size, later modification time
  os.utime(path, ns=(2_000_000_000, 2_000_000_000))
  assert cells.backbone_setting(prompt_cfg)["checkpoint"] != first

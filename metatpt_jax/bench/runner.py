"""The benchmark loop: methods x domains x seeds, resumable, with a results table and plots."""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from metatpt_jax import adapt, metatpt
from metatpt_jax.bench import methods as methods_lib
from metatpt_jax.bench import records as records_lib
from metatpt_jax.bench import report
from metatpt_jax.clip import checkpoint
from metatpt_jax.data import domains as domains_lib


# Module-level jitted wrappers: one compilation cache for every domain and seed of a run.
_FIT_OFFLINE = jax.jit(metatpt.fit_offline_generator, static_argnums=(4, 5))
_VIEWS_BEFORE_AFTER = jax.jit(metatpt.views_before_and_after_inner, static_argnums=(4, 5))


@dataclasses.dataclass
class Job:
  """One (method, domain, seed) cell of the benchmark."""
  method: str
  domain: domains_lib.Domain
  seed: int


def load_model(cfg: ml_collections.ConfigDict):
  params, arch = checkpoint.load_clip(cfg.model.checkpoint)
  return params, arch, methods_lib.model_spec(cfg.model, arch)


def _paper_data_args(cfg: ml_collections.ConfigDict) -> dict:
  """Where the paper's datasets live (configs/paper.py sets these; older configs lack them)."""
  return dict(data_dir=cfg.data.get("data_dir") or None,
              classnames_dir=cfg.data.get("classnames_dir") or None)


def _batches(todo: np.ndarray, batch_size: int):
  """Index batches padded to `batch_size` by repeating the last index (one compiled shape)."""
  for start in range(0, len(todo), batch_size):
    idx = todo[start:start + batch_size]
    yield idx, np.concatenate([idx, np.repeat(idx[-1:], batch_size - len(idx))])


def run_job(job: Job, step, state, store, batch_size, progress) -> None:
  """Adapts every not-yet-recorded sample of the job's domain and appends the records."""
  name = job.domain.name
  done = store.done(job.method, name, job.seed)
  todo = np.array([i for i in range(len(job.domain.labels)) if i not in done], dtype=np.int64)
  progress.update(len(done))
  key = methods_lib.domain_key(job.seed, name)
  for real, padded in _batches(todo, batch_size):
    images = job.domain.images[padded].astype(np.float32) / 255.0
    batch = {"image": images, "index": padded.astype(np.int32)}
    _, metrics = step(state, batch, key)
    logits = np.asarray(metrics["logits"])[:len(real)]
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    recs = []
    for row, i in enumerate(real):
      pred, label = int(probs[row].argmax()), int(job.domain.labels[i])
      recs.append(dict(method=job.method, domain=name, seed=job.seed, index=int(i), label=label,
                       prediction=pred, correct=pred == label,
                       confidence=float(probs[row].max())))
    store.append(recs)
    progress.update(len(real))


def _offline_phi(state, spec, mspec, domain, seed, num_images):
  """Fits the offline generator on the first `num_images` test images (unlabeled), frozen after."""
  images = jnp.asarray(domain.images[:num_images].astype(np.float32) / 255.0)
  key = methods_lib.domain_key(seed, domain.name)
  phi, _ = _FIT_OFFLINE(state.frozen, state.phi, images, key, spec, mspec)
  return phi


def run(cfg: ml_collections.ConfigDict) -> str:
  """Runs (or resumes) the benchmark described by `cfg`; returns the Markdown results."""
  os.makedirs(cfg.output_dir, exist_ok=True)
  params, arch, mspec = load_model(cfg)
  specs = {name: methods_lib.method_spec(mcfg) for name, mcfg in cfg.methods.items()}
  # Table order: zero-shot, TPT, then MetaTPT variants (ConfigDict iterates alphabetically).
  specs = dict(sorted(specs.items(), key=lambda kv: (methods_lib.KINDS.index(kv[1][0]), kv[0])))
  store = records_lib.RecordStore(os.path.join(cfg.output_dir, "samples.jsonl"))
  steps = {name: adapt.make_step(kind, spec, mspec) for name, (kind, spec) in specs.items()}
  domain_names = []
  total = len(cfg.seeds) * len(cfg.data.domains) * len(specs) * cfg.data.num_images
  with tqdm(total=total, desc="bench", disable=not cfg.progress_bar) as progress:
    for seed in cfg.seeds:
      for spec_str in cfg.data.domains:
        domain = domains_lib.load_domain(spec_str, split=cfg.data.split,
                                         num_images=cfg.data.num_images, seed=seed,
                                         image_size=arch.vision.image_size,
                                         cache_dir=cfg.data.cache_dir or None,
                                         **_paper_data_args(cfg))
        domain_names.append(domain.name)
        for name, (kind, spec) in specs.items():
          state = methods_lib.build_state(params, arch, domain.class_names, cfg.prompt, kind,
                                          spec, seed)
          if kind == "metatpt" and spec.augment == "frozen":
            if len(store.done(name, domain.name, seed)) < len(domain.labels):
              state = state._replace(phi=_offline_phi(
                  state, spec, mspec, domain, seed, cfg.methods[name].offline_images))
          progress.set_postfix_str(f"{name} {domain.name} seed={seed}")
          run_job(Job(name, domain, seed), steps[name], state, store, cfg.batch_size, progress)
  domain_names = list(dict.fromkeys(domain_names))
  # Only this run's cells: the store may also hold other seeds or methods of earlier runs.
  mine = [r for r in store.all() if r["seed"] in tuple(cfg.seeds) and r["method"] in specs
          and r["domain"] in domain_names]
  text = report.write_outputs(cfg.output_dir, mine, list(specs), domain_names,
                              cfg.to_json_best_effort())
  if cfg.plot_views:
    _plot_views(cfg, params, arch, mspec, specs)
  return text


def _plot_views(cfg, params, arch, mspec, specs, num_samples=3, num_views=8):
  """Views of a few samples before/after MetaTPT's inner loop (the first learned MetaTPT)."""
  learned = [(n, s) for n, (k, s) in specs.items() if k == "metatpt" and s.augment == "learned"]
  if not learned:
    return
  name, spec = learned[0]
  domain = domains_lib.load_domain(cfg.data.domains[0], split=cfg.data.split,
                                   num_images=num_samples, seed=cfg.seeds[0],
                                   image_size=arch.vision.image_size, **_paper_data_args(cfg))
  state = methods_lib.build_state(params, arch, domain.class_names, cfg.prompt, "metatpt", spec,
                                  cfg.seeds[0])
  key = methods_lib.domain_key(cfg.seeds[0], domain.name)
  pairs = [_VIEWS_BEFORE_AFTER(state.frozen, state.phi,
                               jnp.asarray(img.astype(np.float32) / 255.0),
                               jax.random.fold_in(key, i), spec, mspec)
           for i, img in enumerate(domain.images)]
  before = np.stack([np.asarray(b[:num_views]) for b, _ in pairs])
  after = np.stack([np.asarray(a[:num_views]) for _, a in pairs])
  titles = [domain.class_names[l] for l in domain.labels]
  report.plot_views(os.path.join(cfg.output_dir, f"views_{name}.png"), before, after, titles)

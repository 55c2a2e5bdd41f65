"""The benchmark loop: methods x domains x seeds, resumable, on every device and host.

Each (method, domain, seed) cell has a fingerprint of everything that decides its results
(`bench.fingerprint`); records are keyed by it, so a rerun resumes only its own setting and a
changed setting is computed afresh (and said so). Samples are split over a mesh of this
process's devices (`num_devices`, 0 = all); with several JAX processes (`jax.distributed`) each
process owns a fixed contiguous slice of every cell's samples and writes its own records file, so
processes never wait for each other until the final table. A sample's key is folded from its
index in the domain, so its prediction does not depend on the device or process count.
"""
from __future__ import annotations

import dataclasses
import io
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from metatpt_jax import adapt, registry, sharding, views
from metatpt_jax.batching import padded_batches
from metatpt_jax.bench import fingerprint as fp_lib
from metatpt_jax.bench import methods as methods_lib
from metatpt_jax.bench import records as records_lib
from metatpt_jax.bench import report, storage
from metatpt_jax.bench.cells import (
  MATMUL_PRECISIONS,
  Settings,
  cell_setting,
  cell_size,
  incomplete_cells,
  platform_setting,
)
from metatpt_jax.clip import checkpoint
from metatpt_jax.data import benchmarks
from metatpt_jax.data import domains as domains_lib
from metatpt_jax.errors import UserError
from metatpt_jax.image_ops import check_images

LOG = logging.getLogger("metatpt_jax")

@dataclasses.dataclass
class Job:
  """One (method, domain, seed) cell of the benchmark and the fingerprint of its setting."""
  method: str
  domain: domains_lib.Domain
  seed: int
  fingerprint: str
  setting: dict


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise UserError(message)


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Rejects a malformed benchmark config before any work, naming the field and the fix."""
  is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
  _require(is_int(cfg.batch_size) and cfg.batch_size >= 1,
           f"--config.batch_size={cfg.batch_size!r}: give a positive number of samples per step.")
  num_devices = cfg.get("num_devices", 0)
  local = jax.local_device_count()
  _require(is_int(num_devices) and 0 <= num_devices <= local,
           f"--config.num_devices={num_devices!r}: give 0 (all {local} local devices) or a "
           f"count from 1 to {local}.")
  seeds = cfg.seeds
  _require(isinstance(seeds, (tuple, list)) and len(seeds) > 0 and all(is_int(s) for s in seeds),
           f"--config.seeds={seeds!r}: give a tuple of integers, e.g. --config.seeds='(0,1,2)'.")
  doms = cfg.data.domains
  _require(isinstance(doms, (tuple, list)) and len(doms) > 0
           and all(isinstance(d, str) and d for d in doms),
           f"--config.data.domains={doms!r}: give a tuple of domain strings, e.g. "
           "--config.data.domains=\"('fashion_mnist:affine:3',)\".")
  _require(is_int(cfg.data.num_images) and cfg.data.num_images >= 1,
           f"--config.data.num_images={cfg.data.num_images!r}: give a positive count.")
  precision = cfg.model.get("matmul_precision", "default")
  _require(precision in MATMUL_PRECISIONS,
           f"--config.model.matmul_precision={precision!r}: give one of "
           f"{', '.join(MATMUL_PRECISIONS)}.")
  label_map = cfg.data.get("label_map", "dataset")
  _require(label_map in benchmarks.LABEL_MAPS,
           f"--config.data.label_map={label_map!r}: give 'dataset' (labels as the dataset names "
           "them) or 'published' (as the authors' code scored them, e.g. TPT's Food101).")
  canvas = cfg.data.get("canvas_size", 0)
  _require(is_int(canvas) and canvas >= 0,
           f"--config.data.canvas_size={canvas!r}: give 0 (views from the centre square) or the "
           "side in pixels of the canvas full images are kept on (e.g. 512).")
  _require(len(cfg.methods) > 0, "config.methods is empty: name at least one method.")
  _require(bool(cfg.model.checkpoint), "--config.model.checkpoint is empty: give a checkpoint "
           "directory or file (or a Hugging Face model id).")
  _require(bool(cfg.output_dir), "--config.output_dir is empty: give a directory for results.")
  for spec in doms:  # every domain string (and its split) is checked before the first is loaded
    domains_lib.check_domain(spec, cfg.data.split)


def load_model(cfg: ml_collections.ConfigDict):
  params, arch = checkpoint.load_clip(cfg.model.checkpoint)
  return params, arch, methods_lib.model_spec(cfg.model, arch, cfg.prompt)


def _paper_data_args(cfg: ml_collections.ConfigDict) -> dict:
  """Where the paper's datasets live (configs/paper.py sets these; older configs lack them)."""
  return dict(data_dir=cfg.data.get("data_dir") or None,
              classnames_dir=cfg.data.get("classnames_dir") or None,
              canvas_size=int(cfg.data.get("canvas_size", 0)),
              label_map=cfg.data.get("label_map", "dataset"))


def make_mesh(cfg: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """A data mesh over this process's first `num_devices` devices (0: all of them)."""
  devices = jax.local_devices()
  return sharding.make_data_mesh(devices[:cfg.get("num_devices", 0) or len(devices)])


def _note_other_settings(job: Job, store, settings: Settings) -> None:
  """One line for each earlier setting of this cell whose records are kept but not used."""
  head = (job.method, job.domain.name, job.seed)
  others = {}
  for key in store.records:
    if key[1:4] == head and key[0] != job.fingerprint:
      others[key[0]] = others.get(key[0], 0) + 1
  for other, count in others.items():
    old = settings.known.get(other)
    changed = fp_lib.describe_change(old, job.setting) if old else "an unrecorded setting"
    LOG.warning("%s on %s, seed %d: %d records of another setting (changed: %s) stay in the "
                "file unused; this setting is computed afresh.", job.method, job.domain.name,
                job.seed, count, changed)


class StreamCheckpoints:
  """An online method's carried state (`AdaptState.method_state`) after each batch of a cell, saved
  before that batch's records are appended, so a killed run resumes from the state after
  exactly the samples it has records for (the last two are kept)."""

  def __init__(self, directory: str, job: Job):
    self.directory = storage.join(directory, "streams")
    self.prefix = f"{job.fingerprint}_p{jax.process_index()}_"

  def _path(self, seen: int) -> str:
    return storage.join(self.directory, f"{self.prefix}{seen}.npz")

  def _saved(self) -> list:
    """Sample counts of this cell's saved states, ascending."""
    counts = [name[len(self.prefix):-len(".npz")] for name in storage.listdir(self.directory)
              if name.startswith(self.prefix) and name.endswith(".npz")]
    return sorted(int(c) for c in counts if c.isdigit())

  def save(self, method_state, seen: int) -> None:
    storage.makedirs(self.directory)
    buf = io.BytesIO()
    np.savez(buf, *[np.asarray(x) for x in jax.tree.leaves(method_state)])
    storage.write_bytes(self._path(seen), buf.getvalue())
    for old in self._saved()[:-2]:  # keep the last two: this batch's and the one before
      storage.remove(self._path(old))

  def load(self, initial, seen: int):
    """The state after the first `seen` samples (`initial` itself when seen is 0)."""
    if seen == 0:
      return initial
    if not storage.exists(self._path(seen)):
      raise UserError(f"{seen} records of this online cell exist but not the state after them "
                      f"({self._path(seen)}); delete the cell's records to stream it afresh.")
    with np.load(io.BytesIO(storage.read_bytes(self._path(seen)))) as saved:
      leaves = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return jax.tree.unflatten(jax.tree.structure(initial), leaves)


def _batches(todo, batch_size, online: bool):
  """Index batches: padded to one shape for episodic methods; the real samples only for an
  online method (a padded sample would enter its state)."""
  if not online:
    yield from padded_batches(todo, batch_size)
    return
  for start in range(0, len(todo), batch_size):
    yield todo[start:start + batch_size], todo[start:start + batch_size]


def run_job(job: Job, step, state, store, batch_size, progress, mesh, online=False,
            directory="", *, image_size: int) -> None:
  """Adapts this process's not-yet-recorded samples of the job's cell and appends the records.

  An online method streams them in index order from the state saved after its recorded ones."""
  n = len(job.domain.labels)
  mine = np.arange(n)[sharding.process_slice(n)]
  done = store.done(job.fingerprint, job.method, job.domain.name, job.seed)
  todo = np.array([i for i in mine if i not in done], dtype=np.int64)
  progress.update(len(mine) - len(todo))
  if online:
    if list(todo) != list(mine[len(mine) - len(todo):]):
      raise UserError(f"The records of online cell {job.method} on {job.domain.name} are not a "
                      "prefix of its stream; delete them to stream it afresh.")
    checkpoints = StreamCheckpoints(directory, job)
    state = state._replace(method_state=checkpoints.load(state.method_state,
                                                         len(mine) - len(todo)))
  key = methods_lib.domain_key(job.seed, job.domain.name)
  data_sharding = NamedSharding(mesh, P(sharding.DATA_AXIS))
  jitted = getattr(step, "jitted", step)  # images are checked here, on the host, instead

  def load(padded):
    """A batch decoded, checked on the host (NumPy) and put on the mesh."""
    inputs = domains_lib.batch_inputs(job.domain, padded)
    check_images(inputs["image"], image_size, batched=True)
    return jax.device_put(dict(inputs, index=padded.astype(np.int32)), data_sharding)

  batches = list(_batches(todo, batch_size, online))
  pending = load(batches[0][1]) if batches else None
  for k, (real, _) in enumerate(batches):
    state, metrics = jitted(state, pending, key)  # dispatched; the device works from here
    prediction, confidence = _prediction_and_confidence(metrics["logits"])
    # The next batch is decoded while the device computes this one (asynchronous dispatch).
    pending = load(batches[k + 1][1]) if k + 1 < len(batches) else None
    if online:
      checkpoints.save(state.method_state, int(np.searchsorted(mine, real[-1])) + 1)
    prediction = np.asarray(prediction)[:len(real)]  # padding is never recorded
    confidence = np.asarray(confidence)[:len(real)]
    recs = []
    for row, i in enumerate(real):
      pred, label = int(prediction[row]), int(job.domain.labels[i])
      recs.append(dict(fingerprint=job.fingerprint, method=job.method, domain=job.domain.name,
                       seed=job.seed, index=int(i), label=label, prediction=pred,
                       correct=pred == label, confidence=float(confidence[row])))
    store.append(recs)
    progress.update(len(real))


@jax.jit
def _prediction_and_confidence(logits):
  """On the device: (argmax [B], max softmax probability [B]); only these come to the host."""
  return jnp.argmax(logits, axis=-1), jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)


def _sources(inputs: dict):
  if "canvas" not in inputs:
    return None
  return views.Source(jnp.asarray(inputs["canvas"], jnp.float32) / 255,
                      jnp.asarray(inputs["extent"], jnp.int32))


def prepare_state(state, job: Job, kind, spec, mspec, store, method_cfg):
  """The method's per-domain setup (`registry.Method.prepare`) on the domain's first unlabeled
  images, when it has one and the cell still has samples to adapt."""
  method = registry.get(kind)
  num = method.offline_images(spec, method_cfg)
  done = store.done(job.fingerprint, job.method, job.domain.name, job.seed)
  if not num or len(done) >= len(job.domain.labels):
    return state
  inputs = domains_lib.batch_inputs(job.domain, np.arange(min(num, len(job.domain.labels))))
  key = methods_lib.domain_key(job.seed, job.domain.name)
  return method.prepare(state, spec, mspec, jnp.asarray(inputs["image"]), _sources(inputs), key)


def _load_domain(cfg, spec_str, seed, arch):
  return domains_lib.load_domain(spec_str, split=cfg.data.split, num_images=cfg.data.num_images,
                                 seed=seed, image_size=arch.vision.image_size,
                                 cache_dir=cfg.data.cache_dir or None, **_paper_data_args(cfg))


def method_specs(cfg: ml_collections.ConfigDict) -> dict:
  """name -> (kind, spec), in table order: by registry order of kind, then by name (a
  ConfigDict iterates alphabetically)."""
  specs = {name: methods_lib.method_spec(mcfg) for name, mcfg in cfg.methods.items()}
  return dict(sorted(specs.items(), key=lambda kv: (registry.names().index(kv[1][0]), kv[0])))


def _open_store(cfg, pid, count):
  store = records_lib.RecordStore(cfg.output_dir, pid, count)
  if store.legacy:
    LOG.warning("%d records in %s carry no fingerprint (written by an older version); they are "
                "ignored.", store.legacy, cfg.output_dir)
  return store


def _stream_mesh(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
  """The first device of `mesh` alone: where an online method's one stream runs."""
  return mesh if mesh.size == 1 else sharding.make_data_mesh(mesh.devices.flat[:1])


def run_cells(cfg, params, arch, mspec, specs, mesh, store, settings):
  """Adapts every (seed, domain, method) cell's missing samples; returns {fingerprint: (method,
  domain, seed, images the complete cell holds)} and the domain names in run order."""
  digest = fp_lib.params_digest(params)
  # Online methods stream on one device of each process (the authors' one stream; each process
  # streams its own slice), episodic ones split their batches over every device of the mesh.
  meshes = {name: _stream_mesh(mesh) if registry.get(kind).is_online(spec) else mesh
            for name, (kind, spec) in specs.items()}
  per_step = {name: -(-cfg.batch_size // m.size) * m.size  # a multiple of the device count
              for name, m in meshes.items()}
  steps = {name: adapt.make_step(kind, spec, mspec, mesh=meshes[name])
           for name, (kind, spec) in specs.items()}
  fingerprints, domain_names, sizes = [], [], {}
  share = len(range(cfg.data.num_images)[sharding.process_slice(cfg.data.num_images)])
  total = len(cfg.seeds) * len(cfg.data.domains) * len(specs) * share
  with tqdm(total=total, desc="bench", disable=not cfg.progress_bar) as progress:
    for seed in cfg.seeds:
      for spec_str in cfg.data.domains:
        domain = _load_domain(cfg, spec_str, seed, arch)
        domain_names.append(domain.name)
        if cell_size(cfg, domain) < cfg.data.num_images:  # a smaller domain: fewer to run
          progress.total -= len(specs) * (share - len(range(cell_size(cfg, domain))[
              sharding.process_slice(cell_size(cfg, domain))]))
        for name, (kind, spec) in specs.items():
          setting = cell_setting(cfg, name, kind, spec, domain, seed, digest, arch)
          job = Job(name, domain, seed, fp_lib.fingerprint(setting), setting)
          fingerprints.append(job.fingerprint)
          sizes[job.fingerprint] = (name, domain.name, seed, cell_size(cfg, domain))
          _note_other_settings(job, store, settings)
          settings.add(job.fingerprint, setting)
          state = methods_lib.build_state(params, arch, domain.class_names, cfg.prompt, kind,
                                          spec, seed)
          state = prepare_state(state, job, kind, spec, mspec, store, cfg.methods[name])
          progress.set_postfix_str(f"{name} {domain.name} seed={seed}")
          run_job(job, steps[name], sharding.replicate(meshes[name], state), store,
                  per_step[name], progress, meshes[name],
                  online=registry.get(kind).is_online(spec), directory=cfg.output_dir,
                  image_size=arch.vision.image_size)
  return sizes, list(dict.fromkeys(domain_names))


def run(cfg: ml_collections.ConfigDict) -> str:
  """Runs (or resumes) the benchmark described by `cfg`; returns the Markdown results (the
  empty string on processes other than 0, which write no table)."""
  validate_config(cfg)
  params, arch, mspec = load_model(cfg)
  specs = method_specs(cfg)
  pid, count = jax.process_index(), jax.process_count()
  store = _open_store(cfg, pid, count)
  with jax.default_matmul_precision(cfg.model.get("matmul_precision", "default")):
    cells, domain_names = run_cells(cfg, params, arch, mspec, specs, make_mesh(cfg), store,
                                    Settings(cfg.output_dir, writer=pid == 0))
  if count > 1:  # the table needs every process's records
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("metatpt-bench: all records written")
  if pid != 0:
    return ""
  # Only this run's cells: the directory may also hold other settings, seeds or methods.
  mine = records_lib.RecordStore(cfg.output_dir, read_only=True).of_cells(cells)
  missing = incomplete_cells(mine, cells)
  if missing:
    LOG.warning("No tables written: %s. Every process must write its records to this one "
                "output_dir (local, NFS, a shared mount or a gs:// URL); run the missing share again (the "
                "same command resumes it).", missing)
    return ""
  text = report.write_outputs(cfg.output_dir, mine, list(specs), domain_names,
                              cfg.to_json_best_effort(), platform=platform_setting(cfg))
  if cfg.plot_views:
    _plot_views(cfg, params, arch, mspec, specs)
  return text


def _plot_views(cfg, params, arch, mspec, specs, num_samples=3, num_views=8):
  """Views of a few samples before/after adaptation, one figure per method that has them
  (`registry.Method.view_pairs`: MetaTPT's learned views before and after the inner step)."""
  for name, (kind, spec) in specs.items():
    pairs_fn = registry.get(kind).view_pairs(spec)
    if pairs_fn is not None:
      _plot_views_of(cfg, params, arch, mspec, name, kind, spec, pairs_fn, num_samples, num_views)


def _plot_views_of(cfg, params, arch, mspec, name, kind, spec, pairs_fn, num_samples, num_views):
  domain = domains_lib.load_domain(cfg.data.domains[0], split=cfg.data.split,
                                   num_images=num_samples, seed=cfg.seeds[0],
                                   image_size=arch.vision.image_size, **_paper_data_args(cfg))
  state = methods_lib.build_state(params, arch, domain.class_names, cfg.prompt, kind, spec,
                                  cfg.seeds[0])
  key = methods_lib.domain_key(cfg.seeds[0], domain.name)
  pairs = []
  for i in range(len(domain.labels)):
    inputs = domains_lib.batch_inputs(domain, np.array([i]))
    source = _sources(inputs)
    source = None if source is None else jax.tree.map(lambda x: x[0], source)
    pairs.append(pairs_fn(state.frozen, state.method_state, jnp.asarray(inputs["image"][0]),
                          jax.random.fold_in(key, i), spec, mspec, source))
  before = np.stack([np.asarray(b[:num_views]) for b, _ in pairs])
  after = np.stack([np.asarray(a[:num_views]) for _, a in pairs])
  titles = [domain.class_names[label] for label in domain.labels]
  report.plot_views(storage.join(cfg.output_dir, f"views_{name}.png"), before, after, titles)

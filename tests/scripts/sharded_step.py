"""Runs `adapt.make_step` sharded over a data mesh, for tests/test_sharding.py.

Run as a subprocess: the device count must be fixed before JAX first runs anything.

  fake:        python -m tests.scripts.sharded_step fake --devices 8 --out r.npz
               one process, N fake CPU devices; saves unsharded and sharded outputs per method.
  distributed: python -m tests.scripts.sharded_step distributed --process-id I \
                 --num-processes P --port PORT --devices D --out r_I.npz
               P processes on localhost (gloo CPU collectives), D devices each; each loads only
               its slice of the batch, and saves the gathered global outputs.
"""
from __future__ import annotations

import argparse
import functools
import sys

import numpy as np

METHODS = ("zero_shot", "tpt", "metatpt", "zero", "mta")
BATCH = 8
KEY_SEED = 3


def _parse(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("mode", choices=("fake", "distributed"))
  parser.add_argument("--devices", type=int, default=8, help="CPU devices in this process")
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--out", required=True)
  return parser.parse_args(argv)


def _setup_jax(args):
  import jax  # configured before any use
  jax.config.update("jax_num_cpu_devices", args.devices)
  if args.mode == "distributed":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                               num_processes=args.num_processes, process_id=args.process_id,
                               initialization_timeout=120)
  return jax


@functools.cache
def _frozen():
  from tests import method_helpers as h
  # Logit scale 10: at 100 the random tiny CLIP's predictions are one-hot and gradients vanish.
  return h.tiny_frozen(seed=0, logit_scale=np.log(10.0))


def _problem(method):
  """(state, spec, mspec, images [BATCH, S, S, 3] NumPy, indices [BATCH]) -- deterministic."""
  from metatpt_jax import adapt, metatpt, tpt, training_free
  from metatpt_jax import generator as gen
  from tests import method_helpers as h
  frozen, mspec = _frozen()
  if method == "zero_shot":  # no gradients: separates the data plumbing from the adaptation
    spec, phi = None, None
  elif method == "tpt":
    spec, phi = tpt.TPTSpec(n_views=8, selection_ratio=0.25), None
  elif method == "zero":
    spec, phi = training_free.ZeroSpec(n_views=8, selection_ratio=0.25), None
  elif method == "mta":
    spec, phi = training_free.MTASpec(n_views=8), None
  else:
    spec = metatpt.MetaTPTSpec(n_views=8, selection_ratio=0.25,
                               generator=gen.GeneratorSpec(hidden=8))
    phi = h.init_phi(spec, perturb=0.1)
  images = np.asarray(h.random_images(21, BATCH))
  indices = np.arange(100, 100 + BATCH, dtype=np.int32)  # sample ids, not batch positions
  return adapt.AdaptState(frozen, phi), spec, mspec, images, indices


def _to_numpy(metrics):
  return {k: np.asarray(v) for k, v in metrics.items()}


def run_fake(args, jax):
  from metatpt_jax import adapt, sharding
  assert jax.device_count() == args.devices, jax.devices()
  mesh = sharding.make_data_mesh()
  results = {}
  for method in args.methods.split(","):
    state, spec, mspec, images, indices = _problem(method)
    key = jax.random.key(KEY_SEED)
    _, plain = adapt.make_step(method, spec, mspec)(state, {"image": images, "index": indices},
                                                    key)
    batch = sharding.global_batch(mesh, {"image": images, "index": indices})
    _, sharded = adapt.make_step(method, spec, mspec, mesh=mesh)(
        sharding.replicate(mesh, state), batch, key)
    # The sharded outputs must really be spread over the devices.
    results[f"{method}/num_shards"] = np.asarray(len(sharded["logits"].sharding.device_set))
    for prefix, metrics in (("unsharded", plain), ("sharded", sharded)):
      for name, value in _to_numpy(metrics).items():
        results[f"{method}/{prefix}/{name}"] = value
  np.savez(args.out, **results)


def run_distributed(args, jax):
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from metatpt_jax import adapt, sharding
  assert jax.process_count() == args.num_processes
  assert jax.device_count() == args.devices * args.num_processes, jax.devices()
  mesh = sharding.make_data_mesh()
  results = {}
  for method in args.methods.split(","):
    state, spec, mspec, images, indices = _problem(method)
    mine = sharding.process_slice(BATCH)  # this process reads only its own samples
    local = {"image": images[mine], "index": indices[mine]}
    batch = sharding.global_batch(mesh, local)
    step = adapt.make_step(method, spec, mspec, mesh=mesh)
    args_ = (sharding.replicate(mesh, state), batch, jax.random.key(KEY_SEED))
    try:  # the public, checked step
      _, sharded = step(*args_)
      results[f"{method}/checked_step_error"] = np.asarray("")
    except Exception as err:  # reported to the test, not hidden
      results[f"{method}/checked_step_error"] = np.asarray(f"{type(err).__name__}: {err}")
      # The raw jitted step still tests the distributed computation itself.
      _, sharded = step.jitted(*args_)
    # Gather the global outputs onto every process (an all-gather over the CPU collectives).
    gather = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P()))
    for name, value in sharded.items():
      results[f"{method}/{name}"] = np.asarray(gather(value))
    results[f"{method}/local_indices"] = local["index"]
  np.savez(args.out, **results)
  jax.distributed.shutdown()


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  jax = _setup_jax(args)
  (run_fake if args.mode == "fake" else run_distributed)(args, jax)
  print("done", args.mode, args.process_id)


if __name__ == "__main__":
  main()

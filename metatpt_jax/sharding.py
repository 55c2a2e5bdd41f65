"""One explicitly passed mesh over all devices (and hosts), and per-process data sharding.

Test-time adaptation is per sample, so only the batch is split: no parameters or gradients cross
devices. On a multi-host pod each process loads its own contiguous slice of the stream
(`process_slice`) and `global_batch` assembles the global array without moving data.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize` when the launcher set the usual variables.

  Reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (on TPU pods and SLURM
  `jax.distributed.initialize()` also discovers them itself; set METATPT_DISTRIBUTED=1 for that).
  Returns whether the distributed runtime was initialised.
  """
  if "JAX_COORDINATOR_ADDRESS" in os.environ or os.environ.get("METATPT_DISTRIBUTED") == "1":
    # CPU processes need a collectives backend for the final barrier (no effect on GPU/TPU).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
    return True
  if os.environ.get("METATPT_DISTRIBUTED") == "1":
    jax.distributed.initialize()
    return True
  return False


def make_data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named DATA_AXIS over `devices` (default: all devices of all processes)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices, (DATA_AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def process_slice(num_items: int, process_index: int | None = None,
                  process_count: int | None = None) -> slice:
  """This process's contiguous share of `num_items` (the last may be shorter)."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  per = -(-num_items // count)
  return slice(min(index * per, num_items), min((index + 1) * per, num_items))


def global_batch(mesh: jax.sharding.Mesh, local_batch: dict) -> dict:
  """Assembles per-process arrays (leading axis = local batch) into global sharded arrays."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(mesh: jax.sharding.Mesh, tree):
  """Places a pytree on every device of the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, P()))

"""Run as several processes by test_multiprocess.py: streamed first-order ProsPr over sharded global batches.

Prints the most global batches alive at once and the bytes of live device arrays after the warm-up and at the
end, so the test can check that memory does not grow with the number of steps M.
"""

import gc
import json
import pathlib
import sys
import weakref

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from absl import flags  # noqa: E402

import prospr_jax  # noqa: E402
from configs import default  # noqa: E402
from prospr_jax import data
from prospr_jax.criteria import registry
from prospr_jax.harness import entry, pruning
from prospr_jax.harness.records import Scoring
from prospr_jax.harness.setup import make_setup
from prospr_jax.runtime import sharding  # noqa: E402


def main() -> None:
  flags.FLAGS(sys.argv)
  entry.initialize_distributed()
  config = default.get_config()
  config.prune.batch_size = 16
  setup = make_setup(config)
  loss_fn = pruning.loss_fn_for(Scoring.of(config), registry.get_criterion(config.criterion), setup.model,
                                setup.variables)
  loader = data.train_loader(setup.info, setup.train_source, global_batch_size=16, seed=1)
  alive, most_alive, live_bytes = [], 0, []

  def tracked(batches):
    nonlocal most_alive
    for k, batch in enumerate(batches):
      gc.collect()
      most_alive = max(most_alive, sum(ref() is not None for ref in alive))
      live_bytes.append(sum(x.nbytes for x in jax.live_arrays()))
      alive.append(weakref.ref(batch['image']))
      yield batch

  params = sharding.replicate(setup.variables['params'], setup.mesh)
  prospr_jax.prospr_saliency_streamed(params, tracked(pruning._global_batches(iter(loader), setup.mesh)),
                                      loss_fn=loss_fn, num_steps=int(flags.FLAGS.num_steps), log_every=10**9)
  print(json.dumps({'most_alive': most_alive, 'bytes_after_warmup': live_bytes[3], 'bytes_most': max(live_bytes[3:]),
                    'steps': len(live_bytes) - 1}))


if __name__ == '__main__':
  flags.DEFINE_integer('num_steps', 40, 'inner steps M')
  main()

"""Multi-process runs on this machine: real separate processes, jax.distributed over loopback, gloo collectives.

Two processes with two simulated CPU devices each must do exactly what one process with four devices does:
the data of a global batch do not depend on the topology (data/sampler.py), and every reduction runs over the
same four-device mesh.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

pytestmark = pytest.mark.slow  # real processes: each test runs whole jobs

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL_RUN = ['--config=configs/default.py', '--config.num_epochs=1', '--config.lr_milestones=()',
             '--config.compare_dense=False',
             '--config.prune.num_steps=1', '--config.prune.batch_size=16', '--config.batch_size=64',
             '--config.eval_batch_size=128']


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def environment(devices: int) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={devices}'.strip()
  env.pop('JAX_COORDINATOR_ADDRESS', None)
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # the suite's cache: multi-process CPU runs must not read it (runner.py)
  return env


def start(script, args, *, processes=2, devices=2, heartbeat=10):
  """Launch ``processes`` copies of ``script``, each with ``devices`` CPU devices."""
  if processes == 1:
    return [subprocess.Popen([sys.executable, script, *args], cwd=ROOT, env=environment(devices),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
  port = free_port()
  return [subprocess.Popen([sys.executable, script, *args, f'--coordinator_address=localhost:{port}',
                            f'--num_processes={processes}', f'--process_id={i}',
                            f'--heartbeat_timeout_seconds={heartbeat}'],
                           cwd=ROOT, env=environment(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for i in range(processes)]


def finish(procs, timeout=400):
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
  finally:  # a hung run fails its test and leaves no process behind holding the cores
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-4000:]
  return outputs


def run(script, args, **kwargs):
  return finish(start(script, args, **kwargs))


def npz(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def checkpointed(workdir, item='state'):
  """An item of the latest checkpoint as numpy arrays, whatever topology wrote it, and its step."""
  import jax
  step = ocp.CheckpointManager(workdir / 'checkpoints').latest_step()
  path = workdir / 'checkpoints' / str(step) / item
  checkpointer = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), checkpointer.metadata(path).item_metadata)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy)), step


def final_params(workdir):
  state, step = checkpointed(workdir)
  return state['params'], step


def assert_same_training(params_a, params_b, initial):
  """Equal up to float32 summation order: the gloo all-reduce across processes adds the four devices' gradients
  in another order than the in-process one, a few ulps per step. Bound the difference by 1e-4 of how far each
  tensor moved in training (and 1e-4 relative), far below any real divergence (a different batch moves it ~1x)."""
  import jax
  def close(a, b, w0):
    moved = float(np.abs(b - w0).max())
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * moved)
  jax.tree.map(close, params_a, params_b, initial)


def assert_trees_equal(a, b):
  import jax
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope='module')
def two_and_one_process_runs(tmp_path_factory):
  """The same small prune-and-train run as 2 processes x 2 devices and as 1 process x 4 devices."""
  root = tmp_path_factory.mktemp('runs')
  two, one = root / 'two', root / 'one'
  run('prune.py', SMALL_RUN + [f'--workdir={two}'])
  run('prune.py', SMALL_RUN + [f'--workdir={one}'], processes=1, devices=4)
  return two, one


def test_two_processes_derive_the_single_process_mask_bit_for_bit(two_and_one_process_runs):
  two, one = two_and_one_process_runs
  assert_trees_equal(npz(two / 'mask.npz'), npz(one / 'mask.npz'))


def test_two_processes_train_to_the_single_process_params_and_metrics(two_and_one_process_runs):
  two, one = two_and_one_process_runs
  (params_two, step_two), (params_one, step_one) = final_params(two / 'pruned'), final_params(one / 'pruned')
  assert step_two == step_one == 22
  assert_same_training(params_two, params_one, checkpointed(one / 'pruned', 'initial_params')[0])
  row_two, row_one = (json.loads((d / 'pruned/metrics.jsonl').read_text()) for d in (two, one))
  for key in ('train_loss', 'train_accuracy', 'eval_loss', 'eval_top1', 'eval_top5'):
    assert row_two[key] == pytest.approx(row_one[key], rel=1e-6), key


def test_a_two_process_checkpoint_resumes_in_two_processes_and_in_one_alike(two_and_one_process_runs, tmp_path):
  two, _ = two_and_one_process_runs
  again_two, again_one = tmp_path / 'again_two', tmp_path / 'again_one'
  shutil.copytree(two, again_two)
  shutil.copytree(two, again_one)
  longer = [arg.replace('num_epochs=1', 'num_epochs=2') for arg in SMALL_RUN]
  (_, err_two), _ = run('prune.py', longer + [f'--workdir={again_two}'])
  ((_, err_one),) = run('prune.py', longer + [f'--workdir={again_one}'], processes=1, devices=4)
  assert 'Resumed from the checkpoint at step 22' in err_two and 'Resumed from the checkpoint at step 22' in err_one
  (params_two, step_two), (params_one, step_one) = (final_params(d / 'pruned') for d in (again_two, again_one))
  assert step_two == step_one == 44
  assert_same_training(params_two, params_one, checkpointed(again_one / 'pruned', 'initial_params')[0])


def test_streamed_first_order_scores_over_sharded_data_equal_the_single_process_ones(tmp_path):
  streamed = ['--config=configs/default.py', '--config.num_epochs=0', '--config.prune.first_order=True',
              '--config.prune.streamed=True', '--config.prune.num_steps=6', '--config.prune.batch_size=16']
  run('prune.py', streamed + [f'--workdir={tmp_path / "two"}'])
  run('prune.py', streamed + [f'--workdir={tmp_path / "one"}'], processes=1, devices=4)
  two, one = npz(tmp_path / 'two/scores.npz'), npz(tmp_path / 'one/scores.npz')
  for name in one:  # float32 summation order again (see assert_same_training): ~1e-6 of the layer's largest score
    np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-5 * np.abs(one[name]).max())
  masks_two, masks_one = npz(tmp_path / 'two/mask.npz'), npz(tmp_path / 'one/mask.npz')
  flipped = sum(int((masks_two[k] != masks_one[k]).sum()) for k in masks_one)
  assert flipped <= 2  # at most a pair of near-tied scores at the threshold swap places


def test_streamed_saliency_over_sharded_data_holds_constant_memory_as_m_grows():
  procs = start('tests/streamed_memory_worker.py', ['--num_steps=40'])
  outputs = finish(procs)
  for out, _ in outputs:
    report = json.loads(out.strip().splitlines()[-1])
    assert report['steps'] == 40 and report['most_alive'] <= 2
    assert report['bytes_most'] <= report['bytes_after_warmup']  # live device arrays after step 3 never grow


def test_when_one_process_is_killed_the_other_stops_with_a_message_in_bounded_time(tmp_path):
  args = SMALL_RUN + ['--config.num_epochs=30', f'--workdir={tmp_path}']
  procs = start('prune.py', args, heartbeat=5)
  deadline = time.time() + 300
  while not (tmp_path / 'pruned' / 'metrics.jsonl').exists():  # training has begun
    assert time.time() < deadline and all(p.poll() is None for p in procs)
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  _, err = procs[0].communicate(timeout=120)
  assert procs[0].returncode != 0
  assert time.time() - killed_at < 120
  assert 'another process failed or was killed' in err or 'distributed' in err.lower(), err[-3000:]
  procs[1].communicate()


def test_processes_that_disagree_are_refused_before_any_compute():
  script = ('import sys, jax; '
            'from prospr_jax import entry, sharding; '
            'from absl import flags; flags.FLAGS(sys.argv); entry.initialize_distributed(); '
            'sharding.assert_same_on_every_process([100 + jax.process_index()], "the number of records")')
  port = free_port()
  procs = [subprocess.Popen([sys.executable, '-c', script, f'--coordinator_address=localhost:{port}',
                             '--num_processes=2', f'--process_id={i}'], cwd=ROOT, env=environment(1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  errors = [p.communicate(timeout=120)[1] for p in procs]
  assert all(p.returncode != 0 for p in procs)
  assert all('the number of records differs across processes' in e for e in errors), errors[0][-2000:]


def test_a_global_batch_the_devices_cannot_split_is_refused_before_any_compute(tmp_path):
  ((_, err),) = [p.communicate(timeout=120) for p in start(
      'prune.py', ['--config=configs/default.py', '--config.batch_size=66', f'--workdir={tmp_path}'],
      processes=1, devices=4)]
  assert 'config.batch_size=66: global batch size 66 is not divisible by 4 devices' in err
  assert not (tmp_path / 'mask.npz').exists()

"""``sweep.py --parallel_cells=N``: cells as N processes sharing the device, each with its share."""

import json

import pytest
from test_sweep import results_rows, run_python

from prospr_jax import sweep
from prospr_jax.sweep import parallel


def test_a_cpu_is_split_into_core_sets_and_a_gpu_into_memory_fractions():
  assert [s.cores for s in parallel.slots(2, 'cpu', cores=[0, 1, 2, 3, 4])] == [(0, 1), (2, 3, 4)]
  assert [s.cores for s in parallel.slots(3, 'cpu', cores=[0, 1])] == [(0,), (1,), (0,)]
  gpu = parallel.slots(2, 'gpu', cores=[0, 1])
  assert [s.env for s in gpu] == [{'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.450'}] * 2 and gpu[0].cores == (0, 1)
  with pytest.raises(ValueError, match='parallel_cells must be >= 1'):
    parallel.slots(0, 'cpu')


@pytest.mark.slow
def test_two_cells_at_once_give_the_results_of_one_at_a_time_a_layer_collapse_included(tmp_path):
  from configs import default
  config = default.get_config()
  config.num_epochs, config.lr_milestones = 1, ()
  sweep.run_sweep(config, 'magnitude', '0.5,0.9999', 1, tmp_path / 'serial')
  done = run_python('sweep.py', '--config=configs/default.py', '--criteria=magnitude', '--sparsities=0.5,0.9999',
                    '--seeds=1', '--config.num_epochs=1', '--config.lr_milestones=()', '--parallel_cells=2',
                    f'--workdir={tmp_path / "parallel"}')
  assert done.returncode == 0, done.stderr[-3000:]
  logs = sorted((tmp_path / 'parallel' / 'logs').glob('cell_*.log'))
  assert len(logs) == 3  # the pruned cells and the dense one, each its own process
  key = lambda row: (row['criterion'], row['sparsity'], row['seed'])
  strip = lambda rows: sorted((key(row), row['top1'], row['top5'], row['kept_weights']) for row in rows)
  assert strip(results_rows(tmp_path / 'parallel')) == strip(results_rows(tmp_path / 'serial'))  # bit for bit
  assert json.loads((tmp_path / 'parallel' / 'sweep.json').read_text())
  assert '(n=1, 1 collapsed)' in (tmp_path / 'parallel' / 'table.md').read_text()  # recorded, not left unfinished


def test_a_failing_cell_is_named_with_its_log_and_the_others_finish(tmp_path):
  commands = ['exit 3', 'true', 'true']
  failures, skipped = parallel.run(commands, 2, tmp_path, 'cpu')
  assert skipped == 0 and len(failures) == 1 and 'cell_0.log (exit code 3): exit 3' in failures[0]
  assert len(list((tmp_path / 'logs').glob('cell_*.log'))) == 3
  _, skipped = parallel.run(['true', 'true'], 1, tmp_path, 'cpu', deadline=0.0, after=[False, True])
  assert skipped == 2


@pytest.mark.slow
def test_cells_that_prune_after_training_run_after_the_others_one_at_a_time(tmp_path):
  order = tmp_path / 'order.txt'
  commands = [f'sleep 0.3; echo after1 >> {order}', f'sleep 0.5; echo first >> {order}',
              f'echo after2 >> {order}', f'echo second >> {order}']
  failures, _ = parallel.run(commands, 2, tmp_path, 'cpu', after=[True, False, True, False])
  assert not failures
  lines = order.read_text().split()
  assert set(lines[:2]) == {'first', 'second'} and lines[2:] == ['after1', 'after2']

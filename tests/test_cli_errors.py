"""prune.py and train.py end a failed run with one ``error:`` line and an exit code, never a bare traceback.

Most tests call ``entry.run`` and the flag parser in-process with a stand-in job; a few run the scripts for real.
"""

import errno
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from absl import flags, logging as absl_logging

from prospr_jax.data import DatasetUnavailableError
from prospr_jax.harness import entry, flag_parsing, validation
from prospr_jax.runtime import preemption
from prospr_jax.xla_cpu import host_memory

ROOT = pathlib.Path(__file__).resolve().parents[1]
HINT = 'set PROSPR_JAX_TRACEBACK=1 for the traceback'


@pytest.fixture(autouse=True)
def quiet_entry(monkeypatch):
  """No distributed start-up, and the prospr_jax logger left as the other tests expect it."""
  monkeypatch.setattr(entry, 'initialize_distributed', lambda: None)
  monkeypatch.setattr(entry, 'configure_logging', lambda: None)
  monkeypatch.setattr(host_memory, 'release_heap_after_compiles', lambda: None)  # no listener left in this process
  monkeypatch.setattr(preemption, 'handle_sigterm', lambda: None)  # pytest keeps its own SIGTERM handling
  monkeypatch.delenv(flag_parsing.TRACEBACK_ENV, raising=False)


def run_job(monkeypatch, workdir, job):
  """``entry.run`` with ``job`` as the prune-and-train job: the exit code (0 when it returned)."""
  try:
    entry.run(None, str(workdir), 'configs/default.py', job)
  except SystemExit as done:
    return done.code
  return 0


def raising(error):
  def job(config, workdir):
    raise error
  return job


def error_line(stderr):
  lines = [line for line in stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1, stderr
  return lines[0]


def test_a_run_hands_the_compilers_freed_heap_back_before_its_programs_run(monkeypatch, tmp_path):
  events = []
  monkeypatch.setattr(host_memory, 'release_heap_after_compiles', lambda: events.append('release heap after compiles'))
  assert run_job(monkeypatch, tmp_path / 'run', lambda config, workdir: events.append('job')) == 0
  assert events == ['release heap after compiles', 'job']


@pytest.mark.parametrize('error', [
    ValueError('scores contain NaN or Inf in Conv_0/kernel. The ProsPr inner loop diverged: try a smaller inner_lr'),
    ValueError('a global top-k mask at sparsity 0.9999 would remove every weight of Conv_1/kernel'),
    FileNotFoundError('mask file nope.npz does not exist: give the mask.npz that prune.py wrote'),
    IsADirectoryError('mask file masks/ is a folder'),
    NotADirectoryError('not a folder'),
    PermissionError('mask.npz is not readable'),
    validation.ConfigError('config.prune.sparsity must be in [0, 1), got 1.5'),
    DatasetUnavailableError('cifar10 is not prepared: run tfds build cifar10'),
], ids=lambda error: type(error).__name__)
def test_an_error_with_a_message_deep_in_the_run_ends_with_that_message_and_exit_code_2(
    monkeypatch, capsys, tmp_path, error):
  assert run_job(monkeypatch, tmp_path, raising(error)) == 2
  stderr = capsys.readouterr().err
  assert error_line(stderr) == f'error: {error} ({HINT})' and 'Traceback' not in stderr


def test_the_traceback_variable_shows_the_traceback_above_the_error_line(monkeypatch, capsys, tmp_path):
  monkeypatch.setenv(flag_parsing.TRACEBACK_ENV, '1')
  assert run_job(monkeypatch, tmp_path, raising(ValueError('try a smaller inner_lr'))) == 2
  stderr = capsys.readouterr().err
  assert 'Traceback' in stderr and stderr.rstrip().endswith('error: try a smaller inner_lr')


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
  with pytest.raises(ZeroDivisionError):
    run_job(monkeypatch, tmp_path, raising(ZeroDivisionError('a bug')))


def test_a_workdir_that_is_a_file_is_refused_before_the_job_runs(monkeypatch, capsys, tmp_path):
  (tmp_path / 'file').write_text('')
  called = []
  for workdir in (tmp_path / 'file', tmp_path / 'file' / 'sub'):
    assert run_job(monkeypatch, workdir, lambda config, workdir: called.append(workdir)) == 2
    assert 'is a file; give a folder' in error_line(capsys.readouterr().err)
  assert not called


def test_an_unwritable_workdir_is_refused_before_the_job_runs_and_left_as_it_was(monkeypatch, capsys, tmp_path):
  def read_only(**kwargs):
    raise OSError(errno.EROFS, 'Read-only file system')
  monkeypatch.setattr(entry.tempfile, 'TemporaryFile', read_only)
  called = []
  assert run_job(monkeypatch, tmp_path / 'new' / 'run', lambda config, workdir: called.append(workdir)) == 2
  assert 'cannot be written (Read-only file system); give another --workdir' in error_line(capsys.readouterr().err)
  assert not called and not (tmp_path / 'new').exists()


def test_a_refused_run_leaves_no_workdir_it_made_behind(monkeypatch, tmp_path):
  def refused(config, workdir):
    (workdir / 'config.json').write_text('{}')  # recorded before the failure, as workdir.check_config does
    (workdir / 'pruned').mkdir()
    raise validation.ConfigError('config.prune.sparsity must be in [0, 1), got 1.5')
  assert run_job(monkeypatch, tmp_path / 'new' / 'run', refused) == 2
  assert not (tmp_path / 'new').exists()


def test_a_failed_run_keeps_its_results_and_a_workdir_it_did_not_make(monkeypatch, tmp_path):
  def fails_after_pruning(config, workdir):
    (workdir / 'mask.npz').write_text('')
    raise ValueError('the loss diverged')
  assert run_job(monkeypatch, tmp_path / 'made', fails_after_pruning) == 2
  assert (tmp_path / 'made' / 'mask.npz').exists()
  assert run_job(monkeypatch, tmp_path, raising(ValueError('refused'))) == 2
  assert tmp_path.exists()


def test_ctrl_c_before_a_checkpoint_says_so_and_exits_130(monkeypatch, capsys, tmp_path):
  assert run_job(monkeypatch, tmp_path, raising(KeyboardInterrupt())) == 130
  stderr = capsys.readouterr().err
  assert ('error: interrupted; rerun the same command to resume from the last checkpoint (before the first '
          'checkpoint)') in error_line(stderr) and 'Traceback' not in stderr


def test_ctrl_c_names_the_newest_checkpoint_a_rerun_resumes_from(monkeypatch, capsys, tmp_path):
  for folder, when in (('pruned/checkpoints/440', 1), ('dense/checkpoints/20', 3), ('dense/checkpoints/10', 2),
                       ('dense/checkpoints/30.orbax-checkpoint-tmp', 4)):
    (tmp_path / folder).mkdir(parents=True)
    os.utime(tmp_path / folder, (when, when))
  assert run_job(monkeypatch, tmp_path, raising(KeyboardInterrupt())) == 130
  assert f'(step 20 in {tmp_path / "dense" / "checkpoints"})' in error_line(capsys.readouterr().err)


def test_a_full_disk_says_so_and_where_even_when_a_library_wrapped_the_error(monkeypatch, capsys, tmp_path):
  def disk_full(config, workdir):
    try:
      raise OSError(errno.ENOSPC, 'No space left on device', str(workdir / 'checkpoints' / '5'))
    except OSError as error:
      raise RuntimeError('checkpoint save failed') from error
  assert run_job(monkeypatch, tmp_path, disk_full) == 1
  line = error_line(capsys.readouterr().err)
  assert 'the disk is full' in line and str(tmp_path / 'checkpoints' / '5') in line and 'No space left' in line


def test_configure_logging_keeps_jax_backend_probing_quiet(monkeypatch):
  monkeypatch.undo()  # the real configure_logging, its loggers restored below
  saved = {name: (logger.handlers[:], logger.level, logger.propagate) for name in ('prospr_jax', 'jax._src.xla_bridge')
           for logger in [logging.getLogger(name)]}
  verbosity = absl_logging.get_verbosity()
  try:
    entry.configure_logging()
    assert not logging.getLogger('jax._src.xla_bridge').isEnabledFor(logging.INFO)
  finally:
    absl_logging.set_verbosity(verbosity)
    for name, (handlers, level, propagate) in saved.items():
      logger = logging.getLogger(name)
      logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def parse(argv, default='configs/default.py'):
  """Define --config on fresh flags and parse ``argv`` as prune.py would: the config, or the exit code."""
  argv = [str(ROOT / 'prune.py'), *argv]
  flag_values = flags.FlagValues()
  try:
    holder = flag_parsing.define_config_flag(default, 'config', flag_values=flag_values, argv=argv)
    flag_parsing.parse_flags(argv, flag_values)
  except SystemExit as done:
    return done.code
  return holder.value


@pytest.mark.parametrize('argv', [['--config.prune.sparsty=0.5'],
                                  ['--config=configs/default.py', '--config.prune.sparsty=0.5']],
                         ids=['default config', 'given config'])
def test_a_misspelt_config_field_names_the_flag_and_the_field_it_meant(capsys, argv):
  assert parse(argv) == 2
  stderr = capsys.readouterr().err
  assert error_line(stderr) == (f'error: --config.prune.sparsty=0.5: the config has no field \'sparsty\'; did you '
                                f'mean "sparsity"? ({HINT})') and 'Traceback' not in stderr


@pytest.mark.parametrize('argv, message', [
    (['--config=configs/nope.py'], "No such file or directory: 'configs/nope.py'); a relative path is tried from"),
    (['--config', 'configs'], 'Is a directory'),
    (['--config=configs/default.py:variant'], 'this config takes no variant; drop the ":variant"'),
    (['--config=configs/cifar10_vgg16.py:varx'], "unknown config variant 'varx'"),
    (['--config.lr_milestones=abc'], '--config.lr_milestones=abc: expected ints like the default 10'),
    (['--config.prune.sparsity=abc'], "--config.prune.sparsity=abc: could not convert string to float: 'abc'"),
    (['--workdr=x'], "Unknown command line flag 'workdr'"),
], ids=['missing file', 'folder', 'variant', 'unknown variant', 'words in a tuple of ints', 'words for a float',
        'unknown flag'])
def test_a_bad_config_flag_is_one_error_line_with_exit_code_2(capsys, argv, message):
  assert parse(argv) == 2
  stderr = capsys.readouterr().err
  assert message in error_line(stderr) and 'Traceback' not in stderr


def test_a_tuple_field_takes_numbers(capsys):
  assert parse(['--config.lr_milestones=10,20']).lr_milestones == (10, 20)


def test_a_relative_config_path_falls_back_to_the_folder_of_the_script(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  assert parse(['--config=configs/cifar10_vgg16.py:runlocal']).dataset == 'cifar10'
  assert parse(['--config', 'configs/default.py', '--config.seed=3']).seed == 3
  assert parse([]).dataset == 'digits'


def run_script(*args, cwd=ROOT, env=None):
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
                        env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_prune_py_refuses_a_misspelt_field_from_another_folder_in_one_line(tmp_path):
  done = run_script(ROOT / 'prune.py', '--config=configs/default.py', '--config.prune.sparsty=0.5', cwd=tmp_path)
  assert done.returncode == 2 and done.stderr.splitlines() == [
      f'error: --config.prune.sparsty=0.5: the config has no field \'sparsty\'; did you mean "sparsity"? ({HINT})']
  shown = run_script(ROOT / 'prune.py', '--config.prune.sparsty=0.5', env={flag_parsing.TRACEBACK_ENV: '1'})
  assert shown.returncode == 2 and 'Traceback' in shown.stderr and 'did you mean "sparsity"?' in shown.stderr


@pytest.mark.slow
def test_prune_py_reports_an_emptied_layer_in_one_line_and_leaves_no_workdir(tmp_path):
  done = run_script('prune.py', '--config.num_epochs=0', '--config.prune.num_steps=1', '--config.prune.sparsity=0.9999',
                    f'--workdir={tmp_path / "run"}')
  assert done.returncode == 2 and 'Traceback' not in done.stderr and 'Unable to initialize backend' not in done.stderr
  assert 'would remove every weight of' in error_line(done.stderr) and not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_train_py_reports_a_missing_mask_file_in_one_line(tmp_path):
  done = run_script('train.py', f'--config.mask_path={tmp_path / "nope.npz"}', f'--workdir={tmp_path / "run"}')
  assert done.returncode == 2 and 'Traceback' not in done.stderr
  assert f'mask file {tmp_path / "nope.npz"} does not exist' in error_line(done.stderr)


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130_naming_the_checkpoint_to_resume_from(tmp_path):
  checkpoints = tmp_path / 'pruned' / 'checkpoints'
  process = subprocess.Popen(
      [sys.executable, 'prune.py', '--config.num_epochs=1000', '--config.compare_dense=False',
       '--config.prune.num_steps=1', '--config.checkpoint_every_steps=5', f'--workdir={tmp_path}'],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 240
  while not any(path.name.isdigit() for path in checkpoints.glob('*')) and process.poll() is None:
    assert time.monotonic() < deadline, 'no checkpoint in time'
    time.sleep(0.2)
  process.send_signal(signal.SIGINT)
  stderr = process.communicate(timeout=120)[1]
  assert process.returncode == 130 and 'Traceback' not in stderr
  assert 'resume from the last checkpoint (step ' in error_line(stderr) and f'in {checkpoints})' in stderr

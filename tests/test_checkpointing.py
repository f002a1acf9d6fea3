"""Checkpointer: save, restore, and fall back past a corrupt newest checkpoint."""

import logging
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from prospr_jax.runtime.checkpointing import Checkpointer

TEMPLATE = {'w': jnp.zeros(4)}


def state_at(step: int) -> dict:
  return {'w': jnp.arange(4.) + step}


def save_steps(directory: pathlib.Path, *steps: int) -> None:
  """Save each step with its own state and meta, and wait for the writes to finish."""
  checkpointer = Checkpointer(directory)
  for step in steps:
    checkpointer.save(step, state_at(step), {'w': jnp.arange(4.)}, {'epoch': step})
  checkpointer.wait()
  checkpointer.close()


def restore_latest(directory: pathlib.Path) -> tuple[dict, dict, dict]:
  """What a restarted run restores."""
  checkpointer = Checkpointer(directory)
  try:
    return checkpointer.restore(TEMPLATE, TEMPLATE)
  finally:
    checkpointer.close()


def steps_in(directory: pathlib.Path) -> list[int]:
  checkpointer = Checkpointer(directory)
  try:
    return checkpointer.steps()
  finally:
    checkpointer.close()


def truncate_every_file(step_dir: pathlib.Path) -> None:
  for path in step_dir.rglob('*'):
    if path.is_file():
      path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def delete_state_data_files(step_dir: pathlib.Path) -> None:
  for path in (step_dir / 'state').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.unlink()


def garble_meta_json(step_dir: pathlib.Path) -> None:
  (step_dir / 'meta' / 'metadata').write_text('{"epoch": 2')


def delete_state_folder(step_dir: pathlib.Path) -> None:
  shutil.rmtree(step_dir / 'state')


def empty_the_step_folder(step_dir: pathlib.Path) -> None:
  for path in step_dir.iterdir():
    shutil.rmtree(path) if path.is_dir() else path.unlink()


CORRUPTIONS = [truncate_every_file, delete_state_data_files, garble_meta_json, delete_state_folder,
               empty_the_step_folder]


def assert_restored(restored: tuple[dict, dict, dict], step: int) -> None:
  state, initial_params, meta = restored
  np.testing.assert_array_equal(state['w'], state_at(step)['w'])
  np.testing.assert_array_equal(initial_params['w'], np.arange(4.))
  assert meta == {'epoch': step}


def test_an_intact_newest_checkpoint_restores_without_warnings(tmp_path, caplog):
  save_steps(tmp_path, 1, 2)
  with caplog.at_level(logging.WARNING):
    assert_restored(restore_latest(tmp_path), 2)
  assert not caplog.records
  assert steps_in(tmp_path) == [1, 2]


def test_an_explicit_step_restores_that_step(tmp_path):
  save_steps(tmp_path, 1, 2)
  checkpointer = Checkpointer(tmp_path)
  assert_restored(checkpointer.restore(TEMPLATE, TEMPLATE, step=1), 1)
  checkpointer.close()


def test_max_to_keep_keeps_the_two_newest_steps(tmp_path):
  save_steps(tmp_path, 1, 2, 3)
  assert steps_in(tmp_path) == [2, 3]


@pytest.mark.parametrize('corrupt', CORRUPTIONS, ids=lambda corrupt: corrupt.__name__)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_with_a_one_line_warning(tmp_path, caplog, corrupt):
  save_steps(tmp_path, 1, 2)
  corrupt(tmp_path / '2')
  with caplog.at_level(logging.WARNING, logger='prospr_jax'):
    assert_restored(restore_latest(tmp_path), 1)
  [warning] = [record for record in caplog.records if record.name == 'prospr_jax.runtime.checkpointing']
  message = warning.getMessage()
  assert warning.levelno == logging.WARNING and '\n' not in message and len(message) < 400, message
  assert str(tmp_path / '2') in message and 'resumed from step 1' in message
  assert 'Error' in message  # the error's type, e.g. ValueError, KeyError, JSONDecodeError


@pytest.mark.parametrize('corrupt', CORRUPTIONS, ids=lambda corrupt: corrupt.__name__)
def test_training_saves_and_resumes_again_after_a_fallback(tmp_path, corrupt):
  save_steps(tmp_path, 1, 2)
  corrupt(tmp_path / '2')
  assert_restored(restore_latest(tmp_path), 1)
  save_steps(tmp_path, 2, 3)  # the resumed run redoes step 2, then goes on
  assert_restored(restore_latest(tmp_path), 3)
  assert steps_in(tmp_path) == [2, 3]
  checkpointer = Checkpointer(tmp_path)
  assert_restored(checkpointer.restore(TEMPLATE, TEMPLATE, step=2), 2)  # the new step 2, not the corrupt one
  checkpointer.close()


def test_the_corrupt_checkpoint_is_renamed_aside_not_deleted(tmp_path):
  save_steps(tmp_path, 1, 2)
  garble_meta_json(tmp_path / '2')
  restore_latest(tmp_path)
  [aside] = [path.name for path in tmp_path.iterdir() if path.name.startswith('2.corrupt-')]
  assert (tmp_path / aside / 'state').is_dir()
  assert steps_in(tmp_path) == [1]
  save_steps(tmp_path, 2, 3, 4)  # max_to_keep leaves the set-aside folder alone
  assert (tmp_path / aside).is_dir()


def test_every_checkpoint_corrupt_raises_one_line_naming_the_folder_and_the_fix(tmp_path, caplog):
  save_steps(tmp_path, 1, 2)
  truncate_every_file(tmp_path / '1')
  delete_state_data_files(tmp_path / '2')
  with caplog.at_level(logging.WARNING, logger='prospr_jax'), pytest.raises(RuntimeError) as raised:
    restore_latest(tmp_path)
  message = str(raised.value)
  assert '\n' not in message and str(tmp_path) in message and 'new workdir' in message and 'Delete' in message
  assert raised.value.__cause__ is None and raised.value.__suppress_context__
  warnings = [record.getMessage() for record in caplog.records if record.name == 'prospr_jax.runtime.checkpointing']
  assert len(warnings) == 2 and all('\n' not in warning for warning in warnings)


def test_when_no_checkpoint_restores_none_is_moved(tmp_path):
  save_steps(tmp_path, 1, 2)
  checkpointer = Checkpointer(tmp_path)
  with pytest.raises(RuntimeError, match='different config'):
    checkpointer.restore({'v': jnp.zeros(3)}, TEMPLATE)  # a changed model, not corruption
  checkpointer.close()
  assert sorted(path.name for path in tmp_path.iterdir()) == ['1', '2']
  assert_restored(restore_latest(tmp_path), 2)


def test_restoring_from_an_empty_folder_says_there_is_no_checkpoint(tmp_path):
  checkpointer = Checkpointer(tmp_path)
  with pytest.raises(FileNotFoundError, match='No checkpoint in'):
    checkpointer.restore(TEMPLATE, TEMPLATE)
  checkpointer.close()

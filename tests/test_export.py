"""export.py and prospr_jax.export / load_exported: a finished run's network as StableHLO, ONNX and safetensors
files that give the Flax model's logits at any batch size, read back without the training code."""

import fcntl
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import prospr_jax
from prospr_jax import mask_files, masks, models
from prospr_jax.harness import deployed_network, experiment, export_formats

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 5)  # the batch dimension is symbolic: one file serves both


def tiny_config(structured: bool, **prune):
  """One epoch of the offline default (small CNN, digits) pruned by SNIP."""
  from configs import default
  config = default.get_config()
  config.criterion, config.num_epochs, config.lr_milestones, config.compare_dense = 'snip', 1, (), False
  config.prune.update(num_steps=1, batch_size=16, structured=structured, sparsity=0.5 if structured else 0.9,
                      **prune)
  return config


def tiny_run(tmp_path_factory, name: str, structured: bool) -> pathlib.Path:
  """A one-epoch snip run on digits, made once per session: pytest-xdist's workers share it (a file lock)."""
  root = tmp_path_factory.getbasetemp()
  root = (root.parent if os.environ.get('PYTEST_XDIST_WORKER') else root) / 'export_runs'
  root.mkdir(exist_ok=True)
  workdir = root / name
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / experiment.RESULTS_FILE).exists():
      experiment.prune_and_train(tiny_config(structured), workdir)
  return workdir


@pytest.fixture(scope='module')
def unstructured_run(tmp_path_factory):
  return tiny_run(tmp_path_factory, 'unstructured', structured=False)


@pytest.fixture(scope='module')
def compact_run(tmp_path_factory):
  return tiny_run(tmp_path_factory, 'compact', structured=True)


def images(network, batch_size):
  return np.random.default_rng(batch_size).standard_normal((batch_size, *network.input_shape)).astype(np.float32)


@pytest.fixture(scope='module', params=['unstructured', 'compact'])
def exported(request, tmp_path_factory):
  """(run workdir, its network, the export folder): stablehlo and safetensors (onnx in its own test)."""
  workdir = request.getfixturevalue(f'{request.param}_run')
  formats = ['stablehlo'] + (['safetensors'] if importlib.util.find_spec('safetensors') else [])
  output = tmp_path_factory.mktemp(f'export_{request.param}')
  prospr_jax.export(workdir, output, formats=formats)
  return workdir, deployed_network.load_network(workdir), output


@pytest.mark.slow
def test_the_network_of_an_unstructured_run_is_the_masked_one_restored_from_its_checkpoint(unstructured_run):
  network = deployed_network.load_network(unstructured_run)
  saved = mask_files.load_masks(unstructured_run / 'mask.npz', network.variables['params'])
  assert network.kind == 'masked'
  for name, kept in masks.named_leaves(saved):
    assert np.array_equal(dict(masks.named_leaves(network.mask))[name], np.asarray(kept, bool))
  kernel = network.variables['params']['Conv_1']['kernel']
  assert np.all(kernel[~network.mask['Conv_1']['kernel']] == 0) and np.any(kernel != 0)


@pytest.mark.slow
def test_the_network_of_a_structured_run_is_the_compact_one(compact_run):
  network = deployed_network.load_network(compact_run)
  model, variables = prospr_jax.load_compact(compact_run, trained=True)
  assert network.kind == 'compact' and network.mask is None and network.model.widths == model.widths
  assert np.array_equal(network.variables['params']['Dense_0']['kernel'], variables['params']['Dense_0']['kernel'])


@pytest.mark.slow
def test_the_stablehlo_file_gives_the_flax_logits_at_any_batch_size(exported):
  _, network, output = exported
  call = prospr_jax.load_exported(output / 'model.stablehlo')
  for size in BATCH_SIZES:
    x = images(network, size)
    np.testing.assert_allclose(np.asarray(call(x)), np.asarray(network.apply(x)), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_the_safetensors_file_holds_the_weights_mask_and_what_rebuilds_the_model(exported):
  pytest.importorskip('safetensors', reason='the export extra is not installed: pip install -e ".[export]"')
  _, network, output = exported
  variables, metadata = prospr_jax.load_exported(output / 'weights.safetensors')
  assert metadata['model'] == 'small_cnn' and metadata['input_shape'] == [8, 8, 1] and metadata['trained']
  assert ('mask' in variables) == (network.kind == 'masked')
  model = models.get_model(metadata['model'], metadata['num_classes'], **metadata['model_kwargs'])
  weights = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  for size in BATCH_SIZES:
    x = images(network, size)
    np.testing.assert_array_equal(model.apply(weights, x, train=False), network.apply(x))


@pytest.mark.slow
def test_export_json_records_each_files_difference_and_latency(exported):
  _, _, output = exported
  report = json.loads((output / 'export.json').read_text())
  assert report['files']['stablehlo']['max_abs_difference'] <= 1e-6
  assert report['files']['stablehlo']['latency_batch_1_seconds'] > 0 and report['flax_latency_batch_1_seconds'] > 0


@pytest.mark.parametrize('run', ['unstructured_run', 'compact_run'])
@pytest.mark.slow
def test_the_onnx_file_gives_the_flax_logits_in_onnxruntime(request, run, tmp_path):
  pytest.importorskip('jax2onnx', reason='the export extra is not installed: pip install -e ".[export]"')
  pytest.importorskip('onnxruntime', reason='the export extra is not installed: pip install -e ".[export]"')
  workdir = request.getfixturevalue(run)
  report = prospr_jax.export(workdir, tmp_path, formats=['onnx'])
  network = deployed_network.load_network(workdir)
  session = prospr_jax.load_exported(tmp_path / 'model.onnx')
  for size in BATCH_SIZES:
    x = images(network, size)
    np.testing.assert_allclose(session(x), np.asarray(network.apply(x)), rtol=0, atol=1e-5)
  assert report['files']['onnx']['max_abs_difference'] <= 1e-5


@pytest.mark.slow
def test_the_initial_weights_export_too(unstructured_run, tmp_path):
  report = prospr_jax.export(unstructured_run, tmp_path, formats=['stablehlo'], trained=False)
  initial = deployed_network.load_network(unstructured_run, trained=False)
  x = images(initial, 3)
  np.testing.assert_allclose(prospr_jax.load_exported(tmp_path / 'model.stablehlo')(x), initial.apply(x), atol=1e-6)
  assert not report['trained']


def assert_exported_logits_match(workdir, output):
  """The StableHLO export of ``workdir`` gives its network's logits, and export.json says so."""
  report = prospr_jax.export(workdir, output, formats=['stablehlo'])
  network = deployed_network.load_network(workdir)
  call = prospr_jax.load_exported(output / 'model.stablehlo')
  for size in BATCH_SIZES:
    x = images(network, size)
    np.testing.assert_allclose(np.asarray(call(x)), np.asarray(network.apply(x)), rtol=0, atol=1e-6)
  assert report['files']['stablehlo']['max_abs_difference'] <= 1e-6
  return network


@pytest.mark.slow
def test_a_train_py_run_with_a_saved_mask_exports_its_masked_network(unstructured_run, tmp_path):
  config = tiny_config(structured=False)
  config.mask_path = str(unstructured_run / 'mask.npz')
  experiment.train_and_evaluate(config, tmp_path / 'train')
  network = assert_exported_logits_match(tmp_path / 'train', tmp_path / 'export')
  saved = mask_files.load_masks(unstructured_run / 'mask.npz', network.variables['params'])
  assert network.kind == 'masked'
  for name, kept in masks.named_leaves(saved):
    assert np.array_equal(dict(masks.named_leaves(network.mask))[name], np.asarray(kept, bool))
    assert np.all(dict(masks.named_leaves(network.variables['params']))[name][~np.asarray(kept, bool)] == 0)


@pytest.mark.slow
def test_a_structured_run_that_did_not_compact_exports_the_masked_full_width_network(tmp_path):
  experiment.prune_and_train(tiny_config(structured=True, compact=False), tmp_path / 'run')
  network = assert_exported_logits_match(tmp_path / 'run', tmp_path / 'export')
  kernel, kept = network.variables['params']['Conv_0']['kernel'], network.mask['Conv_0']['kernel']
  assert network.kind == 'masked' and kernel.shape == kept.shape
  channels = kept.reshape(-1, kept.shape[-1])
  assert np.all(channels.all(axis=0) | ~channels.any(axis=0))  # a channel is kept whole or pruned whole
  assert not channels.all() and np.all(kernel[..., ~channels.any(axis=0)] == 0)


def test_a_workdir_without_a_finished_run_is_refused_in_one_line(tmp_path):
  done = subprocess.run([sys.executable, 'export.py', f'--workdir={tmp_path}', '--formats=stablehlo'], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2 and 'Traceback' not in done.stderr
  assert done.stderr.strip().splitlines()[-1].startswith(f'error: {tmp_path} holds no run')


def test_a_missing_extra_is_refused_naming_the_install(monkeypatch):
  monkeypatch.setattr(export_formats.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(export_formats.MissingExtra, match=r'pip install -e "\.\[export\]"'):
    export_formats.check_formats(['onnx'])

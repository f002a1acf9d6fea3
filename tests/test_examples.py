"""The examples for your own model, and docs/library.md's NNX snippet, run as a user runs them: offline."""

import importlib.util
import pathlib
import re

import jax
import numpy as np
import pytest

import prospr_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
# nnx.BatchNorm keeps float32 running statistics; the suite runs with x64 on, so writing them back warns.
pytestmark = pytest.mark.filterwarnings('ignore:scatter inputs have incompatible types:FutureWarning')


def load_example(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / 'examples' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('name', ['own_model', 'own_model_nnx'])
@pytest.mark.slow
def test_an_own_model_example_prunes_trains_and_evaluates_on_the_bundled_digits(name, capsys):
  accuracy = load_example(name).main(steps=3, batch=32, sparsity=0.8)
  assert 0.0 <= accuracy <= 1.0
  assert 'held-out accuracy at 80% sparsity' in capsys.readouterr().out


def nnx_snippet():
  """The python block under '## An NNX model, end to end' in docs/library.md, verbatim."""
  text = (ROOT / 'docs' / 'library.md').read_text()
  section = text[text.index('## An NNX model, end to end'):]
  return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def test_the_nnx_snippet_in_the_docs_is_under_30_lines_and_prunes_and_trains_the_model():
  code = nnx_snippet()
  assert len(code.splitlines()) < 30
  scope = {}
  exec(compile(code, 'docs/library.md', 'exec'), scope)  # noqa: S102 - the documented snippet, as a user runs it
  assert scope['accuracy'] > 0.5  # 10 classes: chance is 0.1
  from flax import nnx
  params = nnx.to_pure_dict(nnx.state(scope['model'], nnx.Param))
  kept = jax.tree.map(lambda m, p: None if m is None else np.all(np.where(m, True, p == 0)), scope['masks'], params,
                      is_leaf=prospr_jax.masks.is_none)
  assert all(jax.tree.leaves(kept))  # pruned weights are still exactly zero after training

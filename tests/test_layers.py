"""The package's layers, as DESIGN.md draws them: each folder imports only from the layers below it.

  sweep > harness > data > runtime ;  harness > models > channels > criteria > core ;  models > xla_cpu
The core and criteria are the library (jax, optax, chex, numpy): no Flax, no harness, no data. Read from the
source (every import, at any depth of a module), so a lazy import inside a function counts too.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'prospr_jax'
CORE = 'core'
# layer -> the layers it may import (itself included)
ALLOWED = {
    CORE: {CORE},
    'criteria': {CORE, 'criteria'},
    'channels': {CORE, 'criteria', 'channels'},
    'xla_cpu': {'xla_cpu'},
    'models': {CORE, 'criteria', 'channels', 'xla_cpu', 'models'},
    'runtime': {'runtime', 'files'},
    'data': {'data', 'runtime', 'files'},
    'harness': {CORE, 'criteria', 'channels', 'xla_cpu', 'models', 'runtime', 'data', 'harness'},
    'sweep': {CORE, 'criteria', 'channels', 'xla_cpu', 'models', 'runtime', 'data', 'harness', 'sweep'},
}
# Third-party packages a layer must not reach.
FORBIDDEN = {
    # files.read_msgpack reads msgpack files through flax.serialization (a codec, imported when called)
    CORE: {'flax.linen', 'flax.nnx', 'ml_collections', 'grain', 'tensorflow', 'tensorflow_datasets', 'absl', 'matplotlib'},
    'criteria': {'flax', 'ml_collections', 'grain', 'tensorflow', 'tensorflow_datasets', 'absl', 'matplotlib',
                 'etils'},
    'xla_cpu': {'flax', 'ml_collections', 'grain', 'tensorflow_datasets', 'optax'},
    'runtime': {'flax', 'optax'},
}
MAX_LINES = 250


def modules() -> list[pathlib.Path]:
  return sorted(path for path in PACKAGE.rglob('*.py') if path != PACKAGE / '__init__.py')


def layer_of(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE).parts
  return parts[0] if len(parts) > 1 else CORE


def layer_of_module(dotted: str) -> str:
  """``prospr_jax.x.y`` -> its layer; ``files`` is named apart: the one core module runtime may use."""
  parts = dotted.split('.')[1:]
  if not parts:
    return 'face'
  if (PACKAGE / parts[0]).is_dir():
    return parts[0]
  return 'files' if parts[0] == 'files' else CORE


def imports(path: pathlib.Path) -> set[str]:
  """Every module ``path`` imports, at any depth (``from prospr_jax import x`` counts as ``prospr_jax.x``)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == 'prospr_jax':
        found.update(f'prospr_jax.{alias.name}' for alias in node.names)
      else:
        found.add(node.module)
  return found


@pytest.mark.parametrize('path', modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_the_layers_below_it(path):
  layer = layer_of(path)
  ours = {name for name in imports(path) if name.split('.')[0] == 'prospr_jax'}
  allowed = ALLOWED[layer] | ({'files'} if layer != 'xla_cpu' else set())
  upward = sorted(name for name in ours if layer_of_module(name) not in allowed)
  assert not upward, f'{path.relative_to(PACKAGE)} ({layer}) imports {upward}: a layer above it'


@pytest.mark.parametrize('path', modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_layer_reaches_no_forbidden_package(path):
  banned = FORBIDDEN.get(layer_of(path), set())
  reached = sorted(name for name in imports(path) for ban in banned if name == ban or name.startswith(ban + '.'))
  assert not reached, f'{path.relative_to(PACKAGE)} imports {reached}'


def test_runtime_knows_no_pruning():
  for path in (PACKAGE / 'runtime').glob('*.py'):
    ours = {layer_of_module(name) for name in imports(path) if name.startswith('prospr_jax')}
    assert ours <= {'runtime', 'files'}, path.name


@pytest.mark.parametrize('path', modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_250_lines(path):
  lines = len(path.read_text().splitlines())
  assert lines <= MAX_LINES, f'{path.relative_to(PACKAGE)} has {lines} lines: split it by concept'


def test_the_rules_see_every_folder():
  folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith('__')}
  assert folders == set(ALLOWED) - {CORE}


def test_an_upward_import_is_caught(tmp_path):
  """The rule is not vacuous: a core module importing the harness is reported."""
  fake = tmp_path / 'fake.py'
  fake.write_text('def f():\n  from prospr_jax.harness import experiment\n')
  assert layer_of_module('prospr_jax.harness.experiment') not in ALLOWED[CORE]
  assert 'prospr_jax.harness' in imports(fake)

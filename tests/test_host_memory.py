"""The compiler's freed heap goes back to the OS between compiling a program and running it."""

import platform

import jax
import jax.numpy as jnp
import pytest

from prospr_jax.xla_cpu import host_memory


@pytest.fixture
def trims(monkeypatch):
  """Count the releases; remove the listener afterwards so no other test sees it."""
  calls = []
  monkeypatch.setattr(host_memory, 'release_freed_heap', lambda: calls.append(1) or True)
  yield calls
  if host_memory._listener is not None:
    jax.monitoring.unregister_event_duration_listener(host_memory._listener)
    host_memory._listener = None


def _compile_and_run_something_new(scale: float) -> jax.Array:
  return jax.jit(lambda x: jnp.tanh(x * scale) @ x)(jnp.ones((8, 8)))  # a new lambda: a new compile


@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_release_freed_heap_calls_glibc_malloc_trim():
  assert host_memory.release_freed_heap()


def test_heap_is_released_after_a_compile_and_before_the_program_runs(trims):
  ran_after = []
  host_memory.release_heap_after_compiles(min_compile_seconds=0.0)

  def program(x):
    jax.debug.callback(lambda: ran_after.append(len(trims)))
    return x + 1

  jax.jit(program)(jnp.zeros(3)).block_until_ready()
  assert trims and ran_after == [len(trims)]  # released before the program ran


def test_short_compiles_are_not_followed_by_a_release(trims):
  host_memory.release_heap_after_compiles(min_compile_seconds=1e9)
  _compile_and_run_something_new(2.0).block_until_ready()
  assert not trims


def test_calling_again_replaces_the_threshold_instead_of_adding_a_listener(trims):
  host_memory.release_heap_after_compiles(min_compile_seconds=0.0)
  host_memory.release_heap_after_compiles(min_compile_seconds=1e9)
  _compile_and_run_something_new(3.0).block_until_ready()
  assert not trims

"""How a pruned network starts training: its initial weights, a new draw, or rescaled weights.

``keep`` trains the kept weights from their initial values (ProsPr, SNIP, ...).
The 3SP variants of ProsPr's Table 2 (van Amersfoort et al. 2020), as their
names read (their exact definitions were not in the sources we could reach):

- ``reinit``: the pruned network starts from a fresh draw of its own
  initialiser: for channels, the compact network's init (its fan-in and fan-out
  are the narrow ones); for weights, a new draw of the dense initialiser.
- ``rescale``: each kept unit's incoming weights are multiplied by
  ``sqrt(fan_in / kept fan_in)``, so its pre-activation has the variance it had
  at initialization before pruning removed some of its inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from chex import ArrayTree

from prospr_jax import masks as masks_lib

INITIALIZATIONS = ('keep', 'reinit', 'rescale')


def rescale_kernels(params: ArrayTree, mask: ArrayTree) -> ArrayTree:
  """Kernels times ``sqrt(fan_in / kept fan_in)`` per output unit, for full-shape masks; other leaves unchanged."""
  masks_lib.check_same_structure(mask, params)

  def rescale(m, p):
    if m is None or jnp.ndim(p) < 2 or jnp.shape(m) != jnp.shape(p):
      return p
    fan_in = int(np.prod(jnp.shape(p)[:-1]))
    kept = jnp.sum(jnp.asarray(m).reshape(fan_in, -1), axis=0)
    factor = jnp.where(kept > 0, jnp.sqrt(fan_in / jnp.maximum(kept, 1)), 1.0)  # a removed unit stays as it was
    return p * factor.astype(jnp.result_type(p))

  return jax.tree.map(rescale, mask, params, is_leaf=masks_lib.is_none)


def check_initialization(name: str) -> str:
  if name not in INITIALIZATIONS:
    raise ValueError(f'unknown initialization {name!r}; valid: {", ".join(INITIALIZATIONS)}')
  return name

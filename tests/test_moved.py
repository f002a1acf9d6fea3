"""Names that moved when the package took its layered folders still resolve, each with a DeprecationWarning."""

import importlib
import sys

import pytest

import prospr_jax
from prospr_jax import _moved


@pytest.mark.parametrize('old', sorted(_moved.MOVED))
def test_an_old_module_path_gives_the_new_module_with_a_warning(old):
  sys.modules.pop(f'prospr_jax.{old}', None)
  with pytest.warns(DeprecationWarning, match=f'prospr_jax.{old} moved to prospr_jax.{_moved.MOVED[old]}'):
    module = importlib.import_module(f'prospr_jax.{old}')
  assert module is importlib.import_module(f'prospr_jax.{_moved.MOVED[old]}')


def test_thresholding_and_mask_files_resolve_from_masks_with_a_warning():
  from prospr_jax import mask_files, masks, topk
  with pytest.warns(DeprecationWarning, match='moved to prospr_jax.topk.global_topk_mask'):
    assert masks.global_topk_mask is topk.global_topk_mask
  with pytest.warns(DeprecationWarning, match='moved to prospr_jax.mask_files.load_masks'):
    assert masks.load_masks is mask_files.load_masks
  with pytest.raises(AttributeError, match='no attribute'):
    masks.no_such_name


def test_channel_names_resolve_from_the_channels_package_with_a_warning():
  from prospr_jax.channels import groups
  with pytest.warns(DeprecationWarning, match='moved to prospr_jax.channels.groups.expand'):
    from prospr_jax.channels import expand
  assert expand is groups.expand


def test_every_public_name_of_the_package_face_resolves():
  names = [name for name in dir(prospr_jax) if not name.startswith('_')] + sorted(prospr_jax._LAZY_FLAX_NAMES)
  for name in names:
    assert getattr(prospr_jax, name) is not None, name

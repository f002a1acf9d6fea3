"""A PyTorch reference: VGG-16 (CIFAR) and ResNet-20 as in prospr_jax.models, ProsPr as the authors compute it.

The models are torch twins of ``prospr_jax.models`` (same layers, BatchNorm, pooling, classifier, option-A
shortcuts) that load a Flax ``variables`` tree (HWIO -> OIHW kernels, Dense (in, out) -> (out, in), BatchNorm
scale/bias/mean/var), so both frameworks compute on identical weights and batches. ``meta_gradient`` follows
mil-ad/prospr's ``prospr.prune``: all-ones masks ``c`` with ``requires_grad`` on the conv and linear weights,
``w0 = c * w_init`` (other parameters cloned), M unrolled functional SGD steps (momentum 0, no weight decay) with
``torch.autograd.grad(create_graph=True)`` (exact) or without it (first-order: the inner gradients are constants),
BatchNorm in train mode (batch statistics), then the gradient of the last batch's cross-entropy w.r.t. ``c``.

``benchmarks/saliency.py --reference=torch`` times it; ``--check`` compares it with prospr_jax in float64:

  python benchmarks/torch_reference.py --check
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time

import numpy as np
import rss
import torch
import torch.nn.functional as F
from torch import nn

VGG16_STACK = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512)  # models/vgg.py
MODES = ('train_step', 'exact', 'first_order')
Batch = tuple[torch.Tensor, torch.Tensor]


class VGG16(nn.Module):
  """``VGG(depth=16)``: 3x3 convs with bias, BatchNorm, ReLU, four 2x2 max-pools, global average pool, one Linear."""

  def __init__(self, num_classes: int = 10, in_channels: int = 3):
    super().__init__()
    widths = [w for w in VGG16_STACK if w != 'M']
    self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip([in_channels, *widths], widths))
    self.norms = nn.ModuleList(nn.BatchNorm2d(w, momentum=0.1) for w in widths)  # flax momentum 0.9
    self.fc = nn.Linear(widths[-1], num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    layers = iter(zip(self.convs, self.norms))
    for layer in VGG16_STACK:
      if layer == 'M':
        x = F.max_pool2d(x, 2)
      else:
        conv, norm = next(layers)
        x = F.relu(norm(conv(x)))
    return self.fc(x.mean((2, 3)))

  @staticmethod
  def flax_path(name: str) -> tuple[str, ...]:
    """The Flax module path of the torch module ``name`` (e.g. ``convs.3`` -> ``Conv_3``)."""
    kind, _, index = name.partition('.')
    return ({'convs': f'Conv_{index}', 'norms': f'BatchNorm_{index}', 'fc': 'Dense_0'}[kind],)


class OptionABlock(nn.Module):
  """Basic block; the shortcut subsamples and zero-pads channels, ``extra // 2`` below (models/resnet.py)."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout, momentum=0.1)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout, momentum=0.1)
    self.stride, self.extra = stride, cout - cin

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    if self.stride != 1 or self.extra:
      x = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
    return F.relu(x + y)


class ResNet20(nn.Module):
  """``ResNet20``: a 3x3 stem, 3 stages of 3 option-A blocks (16/32/64 channels), global average pool, Linear."""

  def __init__(self, num_classes: int = 10, in_channels: int = 3):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
    self.bn = nn.BatchNorm2d(16, momentum=0.1)
    ins = [16, 16, 16, 16, 32, 32, 32, 64, 64]
    self.blocks = nn.ModuleList(OptionABlock(cin, 16 * 2**(b // 3), 2 if b in (3, 6) else 1)
                                for b, cin in enumerate(ins))
    self.fc = nn.Linear(64, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.bn(self.conv(x)))
    for block in self.blocks:
      x = block(x)
    return self.fc(x.mean((2, 3)))

  @staticmethod
  def flax_path(name: str) -> tuple[str, ...]:
    """The Flax module path of the torch module ``name`` (e.g. ``blocks.4.bn2`` -> ``OptionABlock_4/BatchNorm_1``)."""
    names = {'conv': 'Conv_0', 'bn': 'BatchNorm_0', 'fc': 'Dense_0', 'conv1': 'Conv_0', 'conv2': 'Conv_1',
             'bn1': 'BatchNorm_0', 'bn2': 'BatchNorm_1'}
    parts = name.split('.')
    return (f'OptionABlock_{parts[1]}', names[parts[2]]) if parts[0] == 'blocks' else (names[parts[0]],)


MODELS = {'vgg16': VGG16, 'resnet20': ResNet20}


def build(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
  """The torch twin of ``prospr_jax.models.get_model(name)``, in train mode, with torch's default init."""
  if name not in MODELS:
    raise ValueError(f'no torch reference for {name!r}; valid: {", ".join(MODELS)}')
  return MODELS[name](num_classes, in_channels).train()


def _lookup(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def load_flax_variables(model: nn.Module, variables) -> nn.Module:
  """Copy a Flax ``{'params', 'batch_stats'}`` tree into ``model`` (dtype kept), so both compute alike."""
  params, stats = variables['params'], variables.get('batch_stats', {})
  state = {}
  for name, module in model.named_modules():
    if not isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
      continue
    path = model.flax_path(name)
    leaves = {key: np.asarray(value) for key, value in _lookup(params, path).items()}
    if isinstance(module, nn.BatchNorm2d):
      moments = _lookup(stats, path)
      state |= {f'{name}.weight': leaves['scale'], f'{name}.bias': leaves['bias'],
                f'{name}.running_mean': np.asarray(moments['mean']), f'{name}.running_var': np.asarray(moments['var'])}
      continue
    kernel = leaves['kernel']
    state[f'{name}.weight'] = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
    if 'bias' in leaves:
      state[f'{name}.bias'] = leaves['bias']
  dtype = next(model.parameters()).dtype
  missing, unexpected = model.load_state_dict({k: torch.tensor(np.array(v), dtype=dtype) for k, v in state.items()},
                                              strict=False)
  missing = [k for k in missing if not k.endswith('num_batches_tracked')]
  if missing or unexpected:
    raise ValueError(f'Flax variables do not fit the torch model: missing {missing}, unexpected {unexpected}')
  return model


def to_flax_layout(model: nn.Module, name: str, tensor: torch.Tensor) -> tuple[str, np.ndarray]:
  """``(flax path, array)`` of parameter ``name``'s gradient: OIHW -> HWIO, (out, in) -> (in, out)."""
  module, _, leaf = name.rpartition('.')
  array = tensor.detach().cpu().numpy()
  array = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T if array.ndim == 2 else array
  return '/'.join((*model.flax_path(module), {'weight': 'kernel'}.get(leaf, leaf))), array


def _loss(model: nn.Module, weights: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], batch: Batch):
  x, y = batch
  return F.cross_entropy(torch.func.functional_call(model, {**weights, **buffers}, (x,)), y)


def meta_gradient(model: nn.Module, batches: list[Batch], *, inner_lr: float = 0.1,
                  first_order: bool = False) -> dict[str, torch.Tensor]:
  """``dL(w_M, batches[M]) / dc`` at ``c = 1`` for every weight with ndim > 1, keyed by parameter name."""
  params = dict(model.named_parameters())
  buffers = {name: b.clone() for name, b in model.named_buffers()}  # running statistics updated and thrown away
  masks = {name: torch.ones_like(p, requires_grad=True) for name, p in params.items() if p.ndim > 1}
  fast = {name: p * masks[name] if name in masks else p.clone() for name, p in params.items()}
  for batch in batches[:-1]:
    grads = torch.autograd.grad(_loss(model, fast, buffers, batch), list(fast.values()), create_graph=not first_order)
    fast = {name: w - inner_lr * g for (name, w), g in zip(fast.items(), grads)}  # functional SGD, momentum 0
  loss = _loss(model, fast, buffers, batches[-1])
  if first_order:  # the authors' first-order path: grad w.r.t. the fast weights, then pushed back to the masks
    grads = torch.autograd.grad(loss, [fast[name] for name in masks])
    return dict(zip(masks, torch.autograd.grad([fast[name] for name in masks], list(masks.values()), grads)))
  return dict(zip(masks, torch.autograd.grad(loss, list(masks.values()))))


def saliency(model: nn.Module, batches: list[Batch], *, inner_lr: float = 0.1,
             first_order: bool = False) -> dict[str, torch.Tensor]:
  """ProsPr scores ``|g| / sum |g|`` over every masked weight."""
  grads = meta_gradient(model, batches, inner_lr=inner_lr, first_order=first_order)
  total = sum(g.abs().sum() for g in grads.values())
  return {name: g.abs() / total for name, g in grads.items()}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> torch.Tensor:
  """One training step: forward, backward, optimizer step."""
  optimizer.zero_grad(set_to_none=True)
  loss = F.cross_entropy(model(batch[0]), batch[1])
  loss.backward()
  optimizer.step()
  return loss.detach()


def run_worker(config: dict) -> dict:
  """Measure one (model, batch_size, steps, mode) of benchmarks/saliency.py in this process, with torch's init."""
  torch.set_num_threads(os.cpu_count())
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  block = torch.cuda.synchronize if device == 'cuda' else lambda: None
  torch.manual_seed(0)
  classes, size, m, batch_size = config.get('num_classes', 10), config.get('image_size', 32), config['steps'], \
      config['batch_size']
  model = build(config['model'], classes).to(device)
  batches = [(torch.randn(batch_size, 3, size, size, device=device),
              torch.randint(0, classes, (batch_size,), device=device)) for _ in range(m + 1)]
  rss_before = rss.peak_rss_bytes()
  if config.get('release_heap', False):  # the same treatment as the JAX side (prospr_jax/xla_cpu/host_memory.py), without jax
    ctypes.CDLL(None).malloc_trim(0)
  rss.reset_peak()  # as saliency.py does after compiling: the peak of the runs alone, beside the whole process's
  if config['mode'] == 'train_step':
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run = lambda: train_step(model, optimizer, batches[0])
  elif config['mode'] in ('exact', 'first_order'):
    run = lambda: saliency(model, batches, first_order=config['mode'] == 'first_order')
  else:
    raise ValueError(f'no torch reference for mode {config["mode"]!r}; valid: {", ".join(MODES)}')
  run()  # warm-up
  block()
  times = []
  for _ in range(max(config['repeats'], 1)):
    start = time.perf_counter()
    run()
    block()
    times.append(time.perf_counter() - start)
  run_peak = rss.peak_since_reset_bytes()
  return dict(config, seconds=statistics.median(times), compile_seconds=None,
              peak_rss_bytes=max(rss_before, run_peak or 0), run_peak_rss_bytes=run_peak, rss_before_bytes=rss_before,
              device_peak_bytes=torch.cuda.max_memory_allocated() if device == 'cuda' else None,
              device=f'{device} ({torch.get_num_threads()} threads)', torch_version=torch.__version__)


def check(models: list[str], batch_size: int = 4, steps: int = 2, inner_lr: float = 0.1) -> dict[str, float]:
  """Max relative difference (per leaf: max |torch - jax| / max |jax|) of the float64 meta-gradients, per model."""
  import jax

  jax.config.update('jax_enable_x64', True)
  import jax.numpy as jnp

  import prospr_jax
  from prospr_jax.models import get_model

  torch.set_num_threads(os.cpu_count())
  worst = {}
  for name in models:
    model = get_model(name, 10)
    key_x, key_y, key_init = jax.random.split(jax.random.key(0), 3)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(key_init, jnp.zeros((1, 32, 32, 3))))
    x = jax.random.normal(key_x, (steps + 1, batch_size, 32, 32, 3), jnp.float64)
    y = jax.random.randint(key_y, (steps + 1, batch_size), 0, 10)
    loss_fn = prospr_jax.flax_loss_fn(model, variables)
    reference = load_flax_variables(build(name).double(), variables)
    batches = [(torch.tensor(np.asarray(x[k]).transpose(0, 3, 1, 2)), torch.tensor(np.asarray(y[k]), dtype=torch.long))
               for k in range(steps + 1)]
    loss_jax = float(loss_fn(variables['params'], (x[0], y[0])))
    loss_torch = float(_loss(reference, dict(reference.named_parameters()), {}, batches[0]).detach())
    print(f'{name}: loss at init jax {loss_jax:.12f} torch {loss_torch:.12f}')
    for first_order in (False, True):
      mode = 'first_order' if first_order else 'exact'
      start = time.perf_counter()
      ours = prospr_jax.prospr_meta_gradient(variables['params'], (x, y), loss_fn=loss_fn, inner_lr=inner_lr,
                                             first_order=first_order)
      ours = {jax.tree_util.keystr(p, simple=True, separator='/'): np.asarray(g)
              for p, g in jax.tree_util.tree_leaves_with_path(ours)}
      jax_seconds, start = time.perf_counter() - start, time.perf_counter()
      theirs = meta_gradient(reference, batches, inner_lr=inner_lr, first_order=first_order)
      torch_seconds = time.perf_counter() - start
      if len(theirs) != len(ours):
        raise AssertionError(f'{name}: torch masks {len(theirs)} weights, prospr_jax {len(ours)}')
      diffs = {}
      for param, grad in theirs.items():
        path, array = to_flax_layout(reference, param, grad)
        diffs[path] = np.abs(array - ours[path]).max() / np.abs(ours[path]).max()
      leaf = max(diffs, key=diffs.get)
      worst[f'{name} {mode}'] = diffs[leaf]
      print(f'{name} {mode:<11} M={steps} batch={batch_size} float64: max rel diff {diffs[leaf]:.2e} ({leaf}); '
            f'jax {jax_seconds:.1f} s (with compile), torch {torch_seconds:.1f} s')
  return worst


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true', help='compare meta-gradients with prospr_jax in float64')
  parser.add_argument('--models', default='resnet20,vgg16')
  parser.add_argument('--batch_size', type=int, default=4)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--tolerance', type=float, default=1e-8)
  args = parser.parse_args()
  if not args.check:
    parser.error('nothing to do: pass --check (benchmarks/saliency.py --reference=torch runs the timings)')
  worst = check(args.models.split(','), args.batch_size, args.steps)
  failed = {k: v for k, v in worst.items() if not v < args.tolerance}
  print('OK' if not failed else f'FAILED (tolerance {args.tolerance:g}): {failed}')
  raise SystemExit(1 if failed else 0)


if __name__ == '__main__':
  main()

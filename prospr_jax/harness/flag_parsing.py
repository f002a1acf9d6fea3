"""Parsing ``--config`` and its overrides: a bad flag ends with one ``error:`` line (exit code 2), not a traceback.

A relative ``--config`` path is tried from the current folder, then from the
folder of the script (prune.py's), so the scripts run from anywhere. Set
``PROSPR_JAX_TRACEBACK=1`` to see the traceback as well.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
import traceback
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

TRACEBACK_ENV = 'PROSPR_JAX_TRACEBACK'
# What a bad --config or --config.<field> raises while absl and ml_collections parse it.
FLAG_ERRORS = (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError)


def report(message: str) -> None:
  """Print ``error: message`` on stderr, after the traceback of the error being handled when asked for one."""
  if os.environ.get(TRACEBACK_ENV, '') not in ('', '0') and sys.exc_info()[0] is not None:
    traceback.print_exc()
    print(f'error: {message}', file=sys.stderr, flush=True)
  else:
    print(f'error: {message} (set {TRACEBACK_ENV}=1 for the traceback)', file=sys.stderr, flush=True)


def resolve_config_path(path: str, root: pathlib.Path) -> str:
  """``path`` (``file.py[:variant]``) as given when it exists from the current folder, else under ``root``."""
  file, colon, variant = path.partition(':')
  if file and not pathlib.Path(file).exists() and (root / file).exists():
    return f'{root / file}{colon}{variant}'
  return path


def _script_root(argv: Sequence[str] | None) -> pathlib.Path:
  return pathlib.Path((argv or sys.argv)[0]).resolve().parent  # prune.py's folder: relative configs fall back to it


def define_config_flag(default: str, help_string: str, flag_values: flags.FlagValues = flags.FLAGS,
                       argv: Sequence[str] | None = None) -> flags.FlagHolder:
  """``--config``, locked; a bad override of the default config (parsed right here) ends with one line."""
  try:
    return config_flags.DEFINE_config_file('config', resolve_config_path(default, _script_root(argv)), help_string,
                                           flag_values=flag_values, lock_config=True, sys_argv=argv)
  except FLAG_ERRORS as error:
    report(describe_flag_error(error, argv or sys.argv))
    sys.exit(2)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's flag parsing (``app.run(main, flags_parser=flag_parsing.parse_flags)``) with one ``error:`` line, exit 2."""
  argv = _with_resolved_config(argv)
  try:
    remaining = flag_values(argv)
    _check_loaded(flag_values)
    _check_tuple_overrides(flag_values)
  except FLAG_ERRORS as error:
    report(describe_flag_error(error, argv))
    sys.exit(2)
  return remaining


def _with_resolved_config(argv: list[str]) -> list[str]:
  """``argv`` with the ``--config`` path (``--config=path`` or ``--config path``) resolved by resolve_config_path."""
  argv, root = list(argv), _script_root(argv)
  for i, arg in enumerate(argv):
    if re.fullmatch(r'--?config', arg) and i + 1 < len(argv):
      argv[i + 1] = resolve_config_path(argv[i + 1], root)
    elif match := re.match(r'--?config=', arg):
      argv[i] = match.group() + resolve_config_path(arg[match.end():], root)
  return argv


def _check_loaded(flag_values: flags.FlagValues) -> None:
  """ml_collections defers a config file's load error to the first access: raise it now."""
  config = flag_values['config'].value
  if not isinstance(config, ml_collections.ConfigDict):
    getattr(config, 'keys', None)  # raises the deferred OSError, if that is what it is
    raise TypeError(f'--config: get_config() returned a {type(config).__name__}, not an ml_collections.ConfigDict')


def _check_tuple_overrides(flag_values: flags.FlagValues) -> None:
  """A tuple field takes any words on the command line (``('abc',)``): refuse elements unlike its default's."""
  for name in list(flag_values):
    flag = flag_values[name]
    kinds = {type(x) for x in flag.default or ()} if isinstance(flag, flags.MultiFlag) and flag.present else set()
    if len(kinds) == 1 and any(type(x) not in kinds | ({int} if float in kinds else set()) for x in flag.value):
      raise ValueError(f'--{name}={",".join(map(str, flag.value))}: expected {kinds.pop().__name__}s like the default '
                       f'{",".join(map(str, flag.default))}; write --{name}=10,20 or repeat the flag once per value')


def _plain_message(error: BaseException) -> str:
  """The text of ``error``, unwrapped from the ``AttributeError(KeyError(text))`` that ml_collections raises."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return error.args[0] if error.args and isinstance(error.args[0], str) else str(error)


def describe_flag_error(error: BaseException, argv: Sequence[str]) -> str:
  """One line naming the bad flag and the fix, from what absl or ml_collections raised."""
  message = _plain_message(error)
  key = message.splitlines()[0].strip('\'"') if message else ''
  flag = next((arg for arg in argv if re.match(r'--?config\.', arg) and key in re.split(r'[.=]', arg)[1:]), None)
  if isinstance(error, (KeyError, AttributeError)) and flag:
    hint = re.search(r'Did you mean "([^"]+)"', message)
    fix = f'did you mean "{hint.group(1)}"?' if hint else 'see the config file for the field names'
    return f'{flag}: the config has no field {key!r}; {fix}'
  if 'Error whilst parsing config file' in message:
    flag = message.split(': Error whilst', 1)[0].removeprefix('flag ')
    cause = [line.strip() for line in message.splitlines() if line.strip()][-1]
    if 'get_config() takes 0 positional arguments' in cause:
      return (f'{flag}: this config takes no variant; drop the ":{flag.partition(":")[2]}" (variants such as '
              ':runlocal belong to configs whose get_config takes one, e.g. configs/cifar10_vgg16.py:runlocal)')
    return f'{flag}: {cause}'
  if isinstance(error, OSError):
    return (f'--config: cannot load the config file ({str(error.__cause__ or error).splitlines()[-1].strip()}); '
            f'a relative path is tried from the current folder, then from {_script_root(argv)}')
  text = ' '.join(line.strip() for line in message.removeprefix('flag ').splitlines())
  return text if isinstance(error, flags.Error) else f'--config: {type(error).__name__}: {text}'

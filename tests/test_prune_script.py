"""`python prune.py` runs end to end on the built-in offline example."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_prune_py_prints_a_sparsity_report_and_an_accuracy_table():
  out = subprocess.run([sys.executable, 'prune.py', '--epochs=3', '--criteria=prospr,random', '--sparsity=0.9'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
  assert 'Dense_0/kernel' in out and '10.00%' in out  # the report's total density
  table = out[out.index('test accuracy'):].splitlines()[1:]
  assert [row.split()[0] for row in table] == ['dense', 'prospr', 'random']
  accuracies = [float(row.split()[-1].rstrip('%')) for row in table]
  assert accuracies[0] > 80  # three epochs already learn digits; a broken pipeline sits near 10%

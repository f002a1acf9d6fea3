"""A grid of experiments, criterion x sparsity x seed plus the dense network per seed: run, resume, aggregate, plot.

Each cell is a normal run (``experiment.prune_and_train`` or, dense,
``train_and_evaluate``) in ``<workdir>/cells/...``; a finished cell is skipped,
so a stopped sweep continues where it stopped. After every cell the finished
ones are gathered into ``results.jsonl``, ``table.md`` / ``table.csv`` (the
paper's appendix B layout) and the accuracy-vs-sparsity figure (Figure 2).
Beside the registry's criteria, a sweep runs the two references of Figure 2
that prune after training (``after_training``) from the dense cell of each seed.
"""

from prospr_jax.sweep.commands import cell_command, config_overrides, pending_cells, pending_commands
from prospr_jax.sweep.grid import (
    DENSE,
    PAPER_SPARSITIES,
    Cell,
    Grid,
    cell_config,
    make_grid,
    parse_criteria,
    parse_sparsities,
)
from prospr_jax.sweep.imported import ImportOutcome, ResultsImportError, import_results
from prospr_jax.sweep.record import SweepConfigError
from prospr_jax.sweep.runner import (
    CellInterrupted,
    SweepOutcome,
    aggregate,
    enable_compilation_cache,
    run_only_cell,
    run_sweep,
    validate_sweep,
)

__all__ = ['DENSE', 'PAPER_SPARSITIES', 'Cell', 'CellInterrupted', 'Grid', 'ImportOutcome', 'ResultsImportError',
           'SweepConfigError', 'SweepOutcome', 'aggregate', 'cell_command', 'cell_config', 'config_overrides',
           'enable_compilation_cache', 'import_results', 'make_grid', 'parse_criteria', 'parse_sparsities',
           'pending_cells', 'pending_commands', 'run_only_cell', 'run_sweep', 'validate_sweep']

"""Model selection: a hyperparameter search with cross-validation, chosen on validation,
reported on test (``semdb train DATA --search N``).

- :mod:`~training.selection.space`: the search space (defaults, a TOML file to override);
- :mod:`~training.selection.folds`: the test hold-out and K folds by query;
- :mod:`~training.selection.study`: the Optuna study in semdb's PostgreSQL (shared, resumable);
- :mod:`~training.selection.objective`: one trial (a run per fold, reported, pruned);
- :mod:`~training.selection.search`: from checks to the retrained, tested model;
- :mod:`~training.selection.report`: selection.json, the table, selection.png.

Only ``space`` and ``folds`` are imported here: checking a search needs no torch.
"""

from training.selection.folds import check_folds, hold_out_test, query_folds
from training.selection.space import DEFAULT_SPACE, SearchSpace

__all__ = ["DEFAULT_SPACE", "SearchSpace", "check_folds", "hold_out_test", "query_folds"]

"""``semdb quickstart``: the whole product, end to end, on real text, in a few minutes.

The journey, by module:

- :mod:`semdb.quickstart.stdlib_docs`: the default corpus, the documentation of the running
  interpreter's standard library (modules, classes, functions, methods);
- :mod:`semdb.evaluation.beir`: a corpus of the user's own (``--data DIR``, BEIR layout),
  and its queries and relevance judgements when present;
- :mod:`semdb.quickstart.tables`: the tables both land in (schema ``quickstart``), declared
  with :func:`semdb.embedding_column` like any user table;
- :mod:`semdb.quickstart.loading`: rows upserted so that a second run changes nothing;
- :mod:`semdb.quickstart.examples`: the example searches (semantic, filtered, hybrid), run
  through :func:`semdb.search` and printed with the SQL that does the same from psql;
- :mod:`semdb.quickstart.evaluation`: nDCG@10 and friends of the loaded model on a BEIR
  folder's qrels, through the table's vectors;
- :mod:`semdb.quickstart.job`: the steps in order (database, model, corpus, embedding, index,
  examples), each timed, with progress bars.

From Python: ``semdb.quickstart.job.run_quickstart()``. This package imports nothing at
import time: :mod:`~semdb.quickstart.stdlib_docs` runs in a child process that should load
as little as possible.
"""

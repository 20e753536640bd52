"""semdb's training package: fine-tune text encoders, evaluate them, export them to ONNX.

Needs the ``train`` extra (torch, transformers, optimum, sentence-transformers); the semdb
runtime never imports it (training depends on semdb, never the reverse: the retrieval
metrics and BEIR folder reading it shares with ``semdb quickstart`` are
:mod:`semdb.evaluation`'s). The journey, by module:

- :mod:`training.data`: BEIR folders, JSON lines, SQL queries -> a deduplicated
  :class:`~training.data.RetrievalSet`, split by query with a seed;
- :mod:`training.negatives`: hard negatives mined with the current model through pgvector;
- :mod:`training.config`, :mod:`training.trainer`: the contrastive fine-tuning run
  (:mod:`training.fine_tune` puts data, mining and training together: ``semdb train``);
- :mod:`training.encoders`, :mod:`training.vector_search`, :mod:`training.evaluate`: scores
  through the production path (``semdb eval``), by :mod:`semdb.evaluation.metrics`;
- :mod:`training.export`, :mod:`training.publish`: ONNX bundle, model store, registry with
  metrics (``semdb export``).
"""

"""Model bundles: the ONNX graphs, tokenizer and manifest a model ships as, and where they live.

- :mod:`semdb.bundles.manifest`: the manifest (``manifest.json``).
- :mod:`semdb.bundles.bundle`: a bundle folder, its files verified by sha256.
- :mod:`semdb.bundles.store`: the local store, ``SEMDB_HOME/models/<name>/<version>/``.
- :mod:`semdb.bundles.registry`: the database's registry of models (``semdb.models``); it is
  imported on demand so that the embedder, which reads bundles, never loads SQLAlchemy code.

Never imports torch or ONNX Runtime.
"""

from semdb.bundles.bundle import ONNX_FILES, PRECISIONS, Bundle
from semdb.bundles.manifest import Manifest
from semdb.bundles.store import DEFAULT_MODEL, find_bundle, list_bundles, models_home

__all__ = [
    "DEFAULT_MODEL",
    "ONNX_FILES",
    "PRECISIONS",
    "Bundle",
    "Manifest",
    "find_bundle",
    "list_bundles",
    "models_home",
]

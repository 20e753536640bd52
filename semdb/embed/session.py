"""One ONNX Runtime session over one bundle graph: created, checked, run batch by batch.

On CUDA the batch goes through IO binding: inputs are copied to the device once, the output
is allocated by ONNX Runtime on the device and copied back once, with no intermediate host
copies. On the CPU a plain ``run`` is as fast (IO binding also works there, which is how the
binding path is tested on machines without a GPU).

``run`` is safe to call from several threads at once (ONNX Runtime's ``InferenceSession.run``
is): the Embedder's CPU streams share one session, each run on one intra-op thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from semdb.bundles.bundle import OUTPUT_NAME
from semdb.embed import providers
from semdb.errors import BundleError

log = logging.getLogger(__name__)

KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxSession:
    """An ``InferenceSession`` for a sentence-embedding graph on ``cuda`` or ``cpu``."""

    def __init__(
        self,
        path: Path,
        provider: str,
        *,
        threads: int | None = None,
        io_binding: bool | None = None,
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = threads
        # Threads that finish an operator early sleep instead of spinning for the next one:
        # as fast on an idle machine (MiniLM int8 on 2 cores, 170 against 166 texts/s), faster
        # on a busy one (25 against 22), and no core burnt between calls (bench/embed.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only; what runs is checked below
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=providers.execution_providers(provider)
            )
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise BundleError(
                f"ONNX Runtime cannot load {path.name} from {path.parent}: {exc}"
            ) from exc
        self.path = path
        self.provider = providers.active_provider(self.session)
        self.io_binding = (self.provider == "cuda") if io_binding is None else io_binding
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = [name for name in self.input_names if name not in KNOWN_INPUTS]
        outputs = [o.name for o in self.session.get_outputs()]
        if unknown or "input_ids" not in self.input_names or OUTPUT_NAME not in outputs:
            raise BundleError(
                f"{path.name} is not a sentence-embedding graph: inputs {self.input_names}, "
                f"outputs {outputs} (expected input_ids, attention_mask -> {OUTPUT_NAME})"
            )

    def run(
        self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Embeddings (float32, rows x dimension) for one padded batch."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        feed = {name: feed[name] for name in self.input_names}
        if self.io_binding:
            result = self._run_bound(feed)
        else:
            result = self.session.run([OUTPUT_NAME], feed)[0]
        return np.asarray(result, dtype=np.float32)

    def _run_bound(self, feed: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
        device = "cuda" if self.provider == "cuda" else "cpu"
        binding = self.session.io_binding()
        for name, array in feed.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0)
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(OUTPUT_NAME, device)
        self.session.run_with_iobinding(binding)
        outputs: list[npt.NDArray[np.float32]] = binding.copy_outputs_to_cpu()
        return outputs[0]

"""From texts to model inputs: check the texts, tokenise, sort by length, batch by a token budget.

Padding costs as much compute as real tokens, so texts are sorted by token count and cut into
batches whose padded size (rows x longest row) stays under a token budget: short texts travel
in wide batches, long texts in narrow ones, and almost nothing is padding.

The trap this module exists to avoid: a ``tokenizer.json`` written by an exporter may carry a
fixed padding (optimum writes 128) and a truncation that is not the model's. Here padding is
always off, truncation is the model's own ``max_tokens``, and masks come from each encoding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

from semdb.errors import BundleError, InvalidTextError, TextTypeError


def check_texts(texts: Iterable[str]) -> list[str]:
    """``texts`` as a list, or an error naming the first element that is not a valid text."""
    if isinstance(texts, (str, bytes)):
        raise TextTypeError(
            f"texts must be a list of strings, not one {type(texts).__name__}",
            fix="wrap it in a list ([text]) or call embed_query(text)",
        )
    try:
        items = list(texts)
    except TypeError:
        raise TextTypeError(
            f"texts must be a list of strings, not {type(texts).__name__}"
        ) from None
    for index, text in enumerate(items):
        if not isinstance(text, str):
            hint = " (decode bytes to str first)" if isinstance(text, (bytes, bytearray)) else ""
            raise TextTypeError(
                f"text {index} is {'None' if text is None else type(text).__name__}, "
                f"not a string{hint}"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidTextError(
                f"text {index} is not valid UTF-8: {exc.reason} at character {exc.start} "
                f"({text[exc.start : exc.end]!r})",
                fix="decode the source bytes with the right encoding (errors='replace' keeps "
                "the rest of the text)",
            ) from None
    return items


@dataclass(frozen=True)
class Tokenized:
    """The encodings of a list of texts, in input order."""

    encodings: list[Encoding]
    lengths: npt.NDArray[np.int64]
    truncated: npt.NDArray[np.bool_]


class TextTokenizer:
    """A bundle's ``tokenizer.json`` with padding off and truncation at the model's max tokens."""

    def __init__(self, path: Path, max_tokens: int) -> None:
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception
            raise BundleError(f"{path.name} in {path.parent} cannot be loaded: {exc}") from exc
        padding = tokenizer.padding
        self.pad_id = int(padding["pad_id"]) if padding else 0
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def tokenize(self, texts: list[str]) -> Tokenized:
        encodings = self.tokenizer.encode_batch(texts) if texts else []
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        truncated = np.fromiter(
            (bool(e.overflowing) for e in encodings), dtype=np.bool_, count=len(texts)
        )
        return Tokenized(encodings, lengths, truncated)


def plan_batches(lengths: npt.NDArray[np.int64], token_budget: int) -> list[npt.NDArray[np.intp]]:
    """Index arrays, longest texts first, each batch's rows x longest row <= ``token_budget``.

    A text longer than the budget travels alone.
    """
    order = np.argsort(-lengths, kind="stable")
    batches: list[npt.NDArray[np.intp]] = []
    start = 0
    while start < len(order):
        widest = max(int(lengths[order[start]]), 1)
        rows = max(1, token_budget // widest)
        batches.append(order[start : start + rows])
        start += rows
    return batches


def pad_batch(
    encodings: list[Encoding], indices: npt.NDArray[np.intp], pad_id: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``input_ids`` and ``attention_mask`` (int64, rows x longest) for the chosen encodings."""
    chosen = [encodings[i] for i in indices]
    width = max(len(e.ids) for e in chosen)
    input_ids = np.full((len(chosen), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(chosen), width), dtype=np.int64)
    for row, encoding in enumerate(chosen):
        size = len(encoding.ids)
        input_ids[row, :size] = encoding.ids
        attention_mask[row, :size] = encoding.attention_mask
    return input_ids, attention_mask

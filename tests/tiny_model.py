"""A tiny sentence-transformers model, built from nothing in a few seconds, for tests.

BERT with 2 layers of width 32, a WordPiece vocabulary learnt from a few hundred English
sentences (the docstrings of Python's standard library, always at hand), mean pooling and L2
normalisation: the same architecture as all-MiniLM-L6-v2, small enough for CI. Its weights
are random (seeded), so its vectors are deterministic but carry no meaning.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

SEED = 20261122
MAX_TOKENS = 64


def corpus_sentences(limit: int = 600) -> list[str]:
    """Real English sentences from the standard library's docstrings."""
    import collections
    import email
    import json as json_module
    import pathlib
    import subprocess
    import textwrap

    sentences: list[str] = []
    for module in (collections, email, json_module, pathlib, subprocess, textwrap, inspect, os):
        for _, member in inspect.getmembers(module):
            doc = inspect.getdoc(member)
            if not doc:
                continue
            for part in doc.replace("\n", " ").split(". "):
                part = part.strip()
                if 20 <= len(part) <= 200:
                    sentences.append(part)
    unique = list(dict.fromkeys(sentences))
    return unique[:limit]


def build_tiny_sentence_transformer(
    target: Path, *, vocab_size: int = 1000, hidden_size: int = 32, seed: int | None = None
) -> Path:
    """Write a sentence-transformers model folder at ``target`` and return it
    (``hidden_size``: the embedding dimension; ``seed``: other weights)."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 5.7 moved the modules
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    target = Path(target)
    backbone = target / "backbone"
    backbone.mkdir(parents=True, exist_ok=True)

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(
        corpus_sentences(), WordPieceTrainer(vocab_size=vocab_size, special_tokens=special)
    )
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_TOKENS,
    )
    fast.save_pretrained(backbone)

    torch.manual_seed(SEED if seed is None else seed)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=MAX_TOKENS * 2,
    )
    BertModel(config).save_pretrained(backbone)

    transformer = Transformer(str(backbone), max_seq_length=MAX_TOKENS)
    dimension = getattr(transformer, "get_embedding_dimension", None)
    dimension = dimension or transformer.get_word_embedding_dimension
    pooling = Pooling(dimension(), "mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    model.save(str(target / "model"))
    (target / "model" / "TINY_MODEL.json").write_text(
        json.dumps({"seed": SEED if seed is None else seed})
    )
    return target / "model"


if __name__ == "__main__":  # python -m tests.tiny_model /tmp/tiny
    import sys

    print(build_tiny_sentence_transformer(Path(sys.argv[1])))

"""Real sentences the exporter embeds twice (PyTorch and ONNX Runtime) to prove the export.

Varied on purpose: short and long, questions and statements, technical and everyday English,
accents, other scripts, numbers, markup, an empty string, and two texts longer than 256
tokens (truncation must cut at the same token in both engines).
"""

from __future__ import annotations

SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password if I no longer have access to my email?",
    "PostgreSQL stores each table as a heap of pages, eight kilobytes each by default.",
    "She sold the old piano to a neighbour who had always admired it.",
    "Vector search finds the documents whose embeddings lie closest to the query.",
    "Heavy rain is expected across the northern coast tomorrow afternoon.",
    "What time does the last train to the airport leave on Sundays?",
    "The committee postponed its decision until the budget figures are final.",
    "Add two cups of flour, a pinch of salt and stir until the dough is smooth.",
    "A B-tree keeps keys sorted so that range scans read neighbouring pages.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The museum reopens in March after a two-year renovation of its east wing.",
    "Why does my laptop fan spin loudly even when nothing is running?",
    "He apologised for the delay and promised the parcel would arrive on Friday.",
    "Transformers process every token of a sentence in parallel with self-attention.",
    "The library lends e-readers to anyone with a valid membership card.",
    "Interest rates rose by a quarter of a point, the third rise this year.",
    "Do not mix bleach with ammonia: the fumes are toxic.",
    "A command-line tool to convert Markdown documents into HTML and PDF.",
    "Free, open-source, cross-platform real-time strategy game of ancient warfare.",
    "Python bindings for the GTK widget toolkit, with introspection support.",
    "Shared library for reading and writing compressed archives in many formats.",
    "The patient reported mild headaches and occasional dizziness after the dose.",
    "Our team won the match three goals to one despite playing with ten men.",
    "Ça coûte 12,50 € à Zürich, naïve café au lait compris.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "Emoji in text 🙂 should not break tokenisation 🚀.",
    "SELECT id, title FROM documents WHERE embedding <=> $1 < 0.3 ORDER BY 2 LIMIT 10;",
    "<p>An HTML <b>fragment</b> with &amp; entities and a <a href='#'>link</a>.</p>",
    "Version 2.14.1 fixed CVE-2024-12345, a buffer overflow in the parser (CVSS 9.8).",
    "ok",
    "",
    "   ",
    "Translate the following sentence into French: where is the nearest pharmacy?",
    "The mitochondria is often called the powerhouse of the cell.",
    "Please remember to water the plants while I am away next week.",
    "Graph neural networks pass messages along edges to update node representations.",
    "The bridge was closed for inspection after a lorry struck one of its pillars.",
    (
        "This package provides the development files for a small C library that parses "
        "configuration files written in a simple INI-like syntax. Sections, keys and values "
        "are read into a tree that applications can walk, modify and write back; comments "
        "and the order of entries are preserved so that files edited by people keep their "
        "shape."
    ),
    " ".join(
        [
            "Long documents are truncated at the model's maximum number of tokens, and both "
            "engines must cut them at exactly the same place, otherwise their vectors differ."
        ]
        * 12
    ),
    " ".join(
        f"Item {n}: a line of an inventory list with a price of {n * 3}.99 and a code X{n:04d}."
        for n in range(60)
    ),
)

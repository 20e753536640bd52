"""semdb's training package: fine-tune text encoders, evaluate them, export them to ONNX.

Needs the ``train`` extra (torch, transformers, optimum, sentence-transformers); the semdb
runtime never imports it at start-up.
"""

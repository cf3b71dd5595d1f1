"""Serving: continuous batching over the step API (loop.py), an OpenAI-compatible HTTP server
(openai_server.py, `redrafter serve`) and a Triton Inference Server model (triton.py)."""

"""Serving: a Triton Inference Server model repository written from a model directory."""

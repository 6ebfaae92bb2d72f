"""The WebR (Web Reconstruction) method, step by step (see docs/webr.md)."""

"""An offline demo of the whole factory with a real instruct model (SmolLM2-135M-Instruct from a PyPI wheel)."""

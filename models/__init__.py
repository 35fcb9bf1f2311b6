"""``candlejax.models``: model families with Hugging Face weight names (~ candle-transformers)."""

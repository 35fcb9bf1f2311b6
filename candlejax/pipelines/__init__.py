"""Serving pipelines on top of the models: sentence embeddings and text generation.

>>> from candlejax.pipelines import SentenceEmbedder, TextGeneration
"""

from candlejax.pipelines.sentence_embedding import SentenceEmbedder, mean_pool, resolve_model_dir
from candlejax.pipelines.text_generation import TextGeneration, processor_from, sampling_from

__all__ = ["SentenceEmbedder", "TextGeneration", "mean_pool", "processor_from", "resolve_model_dir", "sampling_from"]

"""Serving pipelines on top of the models: sentence embeddings, text generation, CLIP zero-shot,
BLIP captions, YOLO detection.

>>> from candlejax.pipelines import ImageCaptioner, ObjectDetector, SentenceEmbedder, TextGeneration, ZeroShotClassifier
"""

from candlejax.pipelines.caption import ImageCaptioner
from candlejax.pipelines.detect import ObjectDetector
from candlejax.pipelines.sentence_embedding import SentenceEmbedder, mean_pool, resolve_model_dir
from candlejax.pipelines.text_generation import TextGeneration, processor_from, sampling_from
from candlejax.pipelines.zero_shot import ZeroShotClassifier

__all__ = ["ImageCaptioner", "ObjectDetector", "SentenceEmbedder", "TextGeneration", "ZeroShotClassifier", "mean_pool",
           "processor_from", "resolve_model_dir", "sampling_from"]  # fmt: skip

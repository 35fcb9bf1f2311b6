"""The pipelines' loaders on a path that is not a str or os.PathLike: a candlejax error naming the
loader (``os.fspath`` / ``Path`` raised a bare ``TypeError``); arguments checked before any model runs."""

from __future__ import annotations

import re

import pytest

from candlejax import errors
from candlejax.pipelines import ImageCaptioner, ObjectDetector, SentenceEmbedder, TextGeneration, ZeroShotClassifier


@pytest.mark.parametrize("load, what", [
    (ZeroShotClassifier.from_pretrained, "ZeroShotClassifier.from_pretrained: model_dir"),
    (ImageCaptioner.from_pretrained, "ImageCaptioner.from_pretrained: model_dir"),
    (TextGeneration.from_pretrained, "TextGeneration.from_pretrained: path"),
    (SentenceEmbedder.from_dir, "hub: a model folder or hub id"),
    (ObjectDetector.from_file, "yolo.load: path"),
])  # fmt: skip
@pytest.mark.parametrize("bad", [None, 3, ["a/b"]])
def test_loaders_name_a_path_of_the_wrong_type(load, what, bad):
    want = re.escape(f"{what} must be a str or os.PathLike, got {bad!r}")
    with pytest.raises(errors.InvalidArgument, match=want):
        load(bad)


@pytest.mark.parametrize("labels, got", [(None, "None (NoneType)"), (3, "3 (int)"), ([["cat"]], "['cat'] (list)"),
                                         (["cat", 5], "5 (int)")])  # fmt: skip
def test_zero_shot_labels_of_the_wrong_type(labels, got):
    """Checked before the tokenizer or the model run: the classifier needs no weights here."""
    clf = ZeroShotClassifier.__new__(ZeroShotClassifier)
    clf._text = {}
    with pytest.raises(errors.InvalidArgument, match=re.escape(got)):
        clf.text_features(labels)

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


@pytest.mark.parametrize("kw, want", [
    ({"conf": "x"}, "ObjectDetector: conf must be a number, got 'x' (str)"),
    ({"iou": None}, "ObjectDetector: iou must be a number, got None (NoneType)"),
    ({"conf": float("nan")}, "ObjectDetector: conf must be finite, got nan"),
    ({"imgsz": "640"}, "ObjectDetector: imgsz must be an int, got '640' (str)"),
    ({"imgsz": 640.5}, "ObjectDetector: imgsz must be an int, got 640.5 (float)"),
    ({"imgsz": (320, "x")}, "ObjectDetector: imgsz must be an int, got 'x' (str)"),
    ({"imgsz": (1, 2, 3)}, "ObjectDetector: imgsz must be an int or an (h, w) pair of ints, got (1, 2, 3)"),
    ({"imgsz": 0}, "ObjectDetector: imgsz must be positive, got 0"),
])  # fmt: skip
def test_object_detector_settings_of_the_wrong_type(kw, want):
    """float() / int() raised a bare ValueError / TypeError; checked before any model runs."""
    with pytest.raises(errors.InvalidArgument, match=re.escape(want)):
        ObjectDetector(None, **kw)


def test_object_detector_keeps_settings():
    import numpy as np

    det = ObjectDetector(None, conf=np.float32(0.5), iou=1, imgsz=(320, np.int64(480)))
    assert (det.conf, det.iou, det.imgsz) == (0.5, 1.0, (320, 480))  # an (h, w) pair, as yolo.detect takes
    assert ObjectDetector(None, imgsz=np.int64(320)).imgsz == 320


@pytest.mark.parametrize("bad, want", [("x", "got 'x' (str)"), (2.5, "got 2.5 (float)"), (-1, "got -1")])
def test_zero_shot_cache_size_of_the_wrong_type(bad, want):
    with pytest.raises(errors.InvalidArgument, match=r"ZeroShotClassifier: cache_size must be .*" + re.escape(want)):
        ZeroShotClassifier(None, tokenizer=object(), cache_size=bad)

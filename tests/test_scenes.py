"""The demo model's synthetic-scene generator (models/scenes.py): shapes, determinism, masks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "models" / "scenes.py"


def _load_scenes():
    spec = importlib.util.spec_from_file_location("demo_scenes", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scenes = _load_scenes()


@pytest.fixture(scope="module")
def dataset():
    return scenes.make_dataset(64, seed=123)


def test_classes_are_four_distinct_names():
    assert len(scenes.CLASSES) == 4
    assert len(set(scenes.CLASSES)) == 4


def test_make_scene_shapes_and_dtypes():
    image, label, mask = scenes.make_scene(np.random.default_rng(0))
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert isinstance(label, int) and 0 <= label < len(scenes.CLASSES)
    assert mask.shape == (96, 96) and mask.dtype == bool


@pytest.mark.parametrize("size", [64, 96, 128])
def test_make_scene_other_sizes(size):
    image, _, mask = scenes.make_scene(np.random.default_rng(1), size=size)
    assert image.shape == (size, size, 3)
    assert mask.shape == (size, size)
    assert mask.any()


def test_make_dataset_shapes_and_dtypes(dataset):
    images, labels, masks = dataset
    assert images.shape == (64, 96, 96, 3) and images.dtype == np.uint8
    assert labels.shape == (64,) and labels.dtype == np.int64
    assert masks.shape == (64, 96, 96) and masks.dtype == bool


def test_labels_in_range_and_all_classes_present(dataset):
    _, labels, _ = dataset
    assert labels.min() >= 0 and labels.max() < len(scenes.CLASSES)
    assert set(labels.tolist()) == set(range(len(scenes.CLASSES)))


def test_same_seed_same_dataset(dataset):
    again = scenes.make_dataset(64, seed=123)
    for a, b in zip(dataset, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_differ(dataset):
    other = scenes.make_dataset(64, seed=124)
    assert not np.array_equal(dataset[0], other[0])
    assert not np.array_equal(dataset[2], other[2])


def test_masks_non_empty_object_sized_and_inside(dataset):
    _, _, masks = dataset
    areas = masks.sum(axis=(1, 2))
    # smallest object (18 px triangle) covers over 100 px, largest (36 px circle) about 1000
    assert areas.min() > 100 and areas.max() < 96 * 96 // 4
    # the object lies fully inside the image: no mask pixel on the border
    assert not masks[:, 0, :].any() and not masks[:, -1, :].any()
    assert not masks[:, :, 0].any() and not masks[:, :, -1].any()


def test_mask_covers_a_uniform_object(dataset):
    """Under the mask sits one flat colour plus pixel noise; it contrasts with its surroundings."""
    import cv2

    images, _, masks = dataset
    for image, mask in zip(images, masks, strict=True):
        inside = image[mask].astype(np.float64)
        assert inside.std(axis=0).max() < 12  # noise sigma is 8 (less where clipped)
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~mask
        outside = image[ring].astype(np.float64)
        assert np.abs(inside.mean(axis=0) - outside.mean(axis=0)).sum() > 40


def test_one_object_per_image(dataset):
    """The mask is a single connected region (one object)."""
    import cv2

    _, _, masks = dataset
    for mask in masks:
        n, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        assert n == 2  # background + the object


def test_generator_does_not_need_torch():
    source = _PATH.read_text()
    assert "torch" not in source.replace("no torch", "")

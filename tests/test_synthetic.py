import numpy as np
import pytest

from bench.config import DataConfig
from bench.data.synthetic import generate_image, load_synthetic


def test_same_seed_same_images_and_masks(tmp_path):
    cfg = DataConfig(name="synthetic", image_size=24, options={"num_images": 12, "seed": 3})
    a, b = load_synthetic(cfg, tmp_path), load_synthetic(cfg, tmp_path)
    assert (a.images == b.images).all() and (a.masks == b.masks).all()
    assert a.fingerprint == b.fingerprint


def test_other_seed_other_images(tmp_path):
    a = load_synthetic(DataConfig(options={"num_images": 6, "seed": 0}), tmp_path)
    b = load_synthetic(DataConfig(options={"num_images": 6, "seed": 1}), tmp_path)
    assert not (a.images == b.images).all()
    assert a.fingerprint != b.fingerprint


def test_image_does_not_depend_on_count():
    img, mask = generate_image(0, 5, 2, 20)
    again, again_mask = generate_image(0, 5, 2, 20)
    assert (img == again).all() and (mask == again_mask).all()


@pytest.mark.parametrize(("classes", "size"), [(2, 16), (8, 32), (11, 48)])
def test_any_class_count_and_size(tmp_path, classes, size):
    cfg = DataConfig(image_size=size, options={"num_classes": classes, "num_images": classes * 3})
    data = load_synthetic(cfg, tmp_path)
    assert data.images.shape == (classes * 3, 3, size, size)
    assert sorted(set(data.labels.tolist())) == list(range(classes))
    assert len(data.classes) == classes


def test_masks_mark_the_lesion(tmp_path):
    data = load_synthetic(DataConfig(image_size=32, options={"num_images": 30}), tmp_path)
    masks = data.masks.numpy()
    areas = masks.reshape(len(masks), -1).mean(1)
    assert (areas > 0.01).all() and (areas < 0.5).all()
    images = data.images.numpy().astype(float)
    inside = np.array([images[i][:, masks[i]].mean(1) for i in range(len(masks))])
    outside = np.array([images[i][:, ~masks[i]].mean(1) for i in range(len(masks))])
    assert np.abs(inside - outside).sum(1).mean() > 20  # lesions differ visibly from mucosa


def test_classes_differ_in_lesion_shape(tmp_path):
    _, disk = generate_image(0, 0, 0, 64)
    _, ring = generate_image(0, 0, 2, 64)
    assert not (disk == ring).all()

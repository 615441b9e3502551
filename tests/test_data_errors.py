"""Bad input stops a run with a clear error naming the file or folder, exit 2, nothing stored."""

from __future__ import annotations

import logging

import pytest

from bench.config import DataConfig
from bench.data import prepare
from bench.errors import DataError
from tests.imaging import make_folder, write_image


def folder_cfg(root, size=16):
    return DataConfig(name="imagefolder", root=str(root), image_size=size,
                      split={"val": 0.2, "test": 0.3})


def test_good_folder_loads_with_classes_in_folder_order(tmp_path):
    data = prepare(folder_cfg(make_folder(tmp_path / "d", ("zeta", "alpha"))))
    assert data.images.classes == ["alpha", "zeta"]
    assert data.images.images.shape == (12, 3, 16, 16)
    assert data.images.ids[0] == "alpha/0.png"


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d")
    first = prepare(folder_cfg(root))
    import bench.data.imagefolder as imagefolder

    monkeypatch.setattr(imagefolder, "decode_image", lambda *a: pytest.fail("decoded again"))
    second = prepare(folder_cfg(root))
    assert (first.images.images == second.images.images).all()
    assert first.split.manifest_hash == second.split.manifest_hash


def corrupt_truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_zero(path):
    path.write_bytes(b"")


def corrupt_garbage(path):
    path.write_bytes(b"this is not an image at all" * 10)


@pytest.mark.parametrize(("corrupt", "message"), [
    (corrupt_truncated, "cannot read image"),
    (corrupt_zero, "zero-byte"),
    (corrupt_garbage, "cannot read image"),
])
def test_broken_image_is_named(tmp_path, corrupt, message):
    root = make_folder(tmp_path / "d")
    bad = root / "b" / "3.png"
    corrupt(bad)
    with pytest.raises(DataError, match=message) as err:
        prepare(folder_cfg(root))
    assert str(bad) in str(err.value)


def test_truncated_jpeg_is_named(tmp_path):
    root = make_folder(tmp_path / "d")
    bad = write_image(root / "a" / "x.jpg", size=64, fmt="JPEG")
    corrupt_truncated(bad)
    with pytest.raises(DataError, match="x.jpg"):
        prepare(folder_cfg(root))


def test_empty_class_folder_is_named(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="class folder has no images: .*empty"):
        prepare(folder_cfg(root))


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist: .*nowhere"):
        prepare(folder_cfg(tmp_path / "nowhere"))


def test_root_without_class_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match="no class folders"):
        prepare(folder_cfg(tmp_path / "flat"))


@pytest.mark.parametrize(("mode", "suffix"), [("L", "png"), ("CMYK", "jpg"), ("I;16", "png"),
                                              ("RGBA", "png"), ("P", "png")])
def test_unusual_modes_are_converted_and_logged(tmp_path, caplog, mode, suffix):
    root = make_folder(tmp_path / "d")
    odd = write_image(root / "a" / f"odd.{suffix}", mode=mode)
    with caplog.at_level(logging.INFO, logger="bench.data.imagefolder"):
        data = prepare(folder_cfg(root))
    assert data.images.images.shape[1] == 3
    assert any(str(odd) in r.getMessage() and mode in r.getMessage() for r in caplog.records)


def test_sixteen_bit_keeps_its_range(tmp_path):
    import numpy as np
    from PIL import Image

    from bench.data.imagefolder import to_rgb8
    arr = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    rgb = to_rgb8(Image.fromarray(arr), tmp_path / "x.png")
    assert rgb[0, 1, 0] == 255 and rgb[0, 0, 0] == 0 and 126 <= rgb[1, 0, 0] <= 129


def test_cli_exit_2_and_nothing_stored(tmp_path, cli):
    root = make_folder(tmp_path / "d")
    corrupt_zero(root / "a" / "1.png")
    store = tmp_path / "store"
    result = cli("run", "--dataset", "imagefolder", "--data-root", root, "--store", store,
                 "--quiet")
    assert result.exit_code == 2
    assert "1.png" in result.output
    assert not store.exists()

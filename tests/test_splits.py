import numpy as np
import pytest

from bench.config import SplitConfig
from bench.data.splits import make_split
from bench.errors import DataError


def labels_and_ids(n=300, k=3):
    labels = np.repeat(np.arange(k), [n // 2, n // 3, n - n // 2 - n // 3])
    return labels, [f"img{i}" for i in range(len(labels))]


def test_parts_are_disjoint_and_cover_everything():
    labels, ids = labels_and_ids()
    s = make_split(labels, ids, SplitConfig(val=0.2, test=0.2, seed=0), "fp")
    parts = [set(s.train), set(s.val), set(s.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert set().union(*parts) == set(range(len(labels)))


def test_stratified():
    labels, ids = labels_and_ids()
    s = make_split(labels, ids, SplitConfig(val=0.2, test=0.2, seed=1), "fp")
    overall = np.bincount(labels) / len(labels)
    for part in (s.train, s.val, s.test):
        share = np.bincount(labels[part], minlength=3) / len(part)
        assert np.abs(share - overall).max() < 0.02


def test_same_seed_same_split_and_manifest():
    labels, ids = labels_and_ids()
    a = make_split(labels, ids, SplitConfig(seed=4), "fp")
    b = make_split(labels, ids, SplitConfig(seed=4), "fp")
    c = make_split(labels, ids, SplitConfig(seed=5), "fp")
    assert a.manifest_hash == b.manifest_hash and (a.test == b.test).all()
    assert a.manifest_hash != c.manifest_hash
    assert a.manifest["test"] == [ids[i] for i in a.test]


def test_manifest_changes_with_the_data():
    labels, ids = labels_and_ids()
    assert (make_split(labels, ids, SplitConfig(), "a").manifest_hash
            != make_split(labels, ids, SplitConfig(), "b").manifest_hash)


def test_too_small_to_stratify_is_a_clear_error():
    with pytest.raises(DataError, match="stratified split"):
        make_split(np.array([0, 1, 2]), ["a", "b", "c"], SplitConfig(test=0.3), "fp")

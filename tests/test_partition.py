import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from lightning_fl.errors import FederatedConfigError
from lightning_fl.federated.partition import (
    Partition,
    dataset_labels,
    dirichlet_partition,
    iid_partition,
    make_partition,
    shard_partition,
)


def _covers_exactly(part: Partition, n: int) -> bool:
    return torch.equal(torch.sort(part.indices).values, torch.arange(n))


def test_iid_is_a_near_equal_disjoint_cover_and_seeded():
    part = iid_partition(1003, 10, seed=0)
    assert _covers_exactly(part, 1003)
    assert set(part.sizes().tolist()) == {100, 101}
    assert torch.equal(part.indices, iid_partition(1003, 10, seed=0).indices)
    assert not torch.equal(part.indices, iid_partition(1003, 10, seed=1).indices)


def test_dirichlet_covers_and_small_alpha_skews_labels():
    labels = torch.arange(10).repeat(200)  # 2000 samples, 10 balanced classes
    skewed = dirichlet_partition(labels, 20, alpha=0.1, seed=0)
    mild = dirichlet_partition(labels, 20, alpha=100.0, seed=0)
    for part in (skewed, mild):
        assert _covers_exactly(part, 2000)
        assert int(part.sizes().min()) >= 1

    def mean_classes_for_90pct(part: Partition) -> float:
        counts = []
        for c in range(part.num_clients):
            hist = torch.bincount(labels[part.client(c)], minlength=10).sort(descending=True).values.double()
            counts.append(int((hist.cumsum(0) < 0.9 * hist.sum()).sum()) + 1)
        return sum(counts) / len(counts)

    # alpha -> infinity approaches IID (about 9 classes hold 90%); alpha=0.1 concentrates on 1-3 classes
    assert mean_classes_for_90pct(skewed) < 3.5
    assert mean_classes_for_90pct(mild) > 8
    assert torch.equal(skewed.indices, dirichlet_partition(labels, 20, alpha=0.1, seed=0).indices)


def test_dirichlet_that_cannot_fill_every_client_names_alpha():
    labels = torch.zeros(12, dtype=torch.long)
    with pytest.raises(FederatedConfigError, match="alpha"):
        dirichlet_partition(labels, 12, alpha=0.01, seed=0, max_tries=3)


def test_shards_follow_mcmahan_two_label_shards_per_client():
    labels = torch.arange(10).repeat_interleave(600)  # 6000 samples sorted by label, 600 per class
    part = shard_partition(labels, 100, shards_per_client=2, seed=0)
    assert _covers_exactly(part, 6000)
    assert part.sizes().tolist() == [60] * 100
    for c in range(100):
        # shard size 30 divides the class size 600: every shard is pure, so at most 2 labels per client
        assert len(torch.unique(labels[part.client(c)])) <= 2


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        (dict(scheme="iid", num_samples=5, num_clients=6), "num_clients"),
        (dict(scheme="dirichlet", num_samples=10, num_clients=2, alpha=0.0), "alpha"),
        (dict(scheme="shards", num_samples=10, num_clients=4, shards_per_client=3), "shards_per_client"),
        (dict(scheme="zipf", num_samples=10, num_clients=2), "partition"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_setting(kwargs, setting):
    labels = torch.arange(kwargs["num_samples"]) % 2
    with pytest.raises(FederatedConfigError) as err:
        make_partition(seed=0, labels=labels, **kwargs)
    assert setting in str(err.value) and "\n" not in str(err.value)


def test_dataset_labels_finds_labels_without_iterating_when_it_can():
    x, y = torch.randn(8, 2), torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    tensors = TensorDataset(x, y)
    assert torch.equal(dataset_labels(tensors), y)
    assert torch.equal(dataset_labels(Subset(tensors, [1, 3, 5])), torch.tensor([1, 1, 9]))

    class WithTargets(torch.utils.data.Dataset):
        targets = [0, 1, 1]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise AssertionError("labels should come from .targets")

    assert dataset_labels(WithTargets()).tolist() == [0, 1, 1]

    class DictItems(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"x": torch.zeros(1), "label": i}

    assert dataset_labels(DictItems()).tolist() == [0, 1]
    with pytest.raises(FederatedConfigError, match="not integers"):
        dataset_labels(TensorDataset(x, torch.randn(8)))

import pytest

from lightning_fl.errors import FederatedConfigError
from lightning_fl.parameter_server.sharding import shard_layout


@pytest.mark.parametrize("groups", [[10], [7, 3], [1, 1, 1], [100, 0, 23]])
@pytest.mark.parametrize("shards", [1, 2, 3, 8])
def test_buckets_are_equal_contiguous_and_cover_every_element_once(groups, shards):
    layout = shard_layout(groups, shards)
    total = sum(groups)
    assert layout.padded_numel % shards == 0 and layout.padded_numel - total < shards
    covered = []
    for r in range(shards):
        lo, hi = layout.shard_range(r)
        assert hi - lo == layout.shard_size
        for seg in layout.segments(r):
            assert lo <= seg.start < seg.stop <= hi
            g_start, g_stop = layout.group_ranges[seg.group]
            assert g_start <= seg.start and seg.stop <= g_stop  # a segment never mixes groups
            covered.extend(range(seg.start, seg.stop))
    assert covered == list(range(total))


def test_a_bucket_spanning_two_groups_has_two_segments():
    layout = shard_layout([5, 5], 2)  # buckets [0, 5) and [5, 10) align with the groups
    assert [(s.group, s.start, s.stop) for s in layout.segments(1)] == [(1, 5, 10)]
    layout = shard_layout([3, 7], 2)
    assert [(s.group, s.start, s.stop) for s in layout.segments(0)] == [(0, 0, 3), (1, 3, 5)]


def test_invalid_shard_count():
    with pytest.raises(FederatedConfigError):
        shard_layout([4], 0)

"""StepLoader: full batches without copies, shuffled passes, exact resume from its state, equal DDP shards."""

from __future__ import annotations

import pytest
import torch

from litpoly.data.step_loader import StepLoader, shard
from litpoly.errors import SettingError


def batches(loader: StepLoader, count: int) -> list[torch.Tensor]:
    """The first tensor of the next ``count`` batches, epoch after epoch, stopping mid-epoch as Lightning may."""
    out: list[torch.Tensor] = []
    while len(out) < count:
        for batch in loader:
            out.append(batch[0])
            if len(out) == count:
                break
    return out


def test_full_batch_is_the_same_tensors_every_step() -> None:
    x, y = torch.arange(6.0), torch.arange(6.0) * 2
    loader = StepLoader(x, y, steps_per_epoch=4)
    served = list(loader)
    assert len(loader) == len(served) == 4
    assert all(bx is x and by is y for bx, by in served)  # no copies per step


def test_mini_batches_cover_every_sample_once_per_pass_and_are_reproducible() -> None:
    x = torch.arange(10.0)
    make = lambda: StepLoader(x, -x, batch_size=4, seed=7, steps_per_epoch=6)  # noqa: E731
    served = list(make())
    assert [b[0].shape[0] for b in served] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat([b[0] for b in served[:3]]).tolist()) == x.tolist()
    assert sorted(torch.cat([b[0] for b in served[3:]]).tolist()) == x.tolist()
    assert not torch.equal(torch.cat([b[0] for b in served[:3]]), torch.cat([b[0] for b in served[3:]]))
    assert all(torch.equal(by, -bx) for bx, by in served)  # inputs and targets stay paired
    assert all(torch.equal(a[0], b[0]) for a, b in zip(served, make(), strict=True))
    other_seed = list(StepLoader(x, -x, batch_size=4, seed=8, steps_per_epoch=6))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(served, other_seed, strict=True))


@pytest.mark.parametrize("stop_at", [0, 3, 7, 9, 12])
@pytest.mark.parametrize("steps_per_epoch", [None, 25])  # one pass (4 batches) an epoch, or all steps in one epoch
def test_a_loader_restored_from_its_state_goes_on_with_the_next_batch(
    stop_at: int, steps_per_epoch: int | None
) -> None:
    x = torch.arange(13.0)
    uninterrupted = batches(StepLoader(x, batch_size=4, seed=3, steps_per_epoch=steps_per_epoch), 25)
    first = StepLoader(x, batch_size=4, seed=3, steps_per_epoch=steps_per_epoch)
    head = batches(first, stop_at)
    state = first.state_dict()
    assert state == {"position": stop_at, "seed": 3}
    resumed = StepLoader(x, batch_size=4, seed=99, steps_per_epoch=steps_per_epoch)  # its own seed is replaced
    resumed.load_state_dict(state)
    tail = batches(resumed, 25 - stop_at)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, uninterrupted, strict=True))


def test_the_epoch_continues_where_it_stopped() -> None:
    """Resumed mid-epoch, the loader yields the rest of that epoch, then whole epochs again, as Lightning expects."""
    loader = StepLoader(torch.arange(10.0), batch_size=4, steps_per_epoch=3)
    loader.load_state_dict({"position": 4, "seed": 0})
    assert len(list(loader)) == 2 and len(list(loader)) == 3


@pytest.mark.parametrize("batch_size", [None, 4])
def test_ddp_shards_are_equal_parts_of_the_one_process_batch(batch_size: int | None) -> None:
    x = torch.arange(12.0)
    whole = list(StepLoader(x, batch_size=batch_size, seed=5, steps_per_epoch=6))
    parts = [
        list(StepLoader(x, batch_size=batch_size, seed=5, steps_per_epoch=6, rank=r, world_size=2)) for r in (0, 1)
    ]
    for step, batch in enumerate(whole):
        a, b = parts[0][step][0], parts[1][step][0]
        assert a.shape == b.shape and torch.equal(torch.cat([a, b]), batch[0])


@pytest.mark.parametrize(
    ("num_samples", "batch_size", "message"),
    [(13, None, "a batch of 13 samples"), (12, 5, "a batch of 5 samples"), (14, 4, "a batch of 2 samples")],
)
def test_a_batch_that_cannot_be_split_evenly_is_refused(num_samples: int, batch_size: int | None, message: str) -> None:
    x = torch.arange(float(num_samples))
    if batch_size == 4:  # 14 = 3 x 4 + 2: the last batch splits over 2 processes, not over 4
        with pytest.raises(SettingError, match="across the 4 processes, but a batch of 2 samples"):
            StepLoader(x, batch_size=batch_size, world_size=4)
        StepLoader(x, batch_size=batch_size, world_size=2)
        return
    with pytest.raises(SettingError, match=message):
        StepLoader(x, batch_size=batch_size, world_size=2)


def test_evaluation_shards_may_differ_in_size_and_cover_everything() -> None:
    x = torch.arange(7.0)
    assert shard(None, x)[0] is x

    class TwoProcesses:
        world_size = 2

        def __init__(self, rank: int) -> None:
            self.global_rank = rank

    parts = [shard(TwoProcesses(r), x)[0] for r in (0, 1)]  # type: ignore[arg-type]
    assert torch.equal(torch.cat(parts), x) and [len(p) for p in parts] == [4, 3]


def test_tensors_must_have_the_same_number_of_samples() -> None:
    with pytest.raises(ValueError, match="same number of samples"):
        StepLoader(torch.zeros(3), torch.zeros(4))

"""Infinite loaders: exact resume, worker-count independence, epoch permutations, sharding."""
from __future__ import annotations

import pytest
import torch

from udabench.data import InfiniteLoader, TrainTransform, gta5
from udabench.errors import DataError, UserError


class _Range(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"index": i}


@pytest.fixture
def augmented(tiny_gta5):
    t = TrainTransform(size=(24, 48), scale_range=(0.75, 1.5), crop=(16, 16))
    return gta5(tiny_gta5, transform=t, manifest=None)


def _take(loader, k):
    return [next(loader) for _ in range(k)]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["id"] == y["id"]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        for key in ("full_size", "crop", "flip"):
            assert torch.equal(x["geometry"][key], y["geometry"][key])


def test_resume_yields_exactly_the_next_batches(augmented):
    loader = InfiniteLoader(augmented, batch_size=2, seed=7, domain="source")
    _take(loader, 4)  # crosses the first epoch boundary (3 batches per epoch)
    state = loader.state_dict()
    assert (state["epoch"], state["position"]) == (1, 1)
    expected = _take(loader, 5)
    fresh = InfiniteLoader(augmented, batch_size=2, seed=7, domain="source")
    fresh.load_state_dict(state)
    _assert_same(_take(fresh, 5), expected)
    other = InfiniteLoader(augmented, batch_size=2, seed=8, domain="source")
    other.load_state_dict({k: v for k, v in state.items() if k != "seed"})
    assert [b["id"] for b in _take(other, 5)] != [b["id"] for b in expected]


def test_batches_do_not_depend_on_the_number_of_workers(augmented):
    a = _take(InfiniteLoader(augmented, 2, seed=3, domain="target", num_workers=0), 7)
    b_loader = InfiniteLoader(augmented, 2, seed=3, domain="target", num_workers=2)
    b = _take(b_loader, 7)
    b_loader.close()
    _assert_same(a, b)
    assert a[0]["image"].shape == (2, 3, 16, 16) and a[0]["geometry"]["crop"].shape == (2, 4)
    assert a[0]["index"].dtype == torch.int64 and isinstance(a[0]["id"], list)


def test_epochs_are_permutations_that_differ_by_seed_domain_and_epoch():
    loader = InfiniteLoader(_Range(12), batch_size=3, seed=0, domain="source")
    epochs = []
    for _ in range(3):
        epochs.append(torch.cat([b["index"] for b in _take(loader, 4)]).tolist())
    assert all(sorted(e) == list(range(12)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    other_domain = InfiniteLoader(_Range(12), 3, seed=0, domain="target")
    assert torch.cat([b["index"] for b in _take(other_domain, 4)]).tolist() != epochs[0]


def test_shards_are_disjoint_and_cover_the_epoch():
    shards = [InfiniteLoader(_Range(10), 1, seed=1, domain="s", rank=r, world_size=2).epoch_keys(0)
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(10))
    assert set(shards[0]).isdisjoint(shards[1])
    # 11 samples: drop_last truncates to 10, otherwise pads to 12 by wrapping around.
    cut = [InfiniteLoader(_Range(11), 1, 1, "s", rank=r, world_size=2).epoch_keys(0) for r in (0, 1)]
    assert len(cut[0] + cut[1]) == 10 and len(set(cut[0] + cut[1])) == 10
    pad = [InfiniteLoader(_Range(11), 1, 1, "s", rank=r, world_size=2, drop_last=False)
           .epoch_keys(0) for r in (0, 1)]
    assert len(pad[0] + pad[1]) == 12 and set(pad[0] + pad[1]) == set(range(11))


def test_augmentation_seeds_do_not_depend_on_world_size(augmented):
    single = InfiniteLoader(augmented, 1, seed=5, domain="source").epoch_keys(2)
    split = [InfiniteLoader(augmented, 1, seed=5, domain="source", rank=r, world_size=2)
             .epoch_keys(2) for r in range(2)]
    assert sorted(single) == sorted(split[0] + split[1])
    assert len({seed for _, seed in single}) == len(single)


def test_last_partial_batch_kept_without_drop_last():
    loader = InfiniteLoader(_Range(5), batch_size=2, seed=0, domain="s", drop_last=False)
    sizes = [len(b["index"]) for b in _take(loader, 6)]
    assert sizes == [2, 2, 1, 2, 2, 1]
    assert [len(b["index"]) for b in _take(InfiniteLoader(_Range(5), 2, 0, "s"), 4)] == [2, 2, 2, 2]


def test_bad_setups_are_user_errors(augmented):
    with pytest.raises(DataError, match="fewer than one batch of 8"):
        InfiniteLoader(augmented, batch_size=8, seed=0, domain="source")
    loader = InfiniteLoader(augmented, batch_size=2, seed=0, domain="source")
    with pytest.raises(UserError, match="checkpoint has batch_size=3"):
        loader.load_state_dict({**loader.state_dict(), "batch_size": 3})
    with pytest.raises(UserError, match="position 9"):
        loader.load_state_dict({**loader.state_dict(), "position": 9})
    with pytest.raises(UserError, match="rank=2"):
        InfiniteLoader(augmented, 1, 0, "source", rank=2, world_size=2)


def test_worker_data_errors_arrive_as_one_line(tiny_gta5, copy_tree, png):
    root = copy_tree(tiny_gta5)
    for p in (root / "images").glob("*.png"):
        png.truncate(p)
    loader = InfiniteLoader(gta5(root, manifest=None), 2, seed=0, domain="source", num_workers=1)
    with pytest.raises(DataError) as err:
        next(loader)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("corrupt or truncated PNG") and "images/" in msg
    assert loader.state_dict()["position"] == 0


class _EvenSampler:
    """Draws only even indices, tagging each with index % 3 as its 'class'."""

    def draw(self, n, gen):
        idx = torch.randint(0, 5, (n,), generator=gen) * 2
        return idx, idx % 3


def test_a_method_sampler_chooses_the_images_and_tags_their_class():
    loader = InfiniteLoader(_Range(10), 4, 0, "source")
    loader.set_sampler(_EvenSampler())
    batches = _take(loader, 6)
    for b in batches:
        assert all(int(i) % 2 == 0 for i in b["index"])
        assert torch.equal(b["sampled_class"], b["index"] % 3)
    # the draws follow (seed, domain, epoch): a restored loader yields the same next batches
    again = InfiniteLoader(_Range(10), 4, 0, "source")
    again.set_sampler(_EvenSampler())
    again.load_state_dict(_restored_state(loader, 3))
    for a, b in zip(batches[3:], _take(again, 3)):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["sampled_class"], b["sampled_class"])


def _restored_state(loader, after):
    fresh = InfiniteLoader(_Range(10), 4, 0, "source")
    fresh.set_sampler(_EvenSampler())
    _take(fresh, after)
    return fresh.state_dict()


def test_a_process_exits_with_a_loader_still_open():
    """Workers ignore SIGTERM (leave_stop_signals_to_the_run); multiprocessing ends daemonic
    children at exit with SIGTERM and then waits for them, so a process that still held an open
    loader iterator at exit waited forever (found as CI's pytest hanging after its summary)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        from torch.utils.data import DataLoader
        from udabench.data.loaders import leave_stop_signals_to_the_run
        loader = DataLoader(list(range(100)), batch_size=2, num_workers=2,
                            worker_init_fn=leave_stop_signals_to_the_run)
        KEPT = iter(loader)
        next(KEPT)
        print("leaving")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0 and done.stdout.strip() == "leaving", done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr

"""The streaming loader: batches in image-id order, bounded prefetch, clean shutdown."""
import threading
import time

import numpy as np
import pytest

from fsaf_repro.data import CocoImageSet, iter_batches
from fsaf_repro.errors import DataError
from fsaf_repro.synthetic import make_synthetic_coco


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    return CocoImageSet(*make_synthetic_coco(str(tmp_path_factory.mktemp("coco")), num_images=7, seed=3,
                                             layouts=[(64, 48, "jpg"), (48, 64, "png"), (90, 30, "gray")]))


class CountingSet:
    """Wraps an image set and counts loads, to observe how far the producer runs ahead."""

    def __init__(self, inner):
        self.inner = inner
        self.metas, self.height, self.width = inner.metas, inner.height, inner.width
        self.loads = 0
        self.lock = threading.Lock()

    def __len__(self):
        return len(self.inner)

    def load_into(self, index, out, input_dtype="float32"):
        with self.lock:
            self.loads += 1
        return self.inner.load_into(index, out, input_dtype)


def test_batches_in_order_with_a_smaller_last_batch(image_set):
    batches = list(iter_batches(image_set, 3, workers=2))
    assert [b.shape for b, _ in batches] == [(3, 3, 800, 1216), (3, 3, 800, 1216), (1, 3, 800, 1216)]
    assert [m.image_id for _, metas in batches for m in metas] == image_set.image_ids
    for batch, metas in batches:
        for row, meta in zip(batch, metas):
            assert np.array_equal(row, image_set.load(image_set.image_ids.index(meta.image_id))[0])


def test_start_resumes_from_an_index(image_set):
    ids = [m.image_id for _, metas in iter_batches(image_set, 2, start=4) for m in metas]
    assert ids == image_set.image_ids[4:]
    assert list(iter_batches(image_set, 2, start=len(image_set))) == []


def test_uint8_input(image_set):
    batch, metas = next(iter(iter_batches(image_set, 2, input_dtype="uint8")))
    assert batch.dtype == np.uint8
    assert np.array_equal(batch[1], image_set.load(1, input_dtype="uint8")[0])


def test_prefetch_bounds_how_far_the_producer_runs_ahead(image_set):
    counting = CountingSet(image_set)
    stream = iter_batches(counting, 1, prefetch=2, workers=1)
    next(stream)
    time.sleep(0.5)  # a consumer that stalls: the producer must stop at the queue bound
    # 1 batch taken + 2 queued + 1 waiting to be queued
    assert counting.loads <= 4 < len(image_set)
    stream.close()
    assert not stream._thread.is_alive()


def test_close_stops_an_unfinished_stream(image_set):
    with iter_batches(image_set, 1, prefetch=1) as stream:
        next(stream)
    assert not stream._thread.is_alive()
    with pytest.raises(StopIteration):
        next(stream)


def test_bad_arguments(image_set):
    with pytest.raises(DataError):
        iter_batches(image_set, 0)
    with pytest.raises(DataError):
        iter_batches(image_set, 2, input_dtype="float16")
    with pytest.raises(DataError):
        iter_batches(image_set, 2, start=99)


def test_recycled_buffers_give_the_same_batches_from_a_fixed_pool(tmp_path):
    annotation_file, image_dir = make_synthetic_coco(str(tmp_path / "coco"), num_images=7, seed=3)
    image_set = CocoImageSet(annotation_file, image_dir, height=64, width=96)
    fresh = [(b.copy(), [m.image_id for m in metas]) for b, metas in iter_batches(image_set, 2, prefetch=1)]
    seen_buffers = set()
    recycled = []
    for batch, metas in iter_batches(image_set, 2, prefetch=1, recycle_buffers=True):
        seen_buffers.add(id(batch if batch.base is None else batch.base))
        recycled.append((batch.copy(), [m.image_id for m in metas]))
    assert len(recycled) == len(fresh) == 4  # 7 images in batches of 2: the last holds one
    for (a, ids_a), (b, ids_b) in zip(fresh, recycled):
        assert ids_a == ids_b
        assert np.array_equal(a, b)
    assert len(seen_buffers) <= 1 + 2 < len(recycled)  # prefetch + 2 buffers, reused across 4 batches

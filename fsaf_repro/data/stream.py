"""The streaming loader: batches straight from the images to a backend (`iter_batches`), with no
file on disk and memory bounded by a small prefetch queue.

A bad image is an ImageReadError raised in the consumer, or with `skip_bad` a recorded skip, never a
swallowed worker exception.
"""
import queue
import threading
from collections import namedtuple
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from ..errors import DataError, ImageReadError
from .coco import CocoImageSet, SkippedImage
from .transform import input_array_dtype

_END = object()


class _Failure:
    def __init__(self, exc):
        self.exc = exc


def _put(out_queue, stop, item):
    while not stop.is_set():
        try:
            out_queue.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _take_buffer(free_buffers, stop):
    while not stop.is_set():
        try:
            return free_buffers.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


# What the producer thread shares with its stream (not the stream itself: an abandoned stream must be
# collectable): the bounded queue, the stop event, the list of skipped images, the queue of recycled
# batch buffers (None: a new array per batch) and the dict each image's bytes' sha256 lands in (or None).
_Links = namedtuple("_Links", ["queue", "stop", "skipped", "free_buffers", "sha256_into"])


def _produce(image_set, batch_size, workers, skip_bad, span, input_dtype, links):
    """Producer thread: fills batches of entries [start, end) (`span`; end None: to the last) in image
    order and puts them on the bounded queue of `links`."""
    (start, end), out_queue, stop = span, links.queue, links.stop
    skipped, free_buffers, sha256_into = links.skipped, links.free_buffers, links.sha256_into
    dtype = input_array_dtype(input_dtype)
    shape = (batch_size, 3, image_set.height, image_set.width)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            index = start
            total = len(image_set) if end is None else end
            load_options = {} if sha256_into is None else {"sha256_into": sha256_into}
            batch, metas = None, []
            while index < total and not stop.is_set():
                if batch is None:
                    batch = _new_batch(free_buffers, shape, dtype, stop)
                    if batch is None:
                        return
                    metas = []
                want = min(batch_size - len(metas), total - index)
                indices = list(range(index, index + want))
                index += want
                slots = list(range(len(metas), len(metas) + want))
                futures = [pool.submit(image_set.load_into, i, batch[s], input_dtype, **load_options)
                           for i, s in zip(indices, slots)]
                _collect_loaded(futures, indices, slots, batch, metas, image_set, skip_bad, skipped)
                if len(metas) == batch_size:
                    if not _put(out_queue, stop, (batch, metas)):
                        return
                    batch, metas = None, []
            if metas and not stop.is_set():
                if not _put(out_queue, stop, (batch[:len(metas)], metas)):
                    return
    except BaseException as exc:  # handed to the consumer, which re-raises it
        _put(out_queue, stop, _Failure(exc))
        return
    _put(out_queue, stop, _END)


def _new_batch(free_buffers, shape, dtype, stop):
    """A batch array: a recycled buffer from `free_buffers` (None once the stream stops) or a new one."""
    if free_buffers is None:
        return np.empty(shape, dtype=dtype)
    return _take_buffer(free_buffers, stop)


def _collect_loaded(futures, indices, slots, batch, metas, image_set, skip_bad, skipped):
    """Append the ImageMeta of each loaded image to `metas`, moving each image down over the slot a
    skipped image left; a bad image is raised, or with `skip_bad` listed in `skipped`."""
    fill = len(metas)
    for i, slot, future in zip(indices, slots, futures):
        try:
            meta = future.result()
        except ImageReadError as exc:
            if not skip_bad:
                raise
            meta_i = image_set.metas[i]
            skipped.append(SkippedImage(i, meta_i.image_id, meta_i.path, str(exc)))
            continue
        if slot != fill:  # close the gap a skipped image left
            batch[fill] = batch[slot]
        metas.append(meta)
        fill += 1


class BatchStream:
    """Iterator of (batch [b, 3, H, W], list of ImageMeta) in image-id order.

    A producer thread decodes with `workers` threads and keeps at most `prefetch` finished batches
    queued, so memory stays at about (prefetch + 2) batches whatever the dataset size. Images that
    fail to read raise ImageReadError in the consumer, or with `skip_bad` are appended to
    `self.skipped` (SkippedImage records) and left out of the batches. The last batch may be
    smaller than `batch_size`. The stream covers entries [start, stop) (stop: the set's end by
    default). With `hash_images`, `self.image_sha256` maps each entry read to the sha256 of its
    file's bytes (those decoded, or found undecodable), filled as the workers read them.
    """

    def __init__(self, image_set: CocoImageSet, batch_size: int, prefetch: int = 2, workers: int = 2,
                 skip_bad: bool = False, start: int = 0, input_dtype: str = "float32", recycle_buffers: bool = False,
                 stop: Optional[int] = None, hash_images: bool = False):
        if int(batch_size) < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if int(prefetch) < 1:
            raise DataError(f"prefetch must be >= 1, got {prefetch}")
        if not 0 <= int(start) <= len(image_set):
            raise DataError(f"start must be between 0 and {len(image_set)}, got {start}")
        end = len(image_set) if stop is None else int(stop)
        if not int(start) <= end <= len(image_set):
            raise DataError(f"stop must be between start ({start}) and {len(image_set)}, got {stop}")
        input_array_dtype(input_dtype)
        self.batch_size = int(batch_size)
        self.skipped = []
        self.image_sha256 = {} if hash_images else None
        self._queue = queue.Queue(maxsize=int(prefetch))
        self._stop = threading.Event()
        self._done = False
        self._free_buffers = None
        self._lent = None
        if recycle_buffers:
            # One buffer being filled, `prefetch` queued, one lent to the consumer. Pages are touched
            # now, so the stream's memory is committed up front and stays flat for any run length.
            self._free_buffers = queue.Queue()
            shape = (self.batch_size, 3, image_set.height, image_set.width)
            for _ in range(int(prefetch) + 2):
                buffer = np.empty(shape, dtype=input_array_dtype(input_dtype))
                buffer.fill(0)
                self._free_buffers.put(buffer)
        self._thread = threading.Thread(
            target=_produce, name="fsaf-batch-producer",
            args=(image_set, self.batch_size, max(1, int(workers)), bool(skip_bad), (int(start), end), input_dtype,
                  _Links(self._queue, self._stop, self.skipped, self._free_buffers, self.image_sha256)))
        self._thread.daemon = True
        self._thread.start()
        # the thread holds no reference to self, so an abandoned stream still stops its producer
        self._finalizer = weakref.finalize(self, self._stop.set)

    def __iter__(self):
        return self

    def __next__(self):
        if self._lent is not None:
            # Recycling: the batch handed out last time is only valid until this call.
            self._free_buffers.put(self._lent)
            self._lent = None
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            self.close()
            raise item.exc
        if self._free_buffers is not None:
            batch = item[0]
            self._lent = batch if batch.base is None else batch.base
        return item

    next = __next__

    def close(self):
        self._done = True
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


def iter_batches(image_set: CocoImageSet, batch_size: int, prefetch: int = 2, workers: int = 2, skip_bad: bool = False,
                 start: int = 0, input_dtype: str = "float32", recycle_buffers: bool = False,
                 stop: Optional[int] = None, hash_images: bool = False) -> "BatchStream":
    """Stream batches straight from the images (no .bin on disk); see BatchStream.

    With `recycle_buffers` a fixed pool of prefetch + 2 batch arrays is reused, so memory does not
    depend on the run's length; each yielded batch is then valid only until the next one is asked for.
    """
    return BatchStream(image_set, batch_size, prefetch=prefetch, workers=workers, skip_bad=skip_bad,
                       recycle_buffers=recycle_buffers, start=start, input_dtype=input_dtype, stop=stop,
                       hash_images=hash_images)

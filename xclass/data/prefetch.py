"""Batches read and decoded off the training thread: a bounded prefetch queue.

``prefetch(reader, decode, depth, device)`` iterates one epoch of ``reader`` (a
:class:`~xclass.data.reader.ParquetReader` or anything with ``__iter__`` and ``state_dict``)
and yields ``decode(batch)`` = ``(inputs, labels)``, in the reader's order:

* ``depth == 0``: synchronous (read + decode on the calling thread), the reference.
* ``depth >= 1``: one background thread reads and decodes; at most ``depth`` decoded batches
  wait in the queue (plus one being decoded), so memory stays bounded. The batches and their
  order are exactly those of ``depth == 0``: the decoders use no random numbers, and the
  thread is the reader's only user.
* ``device`` of type ``cuda``: the thread copies every tensor into pinned (page-locked) host
  memory, and the consuming thread issues ``.to(device, non_blocking=True)`` on its current
  stream, so the copy overlaps with the step that is running. Other devices (cpu, None): the
  tensors are yielded as decoded, no copy.

Resume: the reader runs ahead of the loop, so ``reader.state_dict()`` describes what the
thread has READ. :meth:`Prefetcher.state_dict` describes what the caller has CONSUMED (the
reader's state recorded right after the last yielded batch was read): checkpoint that one.

An exception in the thread (a bad row, an unreadable file) is re-raised in the consumer at
the batch where it happened. Leaving the loop early (``break``, an exception in the step,
``close()``) stops and joins the thread.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import torch

_DONE = object()
_POLL_S = 0.05


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor in nested dicts / lists / tuples; other leaves kept."""
    if torch.is_tensor(obj):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def _reader_state(reader: Any) -> Optional[Dict[str, Any]]:
    fn = getattr(reader, "state_dict", None)
    return dict(fn()) if callable(fn) else None


class Prefetcher:
    """Iterable over one epoch of decoded batches; see the module docstring.

    Args:
        reader: yields raw batches (numpy dicts); ``set_epoch``/``load_state_dict`` are the
            caller's business and must happen before iterating.
        decode: raw batch -> (inputs, labels) of CPU tensors.
        depth: queue length (0 = synchronous); must be >= 0.
        device: where the yielded tensors go; ``cuda`` devices get pinned memory + async copy.
    """

    def __init__(self, reader: Any, decode: Callable[[Any], Tuple[Any, Any]], depth: int = 2,
                 device: Union[None, str, torch.device] = None) -> None:
        if int(depth) < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.reader, self.decode, self.depth = reader, decode, int(depth)
        self.device = torch.device(device) if device is not None else None
        self.pin = self.device is not None and self.device.type == "cuda" and torch.cuda.is_available()
        # the thread makes this device current before pinning: otherwise its first CUDA call
        # would open a context on cuda:0 (on every rank of a multi-GPU node)
        self._cuda_index: Optional[int] = None
        if self.pin:
            self._cuda_index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self._state: Optional[Dict[str, Any]] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def state_dict(self) -> Optional[Dict[str, Any]]:
        """The reader's state after the last batch this iterator YIELDED (None before the first)."""
        return None if self._state is None else dict(self._state)

    def _prepare(self, batch: Any) -> Tuple[Any, Any]:
        out = self.decode(batch)
        return map_tensors(out, lambda t: t.pin_memory()) if self.pin else out

    def _to_device(self, out: Any) -> Any:
        if self.device is None or self.device.type == "cpu":
            return out
        return map_tensors(out, lambda t: t.to(self.device, non_blocking=True))

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        if self.depth == 0:
            for batch in self.reader:
                out = self._prepare(batch)
                self._state = _reader_state(self.reader)
                yield self._to_device(out)
            return
        yield from self._threaded()

    def _threaded(self) -> Iterator[Tuple[Any, Any]]:
        q: "queue.Queue" = queue.Queue(maxsize=self.depth)
        self._stop.clear()
        self._thread = threading.Thread(target=self._produce, args=(q,), daemon=True,
                                        name="xclass-prefetch")
        self._thread.start()
        try:
            while True:
                kind, out, state = q.get()
                if kind is _DONE:
                    return
                if kind == "error":
                    raise out
                self._state = state
                yield self._to_device(out)
        finally:
            self.close()

    def _produce(self, q: "queue.Queue") -> None:
        try:
            if self._cuda_index is not None:
                torch.cuda.set_device(self._cuda_index)
            for batch in self.reader:
                item = ("batch", self._prepare(batch), _reader_state(self.reader))
                if not self._put(q, item):
                    return
            self._put(q, (_DONE, None, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(q, ("error", exc, None))

    def _put(self, q: "queue.Queue", item: Any) -> bool:
        """Blocking put that gives up when the consumer has stopped; False = stopped."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop the background thread (if any) and wait for it; idempotent."""
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join()


def prefetch(reader: Any, decode: Callable[[Any], Tuple[Any, Any]], depth: int = 2,
             device: Union[None, str, torch.device] = None) -> Prefetcher:
    """One epoch of ``(inputs, labels)`` decoded ahead by ``depth`` batches (see the module
    docstring); ``for inputs, labels in prefetch(s.reader, s.decode, cfg.data.prefetch, ctx.device)``."""
    return Prefetcher(reader, decode, depth, device)

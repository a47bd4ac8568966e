"""Shards: whole stored objects of a local Zarr array written straight from numpy blocks, each one proven.

A streaming task owns whole shards (or whole chunks, unsharded), so it need
not go through zarr-python's asynchronous pipeline, which keeps per-chunk
bookkeeping on every write and as much again on the read that proves it.
``ArrayWriter`` encodes each chunk with the array's own codec objects (those
zarr built from the array's metadata, so the bytes are the ones zarr would
write) and assembles a shard as the sharding codec specifies (the chunks, then
the index of offsets and lengths, little-endian uint64, with its CRC32C). The
chunks are appended to the object's file under a temporary name as they come
(``RegionWrite``: a region may be handed over a part at a time, a plane of a
z-stack, so a task holds one part and never a whole shard's pixels or bytes),
read back from the disk at once, decoded and compared bit for bit with the
pixels: any difference raises ``VerificationError``. A finished object is
renamed into place; its size and sha256 are those of the bytes read back.

Chunks holding only the fill value (bit for bit) are not stored, as zarr does
not store them either. Zarr v3 (sharded or not) and Zarr v2 (one object per
chunk: OME-NGFF 0.4) are written; readers see ordinary Zarr arrays.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import zarr

from zarrchive.pixels.blocks import bits
from zarrchive.errors import VerificationError

ABSENT = 2**64 - 1  # offset and length of a chunk a shard does not hold


@dataclass
class Stored:
    """What writes stored: the chunks proven, and every object written (its path under the store, size and the
    sha256 of its bytes as read back from the disk)."""

    chunks: int = 0
    objects: dict[str, tuple[int, str]] = field(default_factory=dict)

    def add(self, other: Stored) -> Stored:
        self.chunks += other.chunks
        self.objects.update(other.objects)
        return self


@dataclass(frozen=True)
class ArrayWriter:
    """Writes whole objects (shards, or chunks when unsharded) of the local Zarr array at ``path``."""

    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]  # the chunk: the unit of encoding
    objects: tuple[int, ...]  # the stored object: a shard, or the chunk itself
    sharded: bool
    dtype: np.dtype
    fill: np.ndarray  # the fill value's bits, one element
    key: Callable[[tuple[int, ...]], str]
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], np.ndarray]

    @classmethod
    def open(cls, path: str, array: Any = None) -> ArrayWriter:
        """The writer of the local array at ``path`` (``array``: that array, already open)."""
        array = zarr.open_array(path, mode="r") if array is None else array
        meta = array.metadata
        dtype = np.dtype(array.dtype)
        objects = tuple(meta.chunks) if meta.zarr_format == 2 else tuple(meta.chunk_grid.chunk_shape)
        chunks = tuple(array.chunks)
        if meta.zarr_format == 3:
            sharded, (encode, decode) = _is_sharded(meta), _v3_coder(meta, chunks)
        else:
            sharded, (encode, decode) = False, _v2_coder(meta, chunks, dtype)
        fill = bits(np.full(1, meta.fill_value if meta.fill_value is not None else 0, dtype=dtype))
        return cls(path=path, shape=tuple(array.shape), chunks=chunks, objects=objects, sharded=sharded,
                   dtype=dtype, fill=fill, key=meta.encode_chunk_key, encode=encode, decode=decode)

    def write(self, region: tuple[slice, ...], block: np.ndarray, prefix: str = "",
              ready: dict[tuple[int, ...], bytes] | None = None) -> Stored:
        """Write ``block`` as the objects covering ``region`` (whole objects; the array's end may cut the last
        ones), each proven by decoding what was stored; object paths in the result start with ``prefix``.
        ``ready``: whole chunks already encoded with this array's chunk coder, by their origin in the array (a
        codec trial's), stored as they are instead of encoded again (and proven like every other)."""
        with self.region(region, prefix, ready) as part:
            part.add(region, block)
            return part.finish()

    def region(self, region: tuple[slice, ...], prefix: str = "",
               ready: dict[tuple[int, ...], bytes] | None = None) -> RegionWrite:
        """The objects covering ``region`` (whole objects; the array's end may cut the last ones), to be written a
        part at a time (``RegionWrite``), as ``write`` writes them from one block."""
        for r, o, n in zip(region, self.objects, self.shape):
            if r.start % o or (r.stop % o and r.stop != n):
                raise ValueError(f"{self.path}: region {region} is not made of whole objects of {self.objects}")
        return RegionWrite(self, region, prefix, ready or {})

    def _padded(self, chunk: np.ndarray) -> np.ndarray:
        """A chunk cut by the array's end, padded with the fill value to the whole chunk (as zarr stores it)."""
        if chunk.shape == self.chunks:
            return np.ascontiguousarray(chunk)
        whole = np.empty(self.chunks, dtype=self.dtype)
        bits(whole)[...] = self.fill[0]
        whole[tuple(slice(0, n) for n in chunk.shape)] = chunk
        return whole

    def _same(self, decoded: np.ndarray, chunk: np.ndarray) -> bool:
        """Whether a whole decoded chunk holds ``chunk``'s bits, and the fill value's beyond the array's end."""
        if chunk.shape == self.chunks:
            return np.array_equal(bits(decoded), bits(chunk))
        inside = tuple(slice(0, n) for n in chunk.shape)
        if not np.array_equal(bits(decoded[inside]), bits(chunk)):
            return False
        padding = np.ones(self.chunks, dtype=bool)
        padding[inside] = False
        return bool(np.all(bits(decoded)[padding] == self.fill[0]))


class RegionWrite:
    """The objects of a region of an array, written a part at a time: each part (whole chunks of the objects it
    falls in) is encoded and appended to its objects' temporary files (``<key>.<hex>.partial``, swept by
    ``storage.remove_unfinished_writes`` if the process dies), read back from there and proven at once, so only
    the part is held, never a whole object's pixels or bytes. An object whose chunks have all come is finished:
    its shard index appended and proven, then renamed into place. ``finish`` returns what was stored; leaving the
    ``with`` block without it (an error) removes every temporary file. A shard holds its chunks in the order they
    came: parts in C order that cut the last axis only at objects' edges (``passes.slabs``) store them as one
    write of the region does, byte for byte."""

    def __init__(self, writer: ArrayWriter, region: tuple[slice, ...], prefix: str,
                 ready: dict[tuple[int, ...], bytes]):
        self.writer, self.region, self.prefix, self.ready = writer, region, prefix, ready
        self.open: dict[tuple[int, ...], _ObjectWrite] = {}
        self.done: set[tuple[int, ...]] = set()  # objects finished
        self.stored = Stored()

    def __enter__(self) -> RegionWrite:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.abort()

    def add(self, part: tuple[slice, ...], block: np.ndarray) -> None:
        """Write ``block``, the pixels of ``part`` of the region: whole chunks (the array's end may cut the last)."""
        w = self.writer
        if block.dtype != w.dtype or block.shape != tuple(p.stop - p.start for p in part):
            raise ValueError(f"{w.path}: a {block.shape} {block.dtype} block for region {part} of a {w.dtype} array")
        for p, r, c, n in zip(part, self.region, w.chunks, w.shape):
            if p.start < r.start or p.stop > r.stop or p.start % c or (p.stop % c and p.stop != n):
                raise ValueError(f"{w.path}: part {part} is not whole chunks of {w.chunks} in region {self.region}")
        starts = [range(p.start - p.start % o, p.stop, o) for p, o in zip(part, w.objects)]
        for start in itertools.product(*starts):
            if start in self.done:
                raise ValueError(f"{w.path}: the object at {start} is finished: part {part} hands over a chunk twice")
            obj = self.open.get(start)
            if obj is None:
                obj = self.open[start] = _ObjectWrite(w, start)
            obj.add(part, block, self.ready)
            if obj.complete:
                proven, written = obj.finish()  # (if it fails, the object is still open: abort removes its file)
                del self.open[start]
                self.done.add(start)
                self.stored.chunks += proven
                if written is not None:
                    self.stored.objects[f"{self.prefix}{obj.key}"] = written

    def finish(self) -> Stored:
        """What was stored, once every chunk of the region has been added."""
        if self.open:
            missing = sorted(self.open)[0]
            raise ValueError(f"{self.writer.path}: the object at {missing} of region {self.region} was not written "
                             "whole")
        return self.stored

    def abort(self) -> None:
        """Remove the temporary files of the objects not finished (nothing of them is in place)."""
        for obj in self.open.values():
            obj.discard()
        self.open.clear()


class _ObjectWrite:
    """One stored object (a shard, or a chunk when unsharded) being written, its chunks appended as they come. Its
    temporary file is open only while a part is appended and proven (a region may have many objects waiting)."""

    def __init__(self, writer: ArrayWriter, origin: tuple[int, ...]):
        w = self.writer = writer
        self.origin = origin
        self.extent = tuple(min(o, n - s) for s, o, n in zip(origin, w.objects, w.shape))
        self.key = w.key(tuple(s // o for s, o in zip(origin, w.objects)))
        self.target = os.path.join(w.path, *self.key.split("/"))
        self.inner = tuple(o // c for o, c in zip(w.objects, w.chunks)) if w.sharded else (1,) * len(w.chunks)
        self.table = np.full((int(np.prod(self.inner)), 2), ABSENT, dtype="<u8")
        self.seen = np.zeros(len(self.table), dtype=bool)
        self.inside = int(np.prod([-(-e // c) for e, c in zip(self.extent, w.chunks)]))  # chunks inside the array
        self.proven = 0  # chunks handed over (each seen once), stored or the fill value
        self.size = 0
        self.sha = hashlib.sha256()
        self.partial: str | None = None
        self.fd: int | None = None

    @property
    def complete(self) -> bool:
        return self.proven == self.inside

    def add(self, part: tuple[slice, ...], block: np.ndarray, ready: dict[tuple[int, ...], bytes]) -> None:
        """Append this object's chunks in ``part`` (``block``: its pixels), then read them back and prove them."""
        w = self.writer
        lo = [max(p.start, s) for p, s in zip(part, self.origin)]
        hi = [min(p.stop, s + e) for p, s, e in zip(part, self.origin, self.extent)]
        written: list[tuple[int, np.ndarray]] = []
        try:
            for at in itertools.product(*[range(a, b, c) for a, b, c in zip(lo, hi, w.chunks)]):
                i = int(np.ravel_multi_index(tuple((a - s) // c for a, s, c in zip(at, self.origin, w.chunks)),
                                             self.inner))
                if self.seen[i]:
                    raise ValueError(f"{self.target}: chunk {i} was handed over twice")
                self.seen[i] = True
                view = block[tuple(slice(a - p.start, min(a + c, b) - p.start)
                                   for a, p, c, b in zip(at, part, w.chunks, hi))]
                self.proven += 1
                if bits(view).flat[0] == w.fill[0] and np.all(bits(view) == w.fill[0]):
                    continue  # only the fill value (bit for bit), which is what a missing chunk reads as: not stored
                data = ready.get(at) if ready and view.shape == w.chunks else None
                if data is None:
                    data = w.encode(w._padded(view))
                self.table[i] = (self.size, len(data))
                self._append(data)
                written.append((i, view))
            for i, view in written:  # read back from the file: every chunk decodes to the pixels written
                start, length = (int(v) for v in self.table[i])
                stored = _read_back(self.fd, start, length)
                self.sha.update(stored)
                try:
                    decoded = w.decode(stored)
                except Exception as exc:
                    raise VerificationError(f"{self.target}: chunk {i} cannot be decoded: {type(exc).__name__}: "
                                            f"{exc}") from exc
                if decoded.shape != w.chunks or not w._same(decoded, view):
                    raise VerificationError(f"{self.target}: chunk {i} decodes to other pixels than those written")
        finally:
            self._close()

    def _append(self, data: bytes) -> None:
        if self.fd is None:
            if self.partial is None:
                os.makedirs(os.path.dirname(self.target), exist_ok=True)
                self.partial = f"{self.target}.{uuid.uuid4().hex}.partial"
                self.fd = os.open(self.partial, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
                if not (mode := os.fstat(self.fd).st_mode) & 0o200:  # a umask without the owner's write: it is
                    os.fchmod(self.fd, mode | 0o200)  # opened again for the next part
            else:
                self.fd = os.open(self.partial, os.O_RDWR | os.O_APPEND)
        _append(self.fd, data)
        self.size += len(data)

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def finish(self) -> tuple[int, tuple[int, str] | None]:
        """Put the object in place (with its shard index, proven): the chunks proven, and the object's size and
        sha256 as read back (None when every chunk held only the fill value: no object, and none left there)."""
        if self.partial is None:
            if os.path.exists(self.target):
                os.remove(self.target)
            return self.proven, None
        if self.writer.sharded:
            index = self.table.tobytes() + _crc32c(self.table.tobytes())
            start = self.size
            try:
                self._append(index)
                stored = _read_back(self.fd, start, len(index))
            finally:
                self._close()
            if stored != index:
                raise VerificationError(f"{self.target}: the stored shard index differs from the one written")
            self.sha.update(stored)
        _publish(self.partial, self.target)
        return self.proven, (self.size, self.sha.hexdigest())

    def discard(self) -> None:
        self._close()
        if self.partial is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.partial)


def _append(fd: int, data: bytes) -> None:
    """Write all of ``data`` at the end of the open file ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_back(fd: int, start: int, length: int) -> bytes:
    """``length`` bytes at ``start`` of the open file ``fd``, as stored."""
    data = os.pread(fd, length, start)
    while len(data) < length:
        more = os.pread(fd, length - len(data), start + len(data))
        if not more:
            break
        data += more
    return data


def _publish(partial: str, target: str) -> None:
    """Put a finished object in place: rename its temporary file to its key."""
    os.replace(partial, target)


def _crc32c(data: bytes) -> bytes:
    import google_crc32c

    return int(google_crc32c.value(data)).to_bytes(4, "little")


def _is_sharded(meta: Any) -> bool:
    from zarr.codecs import ShardingCodec

    return len(meta.codecs) == 1 and isinstance(meta.codecs[0], ShardingCodec)


def chunk_coder(meta: Any, chunks: tuple[int, ...]) -> tuple[Callable, Callable]:
    """Encode and decode functions of one chunk of the array with metadata ``meta`` (Zarr v3)."""
    return _v3_coder(meta, chunks)


def _v3_coder(meta: Any, chunks: tuple[int, ...]) -> tuple[Callable, Callable]:
    """Encode and decode one chunk through the array's own Zarr v3 codec objects (array -> bytes, then
    bytes -> bytes), as zarr does for every chunk."""
    from zarr.core.array_spec import ArrayConfig, ArraySpec
    from zarr.core.buffer import default_buffer_prototype

    codecs = [_one_at_a_time(c) for c in (meta.codecs[0].codecs if _is_sharded(meta) else meta.codecs)]
    to_bytes, *byte_codecs = codecs
    if not hasattr(to_bytes, "_encode_sync") or any(not hasattr(c, "_encode_sync") for c in byte_codecs):
        raise ValueError(f"codecs {codecs} cannot be run one chunk at a time")
    prototype = default_buffer_prototype()
    spec = ArraySpec(shape=chunks, dtype=meta.data_type, fill_value=meta.fill_value,
                     config=ArrayConfig.from_dict({}), prototype=prototype)

    def encode(chunk: np.ndarray) -> bytes:
        buffer = to_bytes._encode_sync(prototype.nd_buffer.from_numpy_array(chunk), spec)
        for codec in byte_codecs:
            buffer = codec._encode_sync(buffer, spec)
        return buffer.to_bytes()

    def decode(data: bytes) -> np.ndarray:
        buffer = prototype.buffer.from_bytes(data)
        for codec in reversed(byte_codecs):
            buffer = codec._decode_sync(buffer, spec)
        return to_bytes._decode_sync(buffer, spec).as_numpy_array()

    return encode, decode


class _NumcodecsSerializer:
    """A numcodecs serializer of zarr (``zarr.codecs.numcodecs.PCodec``: array -> bytes), run on this thread one
    chunk at a time as zarr's own codecs are (zarr runs it only through its asynchronous pipeline)."""

    def __init__(self, codec: Any):
        self.codec = codec

    def _encode_sync(self, chunk: Any, spec: Any) -> Any:
        return spec.prototype.buffer.from_bytes(self.codec._codec.encode(chunk.as_ndarray_like()))

    def _decode_sync(self, data: Any, spec: Any) -> Any:
        decoded = self.codec._codec.decode(data.to_bytes())
        return spec.prototype.nd_buffer.from_ndarray_like(np.asarray(decoded).reshape(spec.shape))


def _one_at_a_time(codec: Any) -> Any:
    from zarr.abc.codec import ArrayBytesCodec

    if not hasattr(codec, "_encode_sync") and isinstance(codec, ArrayBytesCodec) and hasattr(codec, "_codec"):
        return _NumcodecsSerializer(codec)
    return codec


def _v2_coder(meta: Any, chunks: tuple[int, ...], dtype: np.dtype) -> tuple[Callable, Callable]:
    """Encode and decode one chunk of a Zarr v2 array: C-order bytes of the stored dtype, then its compressor."""
    if meta.filters or meta.order != "C":
        raise ValueError(f"Zarr v2 filters {meta.filters} or order {meta.order} are not written here")
    stored = dtype.newbyteorder("<") if dtype.byteorder not in "|" else dtype
    compressor = meta.compressor

    def encode(chunk: np.ndarray) -> bytes:
        raw = np.ascontiguousarray(chunk, dtype=stored)
        return bytes(compressor.encode(raw)) if compressor is not None else raw.tobytes()

    def decode(data: bytes) -> np.ndarray:
        raw = compressor.decode(data) if compressor is not None else data
        return np.frombuffer(raw, dtype=stored).reshape(chunks).astype(dtype, copy=False)

    return encode, decode


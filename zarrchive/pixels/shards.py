"""Shards: whole stored objects of a local Zarr array written straight from numpy blocks, each one proven.

A streaming task owns whole shards (or whole chunks, unsharded), so it need
not go through zarr-python's asynchronous pipeline, which keeps per-chunk
bookkeeping on every write and as much again on the read that proves it.
``ArrayWriter`` encodes each chunk with the array's own codec objects (those
zarr built from the array's metadata, so the bytes are the ones zarr would
write), assembles a shard as the sharding codec specifies (the chunks, then
the index of offsets and lengths, little-endian uint64, with its CRC32C),
writes it under a temporary name and renames it into place. Then it reads the
stored object back from the disk, decodes every chunk of it and compares the
bits with the block: any difference raises ``VerificationError``.

Chunks holding only the fill value (bit for bit) are not stored, as zarr does
not store them either. Zarr v3 (sharded or not) and Zarr v2 (one object per
chunk: OME-NGFF 0.4) are written; readers see ordinary Zarr arrays.
"""

from __future__ import annotations

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
        if block.dtype != self.dtype or block.shape != tuple(r.stop - r.start for r in region):
            raise ValueError(f"{self.path}: a {block.shape} {block.dtype} block for region {region} of a "
                             f"{self.dtype} array")
        for r, o, n in zip(region, self.objects, self.shape):
            if r.start % o or (r.stop % o and r.stop != n):
                raise ValueError(f"{self.path}: region {region} is not made of whole objects of {self.objects}")
        stored = Stored()
        starts = [range(r.start, r.stop, o) for r, o in zip(region, self.objects)]
        for start in itertools.product(*starts):
            cell = tuple(slice(s, min(s + o, n)) for s, o, n in zip(start, self.objects, self.shape))
            local = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(cell, region))
            key = self.key(tuple(c.start // o for c, o in zip(cell, self.objects)))
            proven, written = self._write_object(os.path.join(self.path, *key.split("/")), block[local],
                                                 tuple(c.start for c in cell), ready or {})
            stored.chunks += proven
            if written is not None:
                stored.objects[f"{prefix}{key}"] = written
        return stored

    def _write_object(self, target: str, block: np.ndarray, at: tuple[int, ...] = (),
                      ready: dict[tuple[int, ...], bytes] | None = None) -> tuple[int, tuple[int, str] | None]:
        # what a write holds at once: ``block``, one chunk's contiguous copy, the encoded chunks until they are
        # written, then the object read back; the chunks to prove are kept as views of ``block``, not copies
        inner = [c // k for c, k in zip(self.objects, self.chunks)] if self.sharded else [1] * len(self.chunks)
        pieces, table, offset, proven = [], np.full((int(np.prod(inner)), 2), ABSENT, dtype="<u8"), 0, 0
        expected: list[tuple[int, np.ndarray]] = []
        for i, position in enumerate(itertools.product(*[range(n) for n in inner])):
            origin = [p * k for p, k in zip(position, self.chunks)]
            if any(o >= b for o, b in zip(origin, block.shape)):
                continue  # beyond the array's end
            view = block[tuple(slice(o, o + k) for o, k in zip(origin, self.chunks))]
            proven += 1
            if bits(view).flat[0] == self.fill[0] and np.all(bits(view) == self.fill[0]):
                continue  # only the fill value (bit for bit), which is what a missing chunk reads as: not stored
            data = ready.get(tuple(a + o for a, o in zip(at, origin))) if ready and view.shape == self.chunks else None
            if data is None:
                data = self.encode(self._padded(view))
            pieces.append(data)
            table[i] = (offset, len(data))
            offset += len(data)
            expected.append((i, view))
        if not pieces:
            if os.path.exists(target):
                os.remove(target)
            return proven, None
        if self.sharded:
            index_bytes = table.tobytes()
            pieces.append(index_bytes + _crc32c(index_bytes))
        _write_atomically(target, pieces)
        pieces.clear()  # the object is read back from the file to prove it: the bytes written are not needed
        return proven, self._prove(target, table, expected)

    def _padded(self, chunk: np.ndarray) -> np.ndarray:
        """A chunk cut by the array's end, padded with the fill value to the whole chunk (as zarr stores it)."""
        if chunk.shape == self.chunks:
            return np.ascontiguousarray(chunk)
        whole = np.empty(self.chunks, dtype=self.dtype)
        bits(whole)[...] = self.fill[0]
        whole[tuple(slice(0, n) for n in chunk.shape)] = chunk
        return whole

    def _prove(self, target: str, table: np.ndarray, expected: list[tuple[int, np.ndarray]]) -> tuple[int, str]:
        """Size and sha256 of the stored object, read back: every chunk decodes to the pixels written (``expected``:
        each chunk's index and pixels, cut by the array's end where it ends; raises otherwise)."""
        with open(target, "rb") as fh:
            stored = fh.read()
        if self.sharded:
            n = len(table) * 16
            index_bytes, crc = stored[-n - 4:-4], stored[-4:]
            if crc != _crc32c(index_bytes) or index_bytes != table.tobytes():
                raise VerificationError(f"{target}: the stored shard index differs from the one written")
        for i, chunk in expected:
            start, length = (int(v) for v in table[i]) if self.sharded else (0, len(stored))
            try:
                decoded = self.decode(stored[start:start + length])
            except Exception as exc:
                raise VerificationError(f"{target}: chunk {i} cannot be decoded: {type(exc).__name__}: {exc}") from exc
            if decoded.shape != self.chunks or not self._same(decoded, chunk):
                raise VerificationError(f"{target}: chunk {i} decodes to other pixels than those written")
        return len(stored), hashlib.sha256(stored).hexdigest()

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


def _write_atomically(target: str, pieces: list[bytes]) -> None:
    """Write ``pieces`` as the object ``target``: under a temporary name (``<key>.<hex>.partial``, swept by
    ``storage.remove_unfinished_writes`` if the process dies), then renamed into place."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = f"{target}.{uuid.uuid4().hex}.partial"
    with open(partial, "wb") as fh:
        for piece in pieces:
            fh.write(piece)
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


"""Arrow IPC streams in and out of ``/v1/predict/arrow``, read with bounded work.

Before anything is decoded, each message's metadata (a small flatbuffer) is read for its row
count and compression: compressed bodies are refused (a few MB of zstd can stand for GBs of
columns) and the rows are capped, so decoding costs about the body's size. Every malformed
stream is an :class:`ArrowStreamError` naming what is wrong, never a 5xx.
"""

from __future__ import annotations

import struct
from collections import Counter

import pyarrow as pa

from scorebox.errors import ArrowStreamError

ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"

# MessageHeader union values (Arrow's Message.fbs).
_DICTIONARY_BATCH, _RECORD_BATCH = 2, 3


class _Table:
    """A flatbuffer table: reads its fields by index (enough of the format for two fields)."""

    def __init__(self, data: bytes, position: int) -> None:
        self.data = data
        self.position = position
        vtable = position - struct.unpack_from("<i", data, position)[0]
        self.vtable = vtable
        self.vtable_size = struct.unpack_from("<H", data, vtable)[0]

    def _offset(self, field: int) -> int:
        slot = 4 + 2 * field
        if slot >= self.vtable_size:
            return 0
        return int(struct.unpack_from("<H", self.data, self.vtable + slot)[0])

    def has(self, field: int) -> bool:
        return self._offset(field) != 0

    def scalar(self, field: int, fmt: str, default: int = 0) -> int:
        offset = self._offset(field)
        if not offset:
            return default
        return int(struct.unpack_from(fmt, self.data, self.position + offset)[0])

    def table(self, field: int) -> _Table | None:
        offset = self._offset(field)
        if not offset:
            return None
        at = self.position + offset
        return _Table(self.data, at + struct.unpack_from("<I", self.data, at)[0])


def _batch_facts(metadata: bytes) -> tuple[int, int, bool]:
    """(header type, rows, compressed) of one IPC message, from its metadata alone."""
    try:
        message = _Table(metadata, struct.unpack_from("<I", metadata, 0)[0])
        header_type = message.scalar(1, "<B")
        header = message.table(2)
        if header_type == _DICTIONARY_BATCH and header is not None:
            header = header.table(1)
        if header_type not in (_DICTIONARY_BATCH, _RECORD_BATCH) or header is None:
            return header_type, 0, False
        return header_type, header.scalar(0, "<q"), header.has(3)
    except struct.error:
        raise ArrowStreamError(
            "body is not an Arrow IPC stream: its message metadata is cut short"
        ) from None


def read_table(body: bytes, max_rows: int) -> pa.Table:
    """The stream in ``body`` as one table, after checking its size and compression."""
    buffer = pa.py_buffer(body)
    rows = 0
    try:
        reader = pa.ipc.MessageReader.open_stream(buffer)
        while True:
            try:
                message = reader.read_next_message()
            except StopIteration:
                break
            if message is None:
                break
            kind, count, compressed = _batch_facts(message.metadata.to_pybytes())
            if compressed:
                raise ArrowStreamError(
                    "compressed Arrow IPC is not accepted; send the stream uncompressed"
                )
            if count < 0:
                raise ArrowStreamError("body is not an Arrow IPC stream: a batch has negative rows")
            if kind == _RECORD_BATCH:
                rows += count
                if rows > max_rows:
                    raise ArrowStreamError(
                        f"more than {max_rows} rows in one batch (SCOREBOX_SERVICE_MAX_ROWS): "
                        "send smaller batches",
                        413,
                    )
        table = pa.ipc.open_stream(buffer).read_all()
        table.validate(full=True)
    except ArrowStreamError:
        raise
    except (pa.ArrowException, OSError, ValueError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ArrowStreamError(f"body is not a valid Arrow IPC stream: {reason}") from None
    duplicated = [name for name, n in Counter(table.column_names).items() if n > 1]
    if duplicated:
        raise ArrowStreamError(
            f"column {duplicated[0]!r} appears {table.column_names.count(duplicated[0])} times"
        )
    if table.num_rows == 0:
        raise ArrowStreamError("batch has no rows")
    return table


def write_table(table: pa.Table) -> bytes:
    """``table`` as an (uncompressed) Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())

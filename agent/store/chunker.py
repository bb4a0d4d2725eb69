"""Content-defined chunking (FastCDC): an edit in the middle of a file or dump changes only nearby chunks.

The parameters are stored in the repository's config so that every writer cuts the same way; changing
them for an existing repository would silently defeat deduplication.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator

# FastCDC's real average is avg_size + min_size: about 320 KiB here. Smaller chunks dedupe scattered
# updates better, larger ones keep the index small; see bench/ for the numbers behind the choice.
DEFAULT_AVG = 256 * 1024
DEFAULT_MIN = 64 * 1024
DEFAULT_MAX = 2 * 1024 * 1024


@dataclass(frozen=True)
class ChunkerParams:
    avg: int = DEFAULT_AVG
    min: int = DEFAULT_MIN
    max: int = DEFAULT_MAX

    def to_json(self) -> dict:
        return {"avg": self.avg, "min": self.min, "max": self.max}


# Database dumps: 4x finer. A row updated anywhere makes its whole chunk new, and tables updated all over
# are common (bench/mysql.py, README "Scattered updates": 1 row in 1,000 updated = 98% new at 256 KiB,
# 60% at 64 KiB); contiguous changes cost the same at either size.
STREAM_CHUNKER = ChunkerParams(avg=64 * 1024, min=16 * 1024, max=512 * 1024)


class Chunker:
    def __init__(self, params: ChunkerParams, seed: int = 0) -> None:
        """`seed`: 0, FastCDC's published gear table; an encrypted repository's secret seed otherwise, so
        that chunk boundaries (and so sizes) do not fingerprint known files (Borg's chunker seed)."""
        from pyfastcdc import FastCDC  # here: a backup that reads no file never needs it (start-up time)

        self.params = params
        self._cdc = FastCDC(params.avg, min_size=params.min, max_size=params.max, seed=seed)

    def split(self, data: bytes) -> Iterator[memoryview]:
        if len(data) <= self.params.min:
            yield memoryview(data)
            return
        for chunk in self._cdc.cut_buf(data):
            yield chunk.data

    def split_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Chunks of a stream; each view is valid only until the next one is taken."""
        for chunk in self._cdc.cut_stream(stream):
            yield chunk.data

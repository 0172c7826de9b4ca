"""docs/WAL_FORMAT.md is enough to write a reader: this one uses only struct, xxhash, zstd
and msgpack, following the document, and must agree with shrivenq's reader."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import xxhash
import zstandard

from shrivenq.wal import CODEC_PLAIN, Kind, WalWriter, read_wal
from shrivenq.wal import records as R

T0 = 1_763_610_300_000_000_000


def independent_read(path):
    data = open(path, "rb").read()
    h = xxhash.xxh3_64_intdigest
    assert data[:8] == b"SHRVQWAL"
    version, hsize = struct.unpack_from("<HH", data, 8)
    assert (version, hsize) == (2, 96)
    assert struct.unpack_from("<Q", data, 88)[0] == h(data[:88])
    venue = data[32:64].rstrip(b"\0").decode()
    foot_off, magic, check = struct.unpack_from("<Q8sQ", data, len(data) - 24)
    assert magic == b"SHRVEND\0" and check == h(data[len(data) - 24:len(data) - 8])
    assert data[foot_off:foot_off + 4] == b"WFTR"
    stored = struct.unpack_from("<I", data, foot_off + 12)[0]
    footer = msgpack.unpackb(data[foot_off + 64:foot_off + 64 + stored], strict_map_key=False)
    index = np.frombuffer(footer["index"], dtype=[("offset", "<u8"), ("size", "<u4"),
                                                  ("records", "<u4"), ("first", "<u8"),
                                                  ("lo", "<i8"), ("hi", "<i8")])
    out = []
    for row in index:
        off = int(row["offset"])
        (magic, codec, flags, _, block, stored, raw_len, n, lo, hi, first, body_check,
         head_check) = struct.unpack_from("<4sBBHIIIIqqQQQ", data, off)
        assert magic == b"WBLK" and head_check == h(data[off:off + 56])
        body = data[off + 64:off + 64 + stored]
        assert h(body) == body_check and codec == 0
        raw = zstandard.ZstdDecompressor().decompress(body, max_output_size=raw_len)
        n2, m, total = struct.unpack_from("<IIQ", raw, 0)
        pos = 16
        wall = np.cumsum(np.frombuffer(raw, "<i8", n, pos), dtype=np.int64); pos += 8 * n
        mono = np.cumsum(np.frombuffer(raw, "<i8", n, pos), dtype=np.int64) + wall
        pos += 8 * n
        if flags & 2:                              # keys as a dictionary
            (u,) = struct.unpack_from("<I", raw, pos); pos += 4
            table = np.frombuffer(raw, "<u8", u, pos); pos += 8 * u
            width = next(w for w in (1, 2, 3, 4) if u <= 256 ** w or w == 4)
            ids = np.zeros(m, dtype=np.int64)
            for _ in range(width):                 # byte planes, most significant first
                ids = ids * 256 + np.frombuffer(raw, "u1", m, pos); pos += m
            keys = table[ids]
        else:
            keys = np.frombuffer(raw, "<u8", m, pos); pos += 8 * m
        conn = np.frombuffer(raw, "<u4", n, pos); pos += 4 * n
        length = np.frombuffer(raw, "<u4", n, pos); pos += 4 * n
        kcount = np.frombuffer(raw, "<u4", n, pos); pos += 4 * n
        kind = np.frombuffer(raw, "u1", n, pos); pos += n
        pos += n                                   # versions
        k = 0
        for i in range(n):
            out.append((int(kind[i]), int(conn[i]), int(wall[i]), int(mono[i]),
                        raw[pos:pos + int(length[i])], keys[k:k + int(kcount[i])].tolist()))
            pos += int(length[i])
            k += int(kcount[i])
    return venue, footer, out


def test_an_independent_reader_agrees(tmp_path):
    with WalWriter(tmp_path, "kite", block_bytes=300, codec=CODEC_PLAIN) as w:
        w.append(*R.session_start("s1", "kite", "0.1", ["capture"]), T0 - 10, 1)
        for i in range(100):
            w.append(Kind.BINARY, b"m%d" % i * (i % 7 + 1), T0 + i * 7919, 100 + i * 13,
                     conn=i % 3, instruments=[i, i * 2] if i % 2 else None)
    seg = next(tmp_path.rglob("*.wal"))
    venue, footer, recs = independent_read(seg)
    assert venue == "kite" and footer["records"] == 101 == len(recs)
    ours = read_wal(seg)
    assert recs == [(r.kind, r.conn, r.wall_ns, r.mono_ns, r.payload, list(r.instruments))
                    for r in ours]

"""Plain-Python twin of ``shrivenq._ext.tick_delta``: the tick-aware block transform.

Clear, not fast. ``pack`` here and in the compiled module must give identical bytes, and each
must ``unpack`` the other's output; ``tests/test_wal_codec.py`` checks both. The byte layout
is specified in ``docs/TICK_DELTA.md`` (and the docstring of ``ext/tick_delta.pyx``); the
comments below name its sections.
"""

from __future__ import annotations

import math
import struct

import numpy as np

MAGIC = b"TD"
VERSION = 3
HEADER = struct.Struct("<2sBBIII5I")   # magic, version, flags, payloads, raw bytes, keys, n[5]
HEADER_SIZE = HEADER.size              # 36

#: Packet kinds by code; a packet's kind is its length.
KIND_LENGTHS = (8, 28, 32, 44, 184)
KIND_OF_LENGTH = {n: k for k, n in enumerate(KIND_LENGTHS)}
KIND_WORDS = tuple(n // 4 for n in KIND_LENGTHS)     # 2, 7, 8, 11, 46 (word 0 = token)

# Predictor rules. ``cur`` is the packet being coded, ``prev`` the previous packet of the same
# key in the block, ``glob`` the previous packet of the same kind in the block (any key).
P = ("P",)            # next: prev[w]
Z = ("Z",)            # first: the word itself is the residual (no zigzag)
P16 = ("P16",)        # next: like P on the word rotated by 16 bits
Z16 = ("Z16",)        # first: the word rotated by 16 bits is the residual (no zigzag)
G = ("G",)            # both: glob[w], 0 if no packet of the kind came before


def REF(a):           # first: cur[a]
    return ("REF", a)


def LEVEL(a):         # next: prev[w] + cur[a] - prev[a]
    return ("LEVEL", a)


def TQ(v):            # next: cur[v] - prev[v] if cur[v] != prev[v] else prev[w]
    return ("TQ", v)


def TT(v, e):         # next: cur[e] if cur[v] != prev[v] else prev[w]
    return ("TT", v, e)


def _full_rules():
    r = {1: (P, Z), 2: (TQ(4), Z), 3: (P, REF(1)), 4: (P, Z), 5: (P, Z), 6: (P, Z)}
    for w in (7, 8, 9, 10):
        r[w] = (P, REF(1))
    r[11] = (TT(4, 15), REF(15))
    r[12] = (P, Z)
    r[13] = (P, REF(12))
    r[14] = (P, REF(12))
    r[15] = (G, G)
    for k in range(10):
        q = 16 + 3 * k
        ref = 1 if k in (0, 5) else q - 2   # the level before's price
        r[q] = (P, Z)
        r[q + 1] = (LEVEL(ref), REF(ref))
        r[q + 2] = (P16, Z16)   # orders (u16) then padding: rotated, orders at the bottom
    return r


#: Per kind: {word: (next rule, first rule)}, the decode order, and the mask slots
#: (word per bit, 0 = padding bit, always 0; slot s is bit s % 8 of mask byte s // 8).
RULES = (
    {1: (P, Z)},
    {1: (P, Z), 2: (P, REF(1)), 3: (P, REF(1)), 4: (P, REF(1)), 5: (P, REF(1)),
     6: (LEVEL(1), Z)},
    {1: (P, Z), 2: (P, REF(1)), 3: (P, REF(1)), 4: (P, REF(1)), 5: (P, REF(1)),
     6: (LEVEL(1), Z), 7: (G, G)},
    {1: (P, Z), 2: (TQ(4), Z), 3: (P, REF(1)), 4: (P, Z), 5: (P, Z), 6: (P, Z),
     7: (P, REF(1)), 8: (P, REF(1)), 9: (P, REF(1)), 10: (P, REF(1))},
    _full_rules(),
)
ORDERS = (
    (1,),
    (1, 2, 3, 4, 5, 6),
    (1, 2, 3, 4, 5, 6, 7),
    (1, 4, 2, 3, 5, 6, 7, 8, 9, 10),
    (1, 4, 15, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14) + tuple(range(16, 46)),
)
_Q = [16 + 3 * k for k in range(10)]
MASK_SLOTS = (
    (1, 0, 0, 0, 0, 0, 0, 0),
    (1, 2, 3, 4, 5, 6, 0, 0),
    (1, 2, 3, 4, 5, 6, 7, 0),
    (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0, 0, 0, 0),
    (1, 2, 3, 4, 5, 6, 7, 8,
     9, 10, 11, 12, 13, 14, 15, 0,
     *[w for q in _Q[0:4] for w in (q, q + 2)],
     *[w for q in _Q[4:8] for w in (q, q + 2)],
     *[w for q in _Q[8:10] for w in (q, q + 2)], 0, 0, 0, 0,
     *[q + 1 for q in _Q[0:8]],
     *[q + 1 for q in _Q[8:10]], 0, 0, 0, 0, 0, 0),
)
MASK_BYTES = tuple(len(s) // 8 for s in MASK_SLOTS)   # 1, 1, 1, 2, 7

#: Quantity words per kind: their residuals are scaled by the key's quantum (below).
QUANTITY_WORDS = (
    (),
    (),
    (),
    (2, 4, 5, 6),
    (2, 4, 5, 6, 12, 13, 14, *_Q),
)
#: The words whose gcd, in a key's first packet, gives the key's quantum (not oi: an
#: instrument's open interest need not be a multiple of its lot).
QUANTUM_WORDS = (
    (),
    (),
    (),
    (2, 4, 5, 6),
    (2, 4, 5, 6, *_Q),
)

for _k in range(5):
    assert sorted(RULES[_k]) == list(range(1, KIND_WORDS[_k]))
    assert sorted(ORDERS[_k]) == list(range(1, KIND_WORDS[_k]))
    assert sorted(w for w in MASK_SLOTS[_k] if w) == list(range(1, KIND_WORDS[_k]))
del _k

M32 = 0xFFFFFFFF


def zigzag(d: int) -> int:
    d &= M32
    s = d - (1 << 32) if d & 0x80000000 else d
    return ((s << 1) ^ (s >> 31)) & M32


def unzigzag(z: int) -> int:
    return ((z >> 1) ^ -(z & 1)) & M32


def rot16(x: int) -> int:
    return ((x << 16) | (x >> 16)) & M32


def _predict(rule, w, cur, prev, glob):
    """The predicted value of word ``w``; ``cur`` holds the words decoded so far."""
    t = rule[0]
    if t == "P":
        return prev[w]
    if t == "G":
        return glob[w] if glob is not None else 0
    if t == "REF":
        return cur[rule[1]]
    if t == "LEVEL":
        a = rule[1]
        return (prev[w] + cur[a] - prev[a]) & M32
    if t == "TQ":
        v = rule[1]
        return (cur[v] - prev[v]) & M32 if cur[v] != prev[v] else prev[w]
    if t == "TT":
        v, e = rule[1], rule[2]
        return cur[e] if cur[v] != prev[v] else prev[w]
    raise AssertionError(rule)


#: Kite segments (token & 0xFF) that trade in lots: nfo, cds, bfo, bcd, mcx, nco.
LOT_SEGMENTS = frozenset({2, 3, 5, 6, 7, 12})


def quantum(kind: int, cur: list[int]) -> int:
    """The key's quantum: for an instrument of a segment that trades in lots, the odd part of
    the gcd of its first packet's QUANTUM_WORDS (1 if they are all 0); 1 otherwise (cash
    equities have lot 1, and round book quantities could suggest a factor their later
    quantities do not share). This is the encoder's choice: a decoder only reads it."""
    if not QUANTUM_WORDS[kind] or (cur[0] & 0xFF) not in LOT_SEGMENTS:
        return 1
    g = 0
    for w in QUANTUM_WORDS[kind]:
        g = math.gcd(g, cur[w])
    if g == 0:
        return 1
    while g % 2 == 0:
        g //= 2
    return g


def inverse(q: int) -> int:
    """Inverse of odd ``q`` modulo 2^32."""
    return pow(q, -1, 1 << 32)


def _words(packet: bytes) -> list[int]:
    return list(struct.unpack(f">{len(packet) // 4}I", packet))


def _residuals(kind, cur, prev, glob, q):
    """Residual per word 1..W-1 (index 0 unused); ``prev`` None for a key's first packet;
    ``q`` the key's quantum."""
    out = [0] * KIND_WORDS[kind]
    which = 1 if prev is None else 0
    inv = inverse(q)
    for w in ORDERS[kind]:
        rule = RULES[kind][w][which]
        m = inv if w in QUANTITY_WORDS[kind] else 1
        if rule is Z:
            out[w] = (cur[w] * m) & M32
        elif rule is Z16:
            out[w] = rot16(cur[w])
        elif rule is P16:
            out[w] = zigzag(rot16(cur[w]) - rot16(prev[w]))
        else:
            out[w] = zigzag((cur[w] - _predict(rule, w, cur, prev, glob)) * m)
    return out


def _word(kind, rule, w, r, cur, prev, glob, q):
    """Inverse of one residual: word ``w`` from its residual ``r``."""
    m = q if w in QUANTITY_WORDS[kind] else 1
    if rule is Z:
        return (r * m) & M32
    if rule is Z16:
        return rot16(r)
    if rule is P16:
        return rot16((rot16(prev[w]) + unzigzag(r)) & M32)
    return (_predict(rule, w, cur, prev, glob) + unzigzag(r) * m) & M32


def _planes(values, width=4) -> bytes:
    """``values`` as ``width`` byte planes, most significant plane first."""
    a = np.asarray(values, dtype=">u4").view(np.uint8).reshape(-1, 4)[:, 4 - width:]
    return np.ascontiguousarray(a.T).tobytes()


def _id_width(n_keys: int) -> int:
    w = 1
    while n_keys - 1 >= 1 << (8 * w):
        w += 1
    return w


def _frame_packets(p: bytes):
    """The packets of a well-formed Kite frame, or None if ``p`` is not one."""
    n = len(p)
    if n < 2:
        return None
    count = int.from_bytes(p[0:2], "big")
    pos, out = 2, []
    for _ in range(count):
        if pos + 2 > n:
            return None
        plen = int.from_bytes(p[pos:pos + 2], "big")
        if plen not in KIND_OF_LENGTH or pos + 2 + plen > n:
            return None
        out.append(p[pos + 2:pos + 2 + plen])
        pos += 2 + plen
    return out if pos == n else None


def _lengths(lengths) -> list[int]:
    if not isinstance(lengths, np.ndarray) or lengths.dtype != np.uint32 or lengths.ndim != 1:
        raise ValueError("lengths must be a 1-d numpy uint32 array")
    if not lengths.flags.c_contiguous:
        raise ValueError("lengths must be C-contiguous")
    a = lengths
    return [int(x) for x in a]


def pack(payloads, lengths) -> bytes:
    data = bytes(memoryview(payloads).cast("B")) if not isinstance(payloads, bytes) else payloads
    lens = _lengths(lengths)
    if sum(lens) != len(data):
        raise ValueError(f"lengths sum to {sum(lens)} but the payloads hold {len(data)} bytes")
    tags, raw = bytearray(), bytearray()
    ids, key_kinds, key_tokens = [], bytearray(), []
    keys: dict[tuple[int, int], int] = {}
    quanta: list[int] = []                           # per key id
    last: list[list[int]] = []                       # per key id: its previous packet's words
    glob: list[list[int] | None] = [None] * 5       # per kind: the previous packet's words
    n = [0] * 5
    firsts = [[] for _ in range(5)]                  # per kind: residual rows of first packets
    masks = [[] for _ in range(5)]                   # per kind: mask bytes of next packets
    values = [[[] for _ in range(KIND_WORDS[k])] for k in range(5)]
    pos = 0
    for length in lens:
        p = data[pos:pos + length]
        pos += length
        packets = _frame_packets(p)
        if packets is None:
            tags.append(0)
            raw += p
            continue
        tags.append(1)
        for pk in packets:
            kind = KIND_OF_LENGTH[len(pk)]
            cur = _words(pk)
            key = (cur[0], kind)
            n[kind] += 1
            kid = keys.get(key)
            if kid is None:
                kid = keys[key] = len(keys)
                key_kinds.append(kind)
                key_tokens.append(cur[0])
                quanta.append(quantum(kind, cur))
                firsts[kind].append(_residuals(kind, cur, None, glob[kind], quanta[kid]))
                last.append(cur)
            else:
                r = _residuals(kind, cur, last[kid], glob[kind], quanta[kid])
                slots = MASK_SLOTS[kind]
                mb = bytearray(MASK_BYTES[kind])
                for s, w in enumerate(slots):
                    if w and r[w]:
                        mb[s // 8] |= 1 << (s % 8)
                        values[kind][w].append(r[w])
                masks[kind].append(bytes(mb))
                last[kid] = cur
            glob[kind] = cur
            ids.append(kid)
    out = bytearray(HEADER.pack(MAGIC, VERSION, 0, len(lens), len(raw), len(keys), *n))
    out += tags
    out += raw
    out += _planes(ids, _id_width(len(keys)))
    out += key_kinds
    out += _planes(key_tokens)
    out += _planes(quanta)
    for k in range(5):
        for w in range(1, KIND_WORDS[k]):
            out += _planes([row[w] for row in firsts[k]])
    for k in range(5):
        for b in range(MASK_BYTES[k]):
            out += bytes(m[b] for m in masks[k])
    for k in range(5):
        for w in range(1, KIND_WORDS[k]):
            out += _planes(values[k][w])
    return bytes(out)


class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                             f"{len(self.buf) - self.pos} left")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b


def _read_planes(r: _Reader, count: int, width: int, what: str) -> list[int]:
    raw = r.take(count * width, what)
    vals = [0] * count
    for p in range(width):
        shift = 8 * (width - 1 - p)
        plane = raw[p * count:(p + 1) * count]
        for i in range(count):
            vals[i] |= plane[i] << shift
    return vals


def unpack(packed, lengths) -> bytes:
    buf = bytes(memoryview(packed).cast("B"))
    lens = _lengths(lengths)
    if len(buf) < HEADER_SIZE:
        raise ValueError(f"truncated: {len(buf)} bytes, the header needs {HEADER_SIZE}")
    magic, version, flags, n_payloads, raw_bytes, n_keys, *n = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise ValueError("not a tick-delta block (bad magic)")
    if version != VERSION:
        raise ValueError(f"unsupported tick-delta version {version}")
    if flags != 0:
        raise ValueError(f"unknown flags {flags:#x}")
    if n_payloads != len(lens):
        raise ValueError(f"block holds {n_payloads} payloads, {len(lens)} lengths given")
    n_packets = sum(n)
    if n_packets > len(buf) or n_keys > n_packets or raw_bytes > len(buf):
        raise ValueError("header counts exceed what the block can hold")
    r = _Reader(buf)
    r.pos = HEADER_SIZE
    tags = r.take(n_payloads, "tags")
    if any(t > 1 for t in tags):
        raise ValueError("payload tag other than 0 (verbatim) or 1 (frame)")
    n_frames = sum(tags)
    expect = raw_bytes + 2 * n_frames + sum(n[k] * (2 + KIND_LENGTHS[k]) for k in range(5))
    if sum(lens) != expect:
        raise ValueError(f"lengths sum to {sum(lens)}, the block decodes to {expect} bytes")
    raw = r.take(raw_bytes, "verbatim payloads")
    ids = _read_planes(r, n_packets, _id_width(n_keys), "packet keys")
    key_kinds = r.take(n_keys, "key kinds")
    if any(k > 4 for k in key_kinds):
        raise ValueError("key kind code above 4")
    key_tokens = _read_planes(r, n_keys, 4, "key tokens")
    quanta = _read_planes(r, n_keys, 4, "key quanta")
    if any(q % 2 == 0 for q in quanta):
        raise ValueError("a key quantum is even")
    f = [0] * 5
    for k in key_kinds:
        f[k] += 1
    if any(f[k] > n[k] for k in range(5)):
        raise ValueError("more keys of a kind than packets of that kind")
    firsts = []
    for k in range(5):
        cols = [None] + [_read_planes(r, f[k], 4, "first packets")
                         for _ in range(1, KIND_WORDS[k])]
        firsts.append(cols)
    masks = []
    for k in range(5):
        m = n[k] - f[k]
        masks.append([r.take(m, "masks") for _ in range(MASK_BYTES[k])])
    values = []
    for k in range(5):
        m = n[k] - f[k]
        counts = [0] * KIND_WORDS[k]
        for s, w in enumerate(MASK_SLOTS[k]):
            col = masks[k][s // 8]
            bit = 1 << (s % 8)
            c = sum(1 for i in range(m) if col[i] & bit)
            if not w and c:
                raise ValueError("a padding bit of a mask is set")
            counts[w] += c
        values.append([None] + [_read_planes(r, counts[w], 4, "values")
                                for w in range(1, KIND_WORDS[k])])
    if r.pos != len(buf):
        raise ValueError(f"{len(buf) - r.pos} trailing bytes after the block")

    out = bytearray()
    raw_pos = pkt = seen = 0
    last: list[list[int]] = []
    glob: list[list[int] | None] = [None] * 5
    fi, ni = [0] * 5, [0] * 5
    vi = [[0] * KIND_WORDS[k] for k in range(5)]
    for tag, length in zip(tags, lens):
        if tag == 0:
            if raw_pos + length > raw_bytes:
                raise ValueError("verbatim payloads overrun their section")
            out += raw[raw_pos:raw_pos + length]
            raw_pos += length
            continue
        if length < 2:
            raise ValueError(f"frame payload of {length} bytes (a frame needs 2)")
        start = len(out)
        out += b"\0\0"
        pos = count = 0
        while pos < length - 2:
            if pkt >= n_packets:
                raise ValueError("frames need more packets than the block holds")
            kid = ids[pkt]
            pkt += 1
            if kid > seen or kid >= n_keys:
                raise ValueError(f"packet key {kid} out of order")
            if kid == seen:
                kind = key_kinds[kid]
                seen += 1
                if fi[kind] >= f[kind]:
                    raise ValueError("more first packets than keys")
                res = [0] + [firsts[kind][w][fi[kind]] for w in range(1, KIND_WORDS[kind])]
                fi[kind] += 1
                prev = None
                cur = [key_tokens[kid]] + [0] * (KIND_WORDS[kind] - 1)
            else:
                kind = key_kinds[kid]
                if ni[kind] >= n[kind] - f[kind]:
                    raise ValueError("more packets of a kind than the header says")
                res = [0] * KIND_WORDS[kind]
                for s, w in enumerate(MASK_SLOTS[kind]):
                    if w and masks[kind][s // 8][ni[kind]] & (1 << (s % 8)):
                        res[w] = values[kind][w][vi[kind][w]]
                        vi[kind][w] += 1
                ni[kind] += 1
                prev = last[kid]
                cur = [prev[0]] + [0] * (KIND_WORDS[kind] - 1)
            which = 1 if prev is None else 0
            for w in ORDERS[kind]:
                cur[w] = _word(kind, RULES[kind][w][which], w, res[w], cur, prev, glob[kind],
                               quanta[kid])
            plen = KIND_LENGTHS[kind]
            if pos + 2 + plen > length - 2:
                raise ValueError("packets overrun their frame")
            out += plen.to_bytes(2, "big")
            out += struct.pack(f">{len(cur)}I", *cur)
            if kid < len(last):
                last[kid] = cur
            else:
                last.append(cur)
            glob[kind] = cur
            pos += 2 + plen
            count += 1
        if count > 0xFFFF:
            raise ValueError(f"frame of {count} packets (at most 65535)")
        out[start:start + 2] = count.to_bytes(2, "big")
    if pkt != n_packets or seen != n_keys or raw_pos != raw_bytes:
        raise ValueError("block holds packets or bytes that no payload uses")
    if any(fi[k] != f[k] or ni[k] != n[k] - f[k] for k in range(5)):
        raise ValueError("per-kind packet counts do not match the header")
    return bytes(out)

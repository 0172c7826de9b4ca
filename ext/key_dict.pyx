# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The WAL's key dictionary for one block (docs/WAL_FORMAT.md, "Block body"): the distinct
instrument keys and each key's index among them, found with a hash table in one pass.

A block repeats a few hundred tokens thousands of times. ``numpy.unique(keys,
return_inverse=True)`` gives the same answer, and is the plain twin the tests hold this to,
but it sorts every key: about 280 us for a block's 5,700 keys on the writer's thread, where
this takes a few tens.
"""

from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t

cimport numpy as cnp
import numpy as np

cnp.import_array()


cdef inline uint64_t _slot(uint64_t key, int shift) noexcept nogil:
    # Fibonacci hashing: the top bits of key * 2^64/phi spread near-consecutive tokens.
    return (key * <uint64_t>0x9E3779B97F4A7C15) >> shift


def key_dictionary(keys):
    """``(distinct, ids)`` for the u64 keys ``keys``: the distinct keys ascending (u64) and,
    for each key, its index in ``distinct`` (u32); ``numpy.unique(keys,
    return_inverse=True)``, without sorting the keys."""
    cdef const uint64_t[::1] k = np.ascontiguousarray(keys, dtype=np.uint64)
    cdef Py_ssize_t m = k.shape[0], i, cap = 16
    cdef int shift = 60
    while cap < 2 * m:
        cap <<= 1
        shift -= 1
    slots_a = np.full(cap, -1, dtype=np.int32)        # index into first_a, or -1
    first_a = np.empty(m, dtype=np.uint64)             # distinct keys, first seen first
    ids_a = np.empty(m, dtype=np.uint32)
    cdef int32_t[::1] slots = slots_a
    cdef uint64_t[::1] first = first_a
    cdef uint32_t[::1] ids = ids_a
    cdef int32_t u = 0, at
    cdef uint64_t s, key, mask = cap - 1
    with nogil:
        for i in range(m):
            key = k[i]
            s = _slot(key, shift)
            while True:
                at = slots[s]
                if at < 0:
                    slots[s] = u
                    first[u] = key
                    ids[i] = u
                    u += 1
                    break
                if first[at] == key:
                    ids[i] = at
                    break
                s = (s + 1) & mask
    distinct = first_a[:u]
    order = np.argsort(distinct, kind="stable")        # u is small: a few hundred
    rank = np.empty(u, dtype=np.uint32)
    rank[order] = np.arange(u, dtype=np.uint32)
    return distinct[order], rank.take(ids_a)


def expand_keys(const uint64_t[::1] table, const uint8_t[::1] planes, Py_ssize_t m):
    """The instrument keys a block's key dictionary stands for: ``table[id]`` for each of
    the ``m`` ids stored as ``len(planes) // m`` byte planes, most significant plane first.
    Raises ValueError when the table is not strictly ascending (the writer never makes one)
    and naming the largest id when one is past the table. The plain twin (decode_body's
    fallback) checks the table and builds the ids with numpy and takes them: one pass here,
    five there, for a key per tick on replay's path."""
    cdef Py_ssize_t n = table.shape[0], width, i, p
    cdef uint32_t idx, top = 0
    if m < 0 or (m == 0 and planes.shape[0]) or (m and planes.shape[0] % m):
        raise ValueError(f"{planes.shape[0]} bytes of planes for {m} ids")
    width = planes.shape[0] // m if m else 1
    if width < 1 or width > 4:
        raise ValueError(f"key ids of {width} bytes")
    for i in range(1, n):
        if table[i] <= table[i - 1]:
            raise ValueError("instrument key dictionary is not ascending and distinct")
    out_a = np.empty(m, dtype=np.uint64)
    cdef uint64_t[::1] out = out_a
    if m == 0:
        return out_a
    if n == 0:
        raise ValueError(f"instrument key ids for an empty dictionary")
    cdef const uint8_t* pl = &planes[0]
    cdef const uint64_t* tab = &table[0]
    cdef uint64_t* o = &out[0]
    with nogil:
        if width == 1:          # up to 256 distinct keys: nearly every block
            for i in range(m):
                idx = pl[i]
                top = idx if idx > top else top
                o[i] = tab[idx if idx < <uint32_t>n else 0]
        else:
            for i in range(m):
                idx = pl[i]
                for p in range(1, width):
                    idx = (idx << 8) | pl[p * m + i]
                top = idx if idx > top else top
                o[i] = tab[idx if idx < <uint32_t>n else 0]
    if top >= <uint32_t>n:
        raise ValueError(f"instrument key id {top} past the {n} keys")
    return out_a

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kite books: the latest state of every instrument, merged from parsed packets.

State is one TICK_DTYPE row per instrument. A packet updates only the field groups it
carried (its ``fields`` mask): an ltp packet moves last_price and leaves the depth a full
packet set; the state's ``fields`` is the union of everything seen. ``kind``, ``mode`` and
``packet_length`` are those of the latest packet. Integers throughout; the divisor travels
in each row.

Lookup by token is a C open-addressing table, so applying a batch creates no Python object
per tick. Plain-Python twin: ``shrivenq.books.reference.ReferenceKiteBooks``.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from tick_row cimport *
from cpython.mem cimport PyMem_Calloc, PyMem_Free

cimport cython
cimport numpy as cnp
import numpy as np

from shrivenq._ext.kite_frame import TICK_DTYPE

cnp.import_array()

cdef packed struct Tally:
    uint32_t token      # filled in by tally(), not on the hot path
    uint32_t _pad
    uint64_t ticks
    int64_t first_ns
    int64_t last_ns

TALLY_DTYPE = np.dtype([("token", "<u4"), ("_pad", "<u4"), ("ticks", "<u8"),
                        ("first_ns", "<i8"), ("last_ns", "<i8")])

if sizeof(TickRow) != TICK_DTYPE.itemsize or sizeof(Tally) != TALLY_DTYPE.itemsize:
    raise ImportError("kite_book's TickRow does not match TICK_DTYPE")


cdef inline uint32_t mix(uint32_t x) noexcept nogil:
    # Tokens share their low byte (the segment); mix so they spread over the table.
    x ^= x >> 16
    x *= 0x7feb352dU
    x ^= x >> 15
    x *= 0x846ca68bU
    x ^= x >> 16
    return x


cdef inline void place(uint32_t* keys, int32_t* slots, Py_ssize_t size, uint32_t token,
                       int32_t row) noexcept nogil:
    """Put token -> row into the first free slot of its probe sequence."""
    cdef Py_ssize_t mask = size - 1, i = mix(token) & mask
    while slots[i] != 0:
        i = (i + 1) & mask
    keys[i] = token
    slots[i] = row + 1


cdef enum:
    F_ALL_FULL = F_LTP | F_QUOTE | F_OHLC | F_EXCH_TS | F_FULL | F_DEPTH


cdef inline void merge(TickRow* dst, const TickRow* src) noexcept nogil:
    cdef uint16_t f = src.fields
    if f == F_ALL_FULL:
        # A full packet carries every field from last_price to the depth: one copy (the
        # row's layout keeps them together), as the field-by-field merge below would.
        memcpy(&dst.last_price, &src.last_price,
               <char*>&src.divisor - <char*>&src.last_price)
        dst.fields |= f
        dst.kind = src.kind
        dst.mode = src.mode
        dst.packet_length = src.packet_length
        return
    if f & F_LTP:
        dst.last_price = src.last_price
    if f & F_QUOTE:
        dst.last_quantity = src.last_quantity
        dst.average_price = src.average_price
        dst.volume = src.volume
        dst.total_buy_quantity = src.total_buy_quantity
        dst.total_sell_quantity = src.total_sell_quantity
    if f & F_OHLC:
        dst.open = src.open
        dst.high = src.high
        dst.low = src.low
        dst.close = src.close
        dst.change = src.change
    if f & F_EXCH_TS:
        dst.exchange_timestamp = src.exchange_timestamp
    if f & F_FULL:
        dst.last_trade_time = src.last_trade_time
        dst.oi = src.oi
        dst.oi_day_high = src.oi_day_high
        dst.oi_day_low = src.oi_day_low
    if f & F_DEPTH:
        memcpy(dst.bid_quantity, src.bid_quantity, 4 * 5 * 4 + 2 * 5 * 2)
    dst.fields |= f
    dst.kind = src.kind
    dst.mode = src.mode
    dst.packet_length = src.packet_length


cdef cnp.ndarray _doubled(cnp.ndarray a):
    """``a`` followed by as many zeroed rows, copied as bytes: np.concatenate of structured
    arrays runs numpy's Python-level dtype promotion, tens of microseconds a call."""
    cdef cnp.ndarray out = np.zeros(2 * a.shape[0], dtype=a.dtype)
    memcpy(cnp.PyArray_DATA(out), cnp.PyArray_DATA(a), a.shape[0] * a.dtype.itemsize)
    return out


# final: its cdef methods are called directly (the per-row _find inlined), not via a vtable
@cython.final
cdef class KiteBooks:
    """Latest state per instrument token, updated from TICK_DTYPE rows."""

    cdef cnp.ndarray _state       # TICK_DTYPE, capacity rows; the first _n are live
    cdef cnp.ndarray _ticks       # uint64 ticks applied per book
    cdef cnp.ndarray _tally       # per book: ticks applied with a time, first and last time
    cdef Py_ssize_t _n
    cdef uint32_t* _keys          # open addressing: token per slot
    cdef int32_t* _slots          # row index + 1 per slot; 0 = empty
    cdef Py_ssize_t _table_size   # power of two, at least twice _n

    def __cinit__(self, Py_ssize_t capacity=64):
        capacity = max(capacity, 8)
        self._state = np.zeros(capacity, dtype=TICK_DTYPE)
        self._ticks = np.zeros(capacity, dtype=np.uint64)
        self._tally = np.zeros(capacity, dtype=TALLY_DTYPE)
        self._n = 0
        self._table_size = 16
        while self._table_size < 2 * capacity:
            self._table_size <<= 1
        self._keys = <uint32_t*>PyMem_Calloc(self._table_size, sizeof(uint32_t))
        self._slots = <int32_t*>PyMem_Calloc(self._table_size, sizeof(int32_t))
        if self._keys == NULL or self._slots == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self._keys)
        PyMem_Free(self._slots)

    cdef Py_ssize_t _find(self, uint32_t token) noexcept nogil:
        cdef Py_ssize_t mask = self._table_size - 1
        cdef Py_ssize_t i = mix(token) & mask
        while self._slots[i] != 0:
            if self._keys[i] == token:
                return self._slots[i] - 1
            i = (i + 1) & mask
        return -1

    cdef int _rehash(self, Py_ssize_t size) except -1:
        cdef uint32_t* keys = <uint32_t*>PyMem_Calloc(size, sizeof(uint32_t))
        cdef int32_t* slots = <int32_t*>PyMem_Calloc(size, sizeof(int32_t))
        cdef Py_ssize_t r
        cdef TickRow* rows = <TickRow*>cnp.PyArray_DATA(self._state)
        if keys == NULL or slots == NULL:
            PyMem_Free(keys)
            PyMem_Free(slots)
            raise MemoryError()
        for r in range(self._n):
            place(keys, slots, size, rows[r].token, r)
        PyMem_Free(self._keys)
        PyMem_Free(self._slots)
        self._keys, self._slots, self._table_size = keys, slots, size
        return 0

    cdef Py_ssize_t _insert(self, const TickRow* src) except -1:
        """A new book for src's token; returns its row index."""
        cdef Py_ssize_t cap = self._state.shape[0]
        cdef TickRow* row
        if self._n == cap:
            self._state = _doubled(self._state)
            self._ticks = _doubled(self._ticks)
            self._tally = _doubled(self._tally)
        if 2 * (self._n + 1) > self._table_size:
            self._rehash(self._table_size * 2)
        row = (<TickRow*>cnp.PyArray_DATA(self._state)) + self._n
        memset(row, 0, sizeof(TickRow))
        row.token = src.token
        row.segment = src.segment
        row.divisor = src.divisor
        row.tradable = src.tradable
        place(self._keys, self._slots, self._table_size, src.token, self._n)
        self._n += 1
        return self._n - 1

    def apply(self, cnp.ndarray rows not None, cnp.ndarray after=None,
              const int64_t[::1] wall_ns=None):
        """Merge TICK_DTYPE rows into the books, in order. Returns the number applied.

        With ``after`` (a TICK_DTYPE array as long as ``rows``), ``after[i]`` receives the
        instrument's whole book right after row i was merged: the per-tick book states that
        replay writes out. With ``wall_ns`` (each row's receive time), the per-book tally of
        ``tally()`` counts the rows and keeps their first and last times.
        """
        cdef const TickRow* src
        cdef Tally* tally = NULL
        cdef TickRow* out = NULL
        cdef Py_ssize_t n = rows.shape[0], i, r
        cdef TickRow* state = <TickRow*>cnp.PyArray_DATA(self._state)
        cdef uint64_t* ticks = <uint64_t*>cnp.PyArray_DATA(self._ticks)
        # `is` first: comparing structured dtypes runs numpy's Python-level field
        # promotion, several microseconds a call
        if ((rows.dtype is not TICK_DTYPE and rows.dtype != TICK_DTYPE) or rows.ndim != 1
                or not rows.flags.c_contiguous):
            raise TypeError("rows must be a 1-d C-contiguous TICK_DTYPE array")
        if after is not None:
            if ((after.dtype is not TICK_DTYPE and after.dtype != TICK_DTYPE) or after.ndim != 1
                    or not after.flags.c_contiguous
                    or after.shape[0] != n):
                raise TypeError("after must be a C-contiguous TICK_DTYPE array as long as rows")
            out = <TickRow*>cnp.PyArray_DATA(after)
        if wall_ns is not None and wall_ns.shape[0] != n:
            raise ValueError(f"{wall_ns.shape[0]} times for {n} rows")
        src = <const TickRow*>cnp.PyArray_DATA(rows)
        for i in range(n):
            r = self._find(src[i].token)
            if r < 0:
                r = self._insert(&src[i])
                state = <TickRow*>cnp.PyArray_DATA(self._state)  # may have moved
                ticks = <uint64_t*>cnp.PyArray_DATA(self._ticks)
            merge(&state[r], &src[i])
            ticks[r] += 1
            if out != NULL:
                memcpy(&out[i], &state[r], sizeof(TickRow))
            if wall_ns is not None:
                tally = (<Tally*>cnp.PyArray_DATA(self._tally)) + r
                if tally.ticks == 0:
                    tally.first_ns = wall_ns[i]
                tally.ticks += 1
                tally.last_ns = wall_ns[i]
        return n

    def tally(self):
        """Per instrument that had rows applied with times: (token, ticks, first_ns, last_ns),
        sorted by token."""
        live = self._tally[:self._n].copy()
        live["token"] = self._state["token"][:self._n]
        live = live[live["ticks"] > 0]
        return live[np.argsort(live["token"], kind="stable")]

    def clear(self):
        """Forget every book (a new capture session starts from nothing)."""
        self.load(np.zeros(0, dtype=TICK_DTYPE))

    def __len__(self):
        return self._n

    def __contains__(self, token):
        return self._find(<uint32_t>token) >= 0

    def book(self, uint32_t token):
        """A copy of one instrument's state row, or None if it never ticked."""
        cdef Py_ssize_t r = self._find(token)
        return None if r < 0 else self._state[r].copy()

    def ticks_applied(self, uint32_t token):
        cdef Py_ssize_t r = self._find(token)
        return 0 if r < 0 else int(self._ticks[r])

    def state(self):
        """Every book, one TICK_DTYPE row each, sorted by token (a copy)."""
        live = self._state[:self._n]
        return live[np.argsort(live["token"], kind="stable")]

    def load(self, cnp.ndarray rows not None):
        """Replace all books with ``rows`` (a state() from a snapshot); tick counts restart."""
        if rows.dtype != TICK_DTYPE or rows.ndim != 1:
            raise TypeError("rows must be a 1-d TICK_DTYPE array")
        if len(np.unique(rows["token"])) != len(rows):
            raise ValueError("a book state holds each token once")
        cap = max(len(rows), 8)
        self._state = np.zeros(cap, dtype=TICK_DTYPE)
        self._state[:len(rows)] = rows
        self._ticks = np.zeros(cap, dtype=np.uint64)
        self._tally = np.zeros(cap, dtype=TALLY_DTYPE)
        self._n = len(rows)
        size = 16
        while size < 2 * cap:
            size <<= 1
        self._rehash(size)

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kite Connect binary WebSocket frames, parsed without a Python object per tick.

Frame layout (all integers big-endian):  u16 packet count, then per packet u16 length + bytes.
Packet kinds by length: 8 ltp, 28 index quote, 32 index full, 44 quote, 184 full.
A 1-byte frame is a heartbeat and holds no ticks.

Two outputs:
  * rows of TICK_DTYPE (fixed-point integers, prices signed as the exchange means them);
  * ``parse_ticks``: the list of dicts kiteconnect's KiteTicker gives ``on_ticks``, value for
    value, including the SDK's unsigned reading of prices.

Pure bytes in, arrays out: no sockets, no files, no asyncio here. The plain-Python twin used
by the property tests is ``shrivenq.kite.reference``.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from tick_row cimport *
from libc.string cimport memset
from cpython.datetime cimport import_datetime
from cpython.dict cimport PyDict_Copy, PyDict_SetItem
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

cimport numpy as cnp
import numpy as np

from datetime import datetime

from shrivenq.errors import KiteFrameError

cnp.import_array()
import_datetime()

KIND_LTP = K_LTP
KIND_INDEX_QUOTE = K_INDEX_QUOTE
KIND_INDEX_FULL = K_INDEX_FULL
KIND_QUOTE = K_QUOTE
KIND_FULL = K_FULL
FIELD_LTP = F_LTP
FIELD_OHLC = F_OHLC
FIELD_QUOTE = F_QUOTE
FIELD_EXCHANGE_TIMESTAMP = F_EXCH_TS
FIELD_FULL = F_FULL
FIELD_DEPTH = F_DEPTH

# Field order and types here must match TickRow exactly; checked below at import.
TICK_DTYPE = np.dtype([
    ("token", "<u4"),
    ("last_price", "<i4"),
    ("last_quantity", "<u4"),
    ("average_price", "<i4"),
    ("volume", "<u4"),
    ("total_buy_quantity", "<u4"),
    ("total_sell_quantity", "<u4"),
    ("open", "<i4"),
    ("high", "<i4"),
    ("low", "<i4"),
    ("close", "<i4"),
    ("last_trade_time", "<u4"),
    ("oi", "<u4"),
    ("oi_day_high", "<u4"),
    ("oi_day_low", "<u4"),
    ("exchange_timestamp", "<u4"),
    ("change", "<i4"),
    ("bid_quantity", "<u4", (5,)),
    ("bid_price", "<i4", (5,)),
    ("ask_quantity", "<u4", (5,)),
    ("ask_price", "<i4", (5,)),
    ("bid_orders", "<u2", (5,)),
    ("ask_orders", "<u2", (5,)),
    ("divisor", "<u4"),
    ("fields", "<u2"),
    ("packet_length", "<u2"),
    ("segment", "u1"),
    ("kind", "u1"),
    ("mode", "u1"),
    ("tradable", "u1"),
])
if TICK_DTYPE.itemsize != sizeof(TickRow) or not np.little_endian:
    raise ImportError("TICK_DTYPE does not match the compiled TickRow layout")

MODE_LTP = M_LTP
MODE_QUOTE = M_QUOTE
MODE_FULL = M_FULL


cdef inline uint32_t be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline uint16_t be16(const uint8_t* p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | <uint16_t>p[1])


cdef class _Issues:
    """Collects what a lenient parse skipped; in strict mode the first issue raises.
    ``count`` is ``len(found)``, readable without the GIL."""
    cdef bint lenient
    cdef public list found
    cdef Py_ssize_t count

    def __cinit__(self, bint lenient):
        self.lenient = lenient
        self.found = []
        self.count = 0

    cdef int report(self, Py_ssize_t offset, str reason) except -1:
        err = KiteFrameError(offset, reason)
        if not self.lenient:
            raise err
        self.found.append(err)
        self.count += 1
        return 0


cdef Py_ssize_t _parse(const uint8_t[::1] buf, TickRow* out, Py_ssize_t capacity,
                       _Issues issues) except -1:
    """Parse one frame into ``out``; returns the number of rows written.

    With ``out == NULL`` the frame is only checked (the rows are counted, not written).
    """
    return _parse_at(&buf[0] if buf.shape[0] else NULL, buf.shape[0], out, capacity, issues)


cdef Py_ssize_t _parse_at(const uint8_t* base, Py_ssize_t n, TickRow* out, Py_ssize_t capacity,
                          _Issues issues) except -1 nogil:
    """Callable without the GIL: a clean frame never needs it; reporting an issue takes it."""
    cdef Py_ssize_t pos = 2, rows = 0, i
    cdef uint16_t count, plen
    cdef int kind
    if n == 0:
        with gil:
            issues.report(0, "empty frame")
        return 0
    if n == 1:
        return 0  # heartbeat
    count = be16(base)
    for i in range(count):
        if pos + 2 > n:
            with gil:
                issues.report(pos, f"packet {i + 1} of {count} declared is missing: "
                                   f"{n - pos} byte(s) left, a packet header needs 2")
            return rows
        plen = be16(base + pos)
        if pos + 2 + plen > n:
            with gil:
                issues.report(pos, f"packet {i + 1} of {count} declares {plen} bytes but only "
                                   f"{n - pos - 2} remain in the frame")
            return rows
        kind = kind_for_length(plen)
        if kind == 0:
            with gil:
                issues.report(pos, f"packet {i + 1} of {count} has unknown length {plen} "
                                   f"(known: 8, 28, 32, 44, 184)")
        elif out == NULL:
            rows += 1
        else:
            if rows >= capacity:
                with gil:
                    raise ValueError(f"output array too small: it holds {capacity} rows")
            fill_row(out + rows, base + pos + 2, kind, plen)
            rows += 1
        pos += 2 + plen
    if pos != n:
        with gil:
            issues.report(pos, f"{n - pos} trailing byte(s) after the {count} declared packets")
    return rows


cdef inline Py_ssize_t _row_bound(const uint8_t[::1] buf):
    """Most rows a frame can hold: its count, and no more than its bytes allow (8+2 each)."""
    return _row_bound_at(&buf[0] if buf.shape[0] else NULL, buf.shape[0])


cdef inline Py_ssize_t _row_bound_at(const uint8_t* base, Py_ssize_t n) noexcept:
    if n < 2:
        return 0
    return min(<Py_ssize_t>be16(base), (n - 2) // 10)


cdef cnp.ndarray _parse_new(const uint8_t[::1] buf, _Issues issues):
    cdef Py_ssize_t bound = _row_bound(buf)
    cdef cnp.ndarray out = np.empty(bound, dtype=TICK_DTYPE)
    cdef Py_ssize_t rows = _parse(buf, <TickRow*>cnp.PyArray_DATA(out), bound, issues)
    return out if rows == bound else out[:rows]


def parse_frame(const uint8_t[::1] frame not None):
    """Parse one binary frame into a new array of ``TICK_DTYPE`` rows, one per packet.

    A heartbeat (1 byte) gives an empty array. Any malformation raises ``KiteFrameError``
    naming the byte offset and the reason.
    """
    return _parse_new(frame, _Issues(False))


def parse_frame_lenient(const uint8_t[::1] frame not None):
    """Parse what can be parsed: ``(rows, issues)``.

    Packets of unknown length are skipped and each reported; a truncated tail stops the
    parse and keeps every packet before it. ``issues`` is a list of ``KiteFrameError``
    (not raised), each naming its offset and reason.
    """
    cdef _Issues issues = _Issues(True)
    rows = _parse_new(frame, issues)
    return rows, issues.found


def parse_frame_into(const uint8_t[::1] frame not None, cnp.ndarray out not None,
                     Py_ssize_t start=0):
    """Strictly parse ``frame`` into ``out[start:]`` (a C-contiguous TICK_DTYPE array).

    Returns the number of rows written. Raises ``ValueError`` if ``out`` has too few rows
    left; rows already written stay written.
    """
    if out.dtype != TICK_DTYPE or not out.flags.c_contiguous or out.ndim != 1:
        raise TypeError("out must be a 1-d C-contiguous array of TICK_DTYPE")
    if start < 0 or start > out.shape[0]:
        raise ValueError(f"start {start} outside the output array of {out.shape[0]} rows")
    return _parse(frame, (<TickRow*>cnp.PyArray_DATA(out)) + start, out.shape[0] - start,
                  _Issues(False))


def frame_keys(frame not None):
    """The instrument tokens of a frame's packets as little-endian u64 bytes: the WAL's
    instrument-key format, made by walking the packet headers alone. Never raises for a
    malformed frame: it gives the tokens of the well-formed packets before the fault
    (packets of unknown length are skipped, as the parser skips them).

    It runs between a message's receipt and its WAL append, so a ``bytes`` frame (what
    websockets hands over) is read in place, without acquiring a buffer view."""
    cdef const uint8_t[::1] view
    if type(frame) is bytes:
        return _frame_keys(<const uint8_t*>PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame))
    view = frame
    return _frame_keys(&view[0] if view.shape[0] else NULL, view.shape[0])


cdef bytes _frame_keys(const uint8_t* base, Py_ssize_t n):
    cdef Py_ssize_t pos = 2, i, k = 0
    cdef uint16_t count, plen
    cdef bytes out
    cdef uint8_t* o
    cdef uint32_t token
    if n < 2:
        return b""
    count = be16(base)
    out = PyBytes_FromStringAndSize(NULL, _row_bound_at(base, n) * 8)
    o = <uint8_t*>PyBytes_AS_STRING(out)
    for i in range(count):
        if pos + 2 > n:
            break
        plen = be16(base + pos)
        if pos + 2 + plen > n:
            break
        if kind_for_length(plen) != 0:
            token = be32(base + pos + 2)
            memset(o + 8 * k, 0, 8)
            o[8 * k] = token & 0xFF
            o[8 * k + 1] = (token >> 8) & 0xFF
            o[8 * k + 2] = (token >> 16) & 0xFF
            o[8 * k + 3] = token >> 24
            k += 1
        pos += 2 + plen
    return out if 8 * k == PyBytes_GET_SIZE(out) else out[:8 * k]


def frame_row_bound(const uint8_t[::1] frame not None):
    """Upper bound of rows ``frame`` can produce (for sizing a ``parse_frame_into`` buffer)."""
    return _row_bound(frame)


# ---------------------------------------------------------------------------------------
# kiteconnect-compatible dicts
# ---------------------------------------------------------------------------------------

cdef str S_LTP = "ltp"
cdef str S_QUOTE = "quote"
cdef str S_FULL = "full"

# Dicts are made by copying a template that already holds every key in kiteconnect's order,
# then replacing the values: CPython clones a small dict's key table faster than it inserts
# keys one by one, and the key order (visible in repr and iteration) stays the SDK's.

cdef dict _template(dict items):
    """``items`` rebuilt key by key, which gives a table of str keys as CPython builds for a
    dict display in Python code (kiteconnect's dicts). A Cython dict literal presizes a table
    for keys of any type, whose entries are half as large again: the full tick's dict took
    632 bytes against kiteconnect's 464, and its table left pymalloc for malloc."""
    cdef dict d = {}
    for key, value in items.items():
        d[key] = value
    return d


cdef dict T_LTP = _template({"tradable": None, "mode": S_LTP, "instrument_token": None,
                             "last_price": None})
cdef dict T_INDEX_QUOTE = _template({"tradable": None, "mode": S_QUOTE,
                                     "instrument_token": None, "last_price": None,
                                     "ohlc": None, "change": None})
cdef dict T_INDEX_FULL = _template(dict(T_INDEX_QUOTE, mode=S_FULL, exchange_timestamp=None))
cdef dict T_QUOTE = _template({"tradable": None, "mode": S_QUOTE, "instrument_token": None,
                               "last_price": None, "last_traded_quantity": None,
                               "average_traded_price": None, "volume_traded": None,
                               "total_buy_quantity": None, "total_sell_quantity": None,
                               "ohlc": None, "change": None})
cdef dict T_FULL = _template(dict(T_QUOTE, mode=S_FULL, last_trade_time=None, oi=None,
                                  oi_day_high=None, oi_day_low=None, exchange_timestamp=None,
                                  depth=None))
cdef dict T_INDEX_OHLC = _template({"high": None, "low": None, "open": None, "close": None})
cdef dict T_OHLC = _template({"open": None, "high": None, "low": None, "close": None})
cdef dict T_DEPTH = _template({"buy": None, "sell": None})
cdef dict T_LEVEL = _template({"quantity": None, "price": None, "orders": None})

cdef str K_TRADABLE = "tradable"
cdef str K_TOKEN = "instrument_token"
cdef str K_LAST_PRICE = "last_price"
cdef str K_OHLC = "ohlc"
cdef str K_CHANGE = "change"
cdef str K_OPEN = "open"
cdef str K_HIGH = "high"
cdef str K_LOW = "low"
cdef str K_CLOSE = "close"
cdef str K_EXCH_TS = "exchange_timestamp"
cdef str K_LTQ = "last_traded_quantity"
cdef str K_ATP = "average_traded_price"
cdef str K_VOLUME = "volume_traded"
cdef str K_TBQ = "total_buy_quantity"
cdef str K_TSQ = "total_sell_quantity"
cdef str K_LTT = "last_trade_time"
cdef str K_OI = "oi"
cdef str K_OI_HIGH = "oi_day_high"
cdef str K_OI_LOW = "oi_day_low"
cdef str K_DEPTH = "depth"
cdef str K_BUY = "buy"
cdef str K_SELL = "sell"
cdef str K_QUANTITY = "quantity"
cdef str K_PRICE = "price"
cdef str K_ORDERS = "orders"

# Setting a copied template's values by position. Replacing a value through PyDict_SetItem
# looks its key up again, and those lookups were the largest single cost of parse_ticks
# (about 40% of its instructions under callgrind): a full packet sets 53 values in 13 dicts.
# A copy of a template has the template's key table, entry for entry, so each value's slot
# is known. CPython's public headers keep that table opaque; its layout below is the one of
# CPython 3.11-3.13 (Include/internal/pycore_dict.h). It is used only when, at import, every
# template's copy shows each key at its expected slot (checked by reading, before anything
# is written), and only for a table that still is a combined table of str keys with the
# template's number of entries; any other CPython, or any other table, sets values by key.
cdef extern from *:
    """
    /* Where a dict's values are: value i at v[i * stride], its key at v[i * stride - 1];
       v is NULL when the values cannot be set by position. */
    typedef struct { PyObject **v; Py_ssize_t stride; } sq_slots;
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
    typedef struct {
        Py_ssize_t dk_refcnt;
        uint8_t dk_log2_size;
        uint8_t dk_log2_index_bytes;
        uint8_t dk_kind;   /* 0: any keys, entries {hash, key, value}; 1: str keys, {key, value} */
        uint32_t dk_version;
        Py_ssize_t dk_usable;
        Py_ssize_t dk_nentries;
        char dk_indices[];  /* then the entries */
    } sq_dictkeys;
    static inline sq_slots sq_entries(PyObject *d, Py_ssize_t n) {
        sq_slots s = {NULL, 0};
        PyDictObject *mp = (PyDictObject *)d;
        sq_dictkeys *k = (sq_dictkeys *)mp->ma_keys;
        if (mp->ma_values != NULL || k->dk_kind > 1 || k->dk_nentries != n || mp->ma_used != n)
            return s;
        s.stride = k->dk_kind == 1 ? 2 : 3;
        s.v = (PyObject **)(k->dk_indices + ((size_t)1 << k->dk_log2_index_bytes)) + s.stride - 1;
        return s;
    }
    #else
    static inline sq_slots sq_entries(PyObject *d, Py_ssize_t n) {
        sq_slots s = {NULL, 0};
        return s;
    }
    #endif
    """
    ctypedef struct sq_slots:
        PyObject** v
        Py_ssize_t stride
    sq_slots sq_entries(object d, Py_ssize_t n)

cdef extern from "Python.h":
    int PyObject_GC_IsTracked(object)
    void PyObject_GC_Track(object)

# The cyclic GC stays out of parse_ticks's loop. A 500-packet full frame makes 8,000 dicts
# and lists; with the GC on, CPython 3.11 runs about nine collections inside the call
# (one every 700 container allocations), and every twentieth call a full one over the whole
# heap, each walking objects that are all alive and cannot form a cycle: the new ticks are
# trees. That was as much time as building them (docs/PERFORMANCE.md). Paused, the
# allocation count still grows, so the next collection comes as soon as the caller allocates
# again, and only over ticks it still holds. Nothing can see the pause: the loop holds the
# GIL and runs no Python code. A free-threaded build would let other threads see it, so
# there the GC is left alone.
cdef extern from *:
    """
    static inline int sq_gc_pause(void) {
    #if defined(Py_GIL_DISABLED)
        return 0;
    #else
        return PyGC_Disable();
    #endif
    }
    static inline void sq_gc_resume(int was_enabled) {
        if (was_enabled) PyGC_Enable();
    }
    """
    int sq_gc_pause()
    void sq_gc_resume(int was_enabled)

cdef bint _DIRECT = False        # set at import by _check_layout()
cdef bint _direct = False        # in use now (tests turn it off to compare the two ways)


cdef sq_slots _NO_SLOTS
_NO_SLOTS.v = NULL
_NO_SLOTS.stride = 0


cdef inline sq_slots _slots(dict copy, dict template):
    return sq_entries(copy, len(template)) if _direct else _NO_SLOTS


cdef inline int _put(dict d, sq_slots e, Py_ssize_t i, str key, object value) except -1:
    """d[key] = value, where key is entry i of d's template (e from _slots). (An int result:
    a void one would make Cython test PyErr_Occurred() after each of a packet's 53 calls.)"""
    cdef PyObject* old
    if e.v == NULL:
        return PyDict_SetItem(d, key, value)
    old = e.v[i * e.stride]
    Py_INCREF(value)
    e.v[i * e.stride] = <PyObject*>value
    Py_XDECREF(old)
    return 0


cdef inline void _track(dict d) noexcept:
    """What CPython does when a dict gets a container value: the cyclic GC follows it. (Set
    by key, the dict is tracked already.)"""
    if not PyObject_GC_IsTracked(d):
        PyObject_GC_Track(d)


cdef Py_ssize_t _at(dict template, str key) except -1:
    return list(template).index(key)


# Entry positions: every top-level template starts tradable, mode, token, last_price (as
# kiteconnect builds its dicts), and the longer ones extend the shorter ones.
cdef Py_ssize_t P_TRADABLE = _at(T_FULL, K_TRADABLE)
cdef Py_ssize_t P_TOKEN = _at(T_FULL, K_TOKEN)
cdef Py_ssize_t P_LAST_PRICE = _at(T_FULL, K_LAST_PRICE)
cdef Py_ssize_t P_IDX_OHLC = _at(T_INDEX_FULL, K_OHLC)
cdef Py_ssize_t P_IDX_CHANGE = _at(T_INDEX_FULL, K_CHANGE)
cdef Py_ssize_t P_IDX_EXCH_TS = _at(T_INDEX_FULL, K_EXCH_TS)
cdef Py_ssize_t P_LTQ = _at(T_FULL, K_LTQ)
cdef Py_ssize_t P_ATP = _at(T_FULL, K_ATP)
cdef Py_ssize_t P_VOLUME = _at(T_FULL, K_VOLUME)
cdef Py_ssize_t P_TBQ = _at(T_FULL, K_TBQ)
cdef Py_ssize_t P_TSQ = _at(T_FULL, K_TSQ)
cdef Py_ssize_t P_OHLC = _at(T_FULL, K_OHLC)
cdef Py_ssize_t P_CHANGE = _at(T_FULL, K_CHANGE)
cdef Py_ssize_t P_LTT = _at(T_FULL, K_LTT)
cdef Py_ssize_t P_OI = _at(T_FULL, K_OI)
cdef Py_ssize_t P_OI_HIGH = _at(T_FULL, K_OI_HIGH)
cdef Py_ssize_t P_OI_LOW = _at(T_FULL, K_OI_LOW)
cdef Py_ssize_t P_EXCH_TS = _at(T_FULL, K_EXCH_TS)
cdef Py_ssize_t P_DEPTH = _at(T_FULL, K_DEPTH)
cdef Py_ssize_t P_BUY = _at(T_DEPTH, K_BUY)
cdef Py_ssize_t P_SELL = _at(T_DEPTH, K_SELL)
cdef Py_ssize_t P_QUANTITY = _at(T_LEVEL, K_QUANTITY)
cdef Py_ssize_t P_PRICE = _at(T_LEVEL, K_PRICE)
cdef Py_ssize_t P_ORDERS = _at(T_LEVEL, K_ORDERS)
cdef Py_ssize_t P_I_HIGH = _at(T_INDEX_OHLC, K_HIGH)
cdef Py_ssize_t P_I_LOW = _at(T_INDEX_OHLC, K_LOW)
cdef Py_ssize_t P_I_OPEN = _at(T_INDEX_OHLC, K_OPEN)
cdef Py_ssize_t P_I_CLOSE = _at(T_INDEX_OHLC, K_CLOSE)
cdef Py_ssize_t P_OPEN = _at(T_OHLC, K_OPEN)
cdef Py_ssize_t P_HIGH = _at(T_OHLC, K_HIGH)
cdef Py_ssize_t P_LOW = _at(T_OHLC, K_LOW)
cdef Py_ssize_t P_CLOSE = _at(T_OHLC, K_CLOSE)


cdef bint _check_layout():
    """True if every template's copy holds each of its keys and values at the expected
    entry, as read through sq_entries. Only reads."""
    cdef dict copy
    cdef sq_slots e
    cdef Py_ssize_t i
    for template in (T_LTP, T_INDEX_QUOTE, T_INDEX_FULL, T_QUOTE, T_FULL, T_INDEX_OHLC,
                     T_OHLC, T_DEPTH, T_LEVEL):
        copy = PyDict_Copy(template)
        e = sq_entries(copy, len(template))
        if e.v == NULL:
            return False
        for i, (key, value) in enumerate(template.items()):
            if (e.v[i * e.stride - 1] != <PyObject*>key
                    or e.v[i * e.stride] != <PyObject*>value):
                return False
    # Every (template, key, position) _tick_dict writes through, so that editing a template
    # can only turn the positional fill off, never write a value under the wrong key.
    top = ((K_TRADABLE, P_TRADABLE), (K_TOKEN, P_TOKEN), (K_LAST_PRICE, P_LAST_PRICE))
    index = top + ((K_OHLC, P_IDX_OHLC), (K_CHANGE, P_IDX_CHANGE))
    quote = top + ((K_LTQ, P_LTQ), (K_ATP, P_ATP), (K_VOLUME, P_VOLUME), (K_TBQ, P_TBQ),
                   (K_TSQ, P_TSQ), (K_OHLC, P_OHLC), (K_CHANGE, P_CHANGE))
    ohlc = ((K_OPEN, P_OPEN), (K_HIGH, P_HIGH), (K_LOW, P_LOW), (K_CLOSE, P_CLOSE))
    uses = ((T_LTP, top), (T_INDEX_QUOTE, index),
            (T_INDEX_FULL, index + ((K_EXCH_TS, P_IDX_EXCH_TS),)), (T_QUOTE, quote),
            (T_FULL, quote + ((K_LTT, P_LTT), (K_OI, P_OI), (K_OI_HIGH, P_OI_HIGH),
                              (K_OI_LOW, P_OI_LOW), (K_EXCH_TS, P_EXCH_TS), (K_DEPTH, P_DEPTH))),
            (T_INDEX_OHLC, ((K_OPEN, P_I_OPEN), (K_HIGH, P_I_HIGH), (K_LOW, P_I_LOW),
                            (K_CLOSE, P_I_CLOSE))),
            (T_OHLC, ohlc), (T_DEPTH, ((K_BUY, P_BUY), (K_SELL, P_SELL))),
            (T_LEVEL, ((K_QUANTITY, P_QUANTITY), (K_PRICE, P_PRICE), (K_ORDERS, P_ORDERS))))
    for template, pairs in uses:
        if any(_at(template, key) != position for key, position in pairs):
            return False
    return True


_DIRECT = _check_layout()
_direct = _DIRECT


def _positional_fill(enabled=None):
    """Whether parse_ticks sets template values by position (see above); with ``enabled``,
    turn it on (only where the layout check passed) or off. For tests and benchmarks."""
    global _direct
    if enabled is not None:
        _direct = bool(enabled) and _DIRECT
    return _direct


# Bound once: the loop that calls it runs with the GC paused and must run no Python code,
# which a module-level ``datetime`` replaced by a subclass (freezegun does that) would.
cdef object _fromtimestamp = datetime.fromtimestamp


cdef struct StampMemo:
    # The last two seconds looked up (a full packet has two: last trade, exchange time),
    # their datetimes borrowed from the call's cache dict, which keeps them alive.
    uint32_t value[2]
    PyObject* stamp[2]
    int next


cdef object _timestamp(dict cache, StampMemo* memo, uint32_t value):
    """``datetime.fromtimestamp`` as kiteconnect calls it (local time, None on failure),
    memoised per call because one frame's packets mostly share the same second: first in
    ``memo`` (no int key to make, no hashing), then in ``cache``."""
    if memo.stamp[0] != NULL and memo.value[0] == value:
        return <object>memo.stamp[0]
    if memo.stamp[1] != NULL and memo.value[1] == value:
        return <object>memo.stamp[1]
    cdef object key = value
    cdef object stamp = cache.get(key, cache)
    if stamp is cache:
        try:
            stamp = _fromtimestamp(value)
        except Exception:
            stamp = None
        cache[key] = stamp
    memo.value[memo.next] = value
    memo.stamp[memo.next] = <PyObject*>stamp
    memo.next ^= 1
    return stamp


cdef list _depth_side(const uint8_t* d, double divisor):
    cdef list side = PyList_New(5)
    cdef dict level
    cdef sq_slots e
    cdef int i
    for i in range(5):
        level = PyDict_Copy(T_LEVEL)
        e = _slots(level, T_LEVEL)
        _put(level, e, P_QUANTITY, K_QUANTITY, be32(d))
        _put(level, e, P_PRICE, K_PRICE, be32(d + 4) / divisor)
        _put(level, e, P_ORDERS, K_ORDERS, be16(d + 8))
        Py_INCREF(level)
        PyList_SET_ITEM(side, i, level)
        d += 12
    return side


cdef dict _ohlc(dict template, double open_, double high, double low, double close):
    """kiteconnect's ohlc dict, its keys in the order of ``template`` (T_OHLC or, for index
    packets, T_INDEX_OHLC)."""
    cdef dict ohlc = PyDict_Copy(template)
    cdef sq_slots e = _slots(ohlc, template)
    cdef bint index = template is T_INDEX_OHLC
    _put(ohlc, e, P_I_OPEN if index else P_OPEN, K_OPEN, open_)
    _put(ohlc, e, P_I_HIGH if index else P_HIGH, K_HIGH, high)
    _put(ohlc, e, P_I_LOW if index else P_LOW, K_LOW, low)
    _put(ohlc, e, P_I_CLOSE if index else P_CLOSE, K_CLOSE, close)
    return ohlc


cdef inline object _change(double last_price, double close):
    # kiteconnect: change = 0 (an int) when close is 0, else the percentage as a float.
    if close != 0:
        return (last_price - close) * 100 / close
    return 0


cdef dict _tick_dict(const uint8_t* p, uint16_t plen, dict stamps, StampMemo* memo):
    cdef uint32_t token = be32(p)
    cdef uint32_t segment = token & 0xFF
    cdef double divisor = divisor_for(segment)
    cdef double last_price = be32(p + 4) / divisor
    cdef double close
    cdef dict d, depth
    cdef dict template
    cdef sq_slots e, eo
    if plen == 8:
        template = T_LTP
        d = PyDict_Copy(template)
        e = _slots(d, template)
    elif plen == 28 or plen == 32:
        template = T_INDEX_QUOTE if plen == 28 else T_INDEX_FULL
        d = PyDict_Copy(template)
        e = _slots(d, template)
        # Index packets order the range high, low, open, close.
        close = be32(p + 20) / divisor
        _put(d, e, P_IDX_OHLC, K_OHLC, _ohlc(T_INDEX_OHLC, be32(p + 16) / divisor,
                                             be32(p + 8) / divisor, be32(p + 12) / divisor,
                                             close))
        _put(d, e, P_IDX_CHANGE, K_CHANGE, _change(last_price, close))
        if plen == 32:
            _put(d, e, P_IDX_EXCH_TS, K_EXCH_TS, _timestamp(stamps, memo, be32(p + 28)))
        _track(d)
    else:
        template = T_QUOTE if plen == 44 else T_FULL
        d = PyDict_Copy(template)
        e = _slots(d, template)
        close = be32(p + 40) / divisor
        _put(d, e, P_LTQ, K_LTQ, be32(p + 8))
        _put(d, e, P_ATP, K_ATP, be32(p + 12) / divisor)
        _put(d, e, P_VOLUME, K_VOLUME, be32(p + 16))
        _put(d, e, P_TBQ, K_TBQ, be32(p + 20))
        _put(d, e, P_TSQ, K_TSQ, be32(p + 24))
        _put(d, e, P_OHLC, K_OHLC, _ohlc(T_OHLC, be32(p + 28) / divisor, be32(p + 32) / divisor,
                                         be32(p + 36) / divisor, close))
        _put(d, e, P_CHANGE, K_CHANGE, _change(last_price, close))
        if plen == 184:
            _put(d, e, P_LTT, K_LTT, _timestamp(stamps, memo, be32(p + 44)))
            _put(d, e, P_OI, K_OI, be32(p + 48))
            _put(d, e, P_OI_HIGH, K_OI_HIGH, be32(p + 52))
            _put(d, e, P_OI_LOW, K_OI_LOW, be32(p + 56))
            _put(d, e, P_EXCH_TS, K_EXCH_TS, _timestamp(stamps, memo, be32(p + 60)))
            depth = PyDict_Copy(T_DEPTH)
            eo = _slots(depth, T_DEPTH)
            _put(depth, eo, P_BUY, K_BUY, _depth_side(p + 64, divisor))
            _put(depth, eo, P_SELL, K_SELL, _depth_side(p + 124, divisor))
            _track(depth)
            _put(d, e, P_DEPTH, K_DEPTH, depth)
        _track(d)
    _put(d, e, P_TRADABLE, K_TRADABLE, segment != SEG_INDICES)
    _put(d, e, P_TOKEN, K_TOKEN, token)
    _put(d, e, P_LAST_PRICE, K_LAST_PRICE, last_price)
    return d


def parse_ticks(const uint8_t[::1] frame not None):
    """The list of tick dicts kiteconnect's ``KiteTicker`` passes to ``on_ticks``.

    Same keys, values and types for every well-formed frame, including the SDK's unsigned
    reading of prices. A heartbeat gives ``[]``. Malformed frames raise ``KiteFrameError``
    where the SDK would raise ``struct.error`` or silently drop packets.
    """
    cdef Py_ssize_t n = frame.shape[0], pos = 2, i
    cdef uint16_t count, plen
    cdef const uint8_t* base
    cdef list ticks = []
    cdef dict stamps = {}
    cdef StampMemo memo
    memo.stamp[0] = memo.stamp[1] = NULL
    memo.next = 0
    cdef int gc_was_enabled
    # Check the whole frame first, so that a bad frame gives no partial list (and so that
    # raising, which may run Python code, happens before the GC pause).
    _parse(frame, NULL, 0, _Issues(False))
    if n < 2:
        return ticks
    base = &frame[0]
    count = be16(base)
    gc_was_enabled = sq_gc_pause()
    try:
        for i in range(count):
            plen = be16(base + pos)
            ticks.append(_tick_dict(base + pos + 2, plen, stamps, &memo))
            pos += 2 + plen
    finally:
        sq_gc_resume(gc_was_enabled)
    return ticks



def parse_many(const uint8_t[::1] data not None, const uint64_t[::1] offsets not None,
               const uint32_t[::1] lengths not None):
    """Parse many frames stored back to back (a WAL block's payloads) in one call.

    Returns ``(rows, owner, bad)``: TICK_DTYPE rows of every frame in order, ``owner[i]`` the
    index of the frame row i came from, and ``bad`` the indices of frames that were not
    clean (their good packets are kept, as ``parse_frame_lenient`` keeps them). Heartbeats
    give no rows. Frames must lie inside ``data``.
    """
    cdef Py_ssize_t n = offsets.shape[0], i, total = 0, rows = 0, got, k
    cdef Py_ssize_t size = data.shape[0], seen = 0
    cdef uint64_t end
    cdef const uint8_t* base = &data[0] if size else NULL
    cdef cnp.ndarray out
    cdef cnp.ndarray owner
    cdef int64_t* own
    cdef list bad = []
    cdef _Issues issues = _Issues(True)   # one collector; a frame is bad if it added to it
    cdef TickRow* rows_out
    if lengths.shape[0] != n:
        raise ValueError(f"{n} offsets but {lengths.shape[0]} lengths")
    for i in range(n):
        end = offsets[i] + lengths[i]
        if end > <uint64_t>size or end < offsets[i]:
            raise ValueError(f"frame {i} at offset {offsets[i]} runs past the data")
        total += _row_bound_at(base + offsets[i], lengths[i])
    out = np.empty(total, dtype=TICK_DTYPE)
    owner = np.empty(total, dtype=np.int64)
    rows_out = <TickRow*>cnp.PyArray_DATA(out)
    own = <int64_t*>cnp.PyArray_DATA(owner)
    # Without the GIL: replay's read-ahead threads decode the next blocks meanwhile. The
    # inputs are read-only and the outputs are this call's own arrays.
    with nogil:
        for i in range(n):
            if lengths[i] < 2:
                continue
            got = _parse_at(base + offsets[i], lengths[i], rows_out + rows, total - rows, issues)
            for k in range(rows, rows + got):
                own[k] = i
            rows += got
            if issues.count != seen:
                seen = issues.count
                with gil:
                    bad.append(i)
    return out[:rows], owner[:rows], bad

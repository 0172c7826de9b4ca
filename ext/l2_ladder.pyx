# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""An L2 price ladder: absolute quantity per price level, both sides, fixed-point int64.

For exchanges that send incremental depth (Binance): ``set_level(side, price, qty)`` sets a
level's quantity, and quantity 0 deletes it. Each side is a sorted array with the best
price at the END, so best bid/ask is O(1) and updates near the top of the book (the common
case) move few entries. The update path allocates nothing; arrays grow by doubling only
when a side outgrows its capacity.

Other compiled modules use its C-level API (l2_ladder.pxd: ``apply_pairs``, ``crossed``)
through ``from shrivenq._ext.l2_ladder cimport L2Ladder``; the Binance depth decoder applies
a message's levels that way, with no arrays in between.

Plain-Python twin for the property tests: ``shrivenq.books.reference.ReferenceLadder``.
"""

from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memmove
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free

cimport numpy as cnp
import numpy as np

cnp.import_array()

BID = 0
ASK = 1


# Level, Side and the class's C-level API are declared in l2_ladder.pxd.


cdef int side_init(Side* s, Py_ssize_t cap, bint is_bid) except -1:
    s.levels = <Level*>PyMem_Malloc(cap * sizeof(Level))
    if s.levels == NULL:
        raise MemoryError()
    s.n = 0
    s.cap = cap
    s.is_bid = is_bid
    return 0


cdef int side_grow(Side* s) except -1:
    cdef Py_ssize_t cap = s.cap * 2
    cdef Level* p = <Level*>PyMem_Realloc(s.levels, cap * sizeof(Level))
    if p == NULL:
        raise MemoryError()
    s.levels = p
    s.cap = cap
    return 0


cdef inline bint worse(int64_t a, int64_t b, bint is_bid) noexcept nogil:
    """True when price a is further from the top of the book than price b."""
    return a < b if is_bid else a > b


cdef enum:
    TOP = 64    # levels from the best searched in one go before galloping deeper


cdef inline Py_ssize_t _lower_bound(const Level* v, Py_ssize_t n, int64_t price,
                                    bint is_bid) noexcept nogil:
    """First index whose price is not worse than ``price``. Most updates land within a few
    dozen levels of the best, so the top ``TOP`` levels are one window; a deeper price is
    found by galloping down from there. The window is bisected without branches (a
    data-dependent branch per step mispredicts half the time, and that was most of an
    update's cost)."""
    cdef Py_ssize_t lo = 0, hi = n, step, m, half
    cdef const Level* base
    if n > TOP:
        lo = n - TOP
        if worse(v[lo].price, price, is_bid):
            lo += 1                      # the answer is in (n - TOP, n]
        else:
            hi = lo                      # in [0, n - TOP]: gallop down
            step = 2 * TOP
            while True:
                lo = n - step
                if lo <= 0:
                    lo = 0
                    break
                if worse(v[lo].price, price, is_bid):
                    lo += 1
                    break
                hi = lo
                step <<= 1
    # The answer is in [lo, hi].
    m = hi - lo
    if m == 0:
        return lo
    base = v + lo
    while m > 1:
        half = m >> 1
        base += half if worse(base[half].price, price, is_bid) else 0
        m -= half
    return (base - v) + worse(base[0].price, price, is_bid)


cdef int side_reserve(Side* s, Py_ssize_t extra) except -1:
    """Room for ``extra`` more levels: a batch of that many updates inserts at most that
    many, so once this returns the batch can be applied without growing (or the GIL)."""
    while s.cap - s.n < extra:
        side_grow(s)
    return 0


cdef inline void side_put_k(Side* s, int64_t price, int64_t qty, bint is_bid) noexcept nogil:
    """Set one level; an insert needs room (s.n < s.cap)."""
    cdef Py_ssize_t i = _lower_bound(s.levels, s.n, price, is_bid)
    cdef bint found = i < s.n and s.levels[i].price == price
    if qty == 0:
        if found:
            memmove(s.levels + i, s.levels + i + 1, (s.n - i - 1) * sizeof(Level))
            s.n -= 1
        return
    if found:
        s.levels[i].qty = qty
        return
    memmove(s.levels + i + 1, s.levels + i, (s.n - i) * sizeof(Level))
    s.levels[i].price = price
    s.levels[i].qty = qty
    s.n += 1


cdef void apply_levels(Side* s, const int64_t* prices, const int64_t* qtys, Py_ssize_t n,
                       Py_ssize_t stride) noexcept nogil:
    """Set n levels: prices[k * stride], qtys[k * stride], on a side with room for n more
    (side_reserve); one loop per side, so that the compiler specialises each for its side."""
    cdef Py_ssize_t i
    if s.is_bid:
        for i in range(n):
            side_put_k(s, prices[i * stride], qtys[i * stride], True)
    else:
        for i in range(n):
            side_put_k(s, prices[i * stride], qtys[i * stride], False)


cdef inline Py_ssize_t first_negative(const int64_t* pairs, Py_ssize_t n) noexcept nogil:
    """The index of the first (price, quantity) pair with a negative quantity, or -1."""
    cdef Py_ssize_t i
    for i in range(n):
        if pairs[2 * i + 1] < 0:
            return i
    return -1


cdef int ladder_apply_pairs_nogil(Side* sides, const int64_t* bids, Py_ssize_t nb,
                                  const int64_t* asks, Py_ssize_t na) noexcept nogil:
    """L2Ladder.apply_pairs on a ladder's ``sides``, for a caller without the GIL: -1, with
    nothing changed, when a quantity is negative or a side lacks room for its batch (the
    caller then takes apply_pairs, which raises or grows); 0 when applied."""
    if (first_negative(bids, nb) >= 0 or first_negative(asks, na) >= 0
            or sides[0].cap - sides[0].n < nb or sides[1].cap - sides[1].n < na):
        return -1
    apply_levels(&sides[0], bids, bids + 1, nb, 2)
    apply_levels(&sides[1], asks, asks + 1, na, 2)
    return 0


cdef bint ladder_crossed(const Side* sides) noexcept nogil:
    cdef const Side* b = &sides[0]
    cdef const Side* a = &sides[1]
    return b.n > 0 and a.n > 0 and b.levels[b.n - 1].price >= a.levels[a.n - 1].price


cdef inline bint _is_i64_vector(cnp.ndarray a) noexcept:
    return (cnp.PyArray_TYPE(a) == cnp.NPY_INT64 and cnp.PyArray_NDIM(a) == 1
            and cnp.PyArray_IS_C_CONTIGUOUS(a))


cdef Py_ssize_t _check_batch(cnp.ndarray prices, cnp.ndarray quantities) except -1:
    """A batch is two 1-d C-contiguous int64 arrays of one length, no quantity negative."""
    cdef Py_ssize_t i, n
    cdef const int64_t* q
    cdef const int64_t* p
    if not (_is_i64_vector(prices) and _is_i64_vector(quantities)):
        raise TypeError("prices and quantities must be 1-d C-contiguous int64 arrays")
    n = cnp.PyArray_DIM(prices, 0)
    if cnp.PyArray_DIM(quantities, 0) != n:
        raise ValueError(f"{n} prices but {cnp.PyArray_DIM(quantities, 0)} quantities")
    q = <const int64_t*>cnp.PyArray_DATA(quantities)
    p = <const int64_t*>cnp.PyArray_DATA(prices)
    for i in range(n):
        if q[i] < 0:
            raise ValueError(f"negative quantity {q[i]} at price {p[i]}")
    return n


cdef int _check_pairs(const int64_t* pairs, Py_ssize_t n) except -1:
    cdef Py_ssize_t i = first_negative(pairs, n)
    if i >= 0:
        raise ValueError(f"negative quantity {pairs[2 * i + 1]} at price {pairs[2 * i]}")
    return 0


cdef class L2Ladder:
    """Both sides of one instrument's book. Prices and quantities are fixed-point int64."""

    def __cinit__(self, Py_ssize_t capacity=1024):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.sides[0].levels = NULL
        self.sides[1].levels = NULL
        side_init(&self.sides[0], capacity, True)
        side_init(&self.sides[1], capacity, False)

    def __dealloc__(self):
        cdef int k
        for k in range(2):
            PyMem_Free(self.sides[k].levels)

    cdef Side* _side(self, int side) except NULL:
        if side != 0 and side != 1:
            raise ValueError(f"side must be BID (0) or ASK (1), not {side}")
        return &self.sides[side]

    # --- the C-level API (l2_ladder.pxd) ----------------------------------------------------

    cdef int apply_pairs(self, const int64_t* bids, Py_ssize_t nb, const int64_t* asks,
                         Py_ssize_t na) except -1:
        self.make_room(bids, nb, asks, na)
        apply_levels(&self.sides[0], bids, bids + 1, nb, 2)
        apply_levels(&self.sides[1], asks, asks + 1, na, 2)
        return 0

    cdef int make_room(self, const int64_t* bids, Py_ssize_t nb, const int64_t* asks,
                       Py_ssize_t na) except -1:
        _check_pairs(bids, nb)
        _check_pairs(asks, na)
        side_reserve(&self.sides[0], nb)
        side_reserve(&self.sides[1], na)
        return 0

    cdef bint crossed(self) noexcept:
        return ladder_crossed(self.sides)

    # --- Python -----------------------------------------------------------------------------

    def set_level(self, int side, int64_t price, int64_t quantity):
        """Set the quantity at ``price``; 0 deletes the level. Negative quantities are refused."""
        cdef Side* s = self._side(side)
        if quantity < 0:
            raise ValueError(f"negative quantity {quantity} at price {price}")
        side_reserve(s, 1)
        side_put_k(s, price, quantity, s.is_bid)

    def apply(self, int side, cnp.ndarray prices not None, cnp.ndarray quantities not None):
        """Apply a batch of absolute level updates to one side, in order (a decoded message).

        ``prices`` and ``quantities`` are 1-d C-contiguous int64 arrays. The whole batch is
        checked before anything changes, so a bad batch leaves the book as it was.
        """
        cdef Side* s = self._side(side)
        cdef Py_ssize_t n = _check_batch(prices, quantities)
        side_reserve(s, n)
        apply_levels(s, <int64_t*>cnp.PyArray_DATA(prices), <int64_t*>cnp.PyArray_DATA(quantities),
                     n, 1)

    def apply_depth(self, cnp.ndarray bid_prices not None, cnp.ndarray bid_quantities not None,
                    cnp.ndarray ask_prices not None, cnp.ndarray ask_quantities not None):
        """Both sides of one depth message in one call (both checked before either changes)."""
        cdef Py_ssize_t nb = _check_batch(bid_prices, bid_quantities)
        cdef Py_ssize_t na = _check_batch(ask_prices, ask_quantities)
        side_reserve(&self.sides[0], nb)
        side_reserve(&self.sides[1], na)
        apply_levels(&self.sides[0], <int64_t*>cnp.PyArray_DATA(bid_prices),
                     <int64_t*>cnp.PyArray_DATA(bid_quantities), nb, 1)
        apply_levels(&self.sides[1], <int64_t*>cnp.PyArray_DATA(ask_prices),
                     <int64_t*>cnp.PyArray_DATA(ask_quantities), na, 1)

    def touch(self):
        """(best bid price, its quantity, best ask price, its quantity); 0, 0 for an empty
        side. One call, no allocation beyond the tuple."""
        cdef Side* b = &self.sides[0]
        cdef Side* a = &self.sides[1]
        return ((b.levels[b.n - 1].price if b.n else 0), (b.levels[b.n - 1].qty if b.n else 0),
                (a.levels[a.n - 1].price if a.n else 0), (a.levels[a.n - 1].qty if a.n else 0))

    def clear(self):
        self.sides[0].n = 0
        self.sides[1].n = 0

    def best_bid(self):
        """(price, quantity) of the best bid, or None when the side is empty."""
        cdef Side* s = &self.sides[0]
        return (s.levels[s.n - 1].price, s.levels[s.n - 1].qty) if s.n else None

    def best_ask(self):
        cdef Side* s = &self.sides[1]
        return (s.levels[s.n - 1].price, s.levels[s.n - 1].qty) if s.n else None

    def depth(self, int side):
        """Number of levels on a side."""
        return self._side(side).n

    def is_crossed(self):
        """True when best bid >= best ask (a book out of sync with its exchange)."""
        return self.crossed()

    def top(self, int side, Py_ssize_t levels):
        """Best ``levels`` levels of a side, best first: int64 array of shape (k, 2)."""
        cdef Side* s = self._side(side)
        cdef Py_ssize_t k = min(max(levels, 0), s.n), i
        cdef cnp.ndarray[int64_t, ndim=2] out = np.empty((k, 2), dtype=np.int64)
        for i in range(k):
            out[i, 0] = s.levels[s.n - 1 - i].price
            out[i, 1] = s.levels[s.n - 1 - i].qty
        return out

    def levels(self, int side):
        """Every level of a side, best first (a copy)."""
        return self.top(side, self._side(side).n)

    def state_bytes(self):
        """Canonical bytes of the whole book (for hashing): per side a u64 level count, then
        (price, qty) int64 pairs best first, little-endian. Same state, same bytes."""
        return b"".join(
            np.array([self.sides[k].n], dtype="<u8").tobytes()
            + np.ascontiguousarray(self.top(k, self.sides[k].n), dtype="<i8").tobytes()
            for k in range(2))

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""An L2 price ladder: absolute quantity per price level, both sides, fixed-point int64.

For exchanges that send incremental depth (Binance): ``set_level(side, price, qty)`` sets a
level's quantity, and quantity 0 deletes it. The update path allocates nothing; storage
grows by doubling only when a side outgrows its capacity.

Each side keeps the levels near its best in a window indexed by price: a ring of
``window`` quantities (a power of two) with an occupancy bitmap, from about three quarters
of a window below the best to a quarter above it. Setting a level there is an index and a
store, and a new best is found along the bitmap (a bit scan per 64 prices). Levels worse
than the window sit in a sorted array, worst first, so that levels leaving the window's
bottom are appended and levels re-entering it are popped. When a new best lands above the
window, or the best sinks into the window's bottom eighth, the window re-centres on it.
Depth updates cluster at the touch, so nearly all land in the window; with the sorted array
alone (before 2026-12-02) most of an update was the binary search and the shifting of
levels around an insert or a delete.

Prices map to "goodness" g: the price for bids, ~price (bitwise not) for asks, so that
better is larger on both sides and all of int64 stays exact. The window holds g in
[lo, lo + window).

Other compiled modules use its C-level API (l2_ladder.pxd: ``apply_pairs``, ``crossed``)
through ``from shrivenq._ext.l2_ladder cimport L2Ladder``; the Binance depth decoder applies
a message's levels that way, with no arrays in between.

Plain-Python twin for the property tests: ``shrivenq.books.reference.ReferenceLadder``.
"""

from libc.stdint cimport int64_t, uint64_t, INT64_MIN, INT64_MAX
from libc.string cimport memmove, memset
from cpython.mem cimport PyMem_Malloc, PyMem_Calloc, PyMem_Realloc, PyMem_Free

cimport numpy as cnp
import numpy as np

cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil
    int __builtin_ctzll(unsigned long long) nogil

cnp.import_array()

BID = 0
ASK = 1


# Level, Side and the class's C-level API are declared in l2_ladder.pxd.


cdef enum:
    DEFAULT_WINDOW = 2048   # prices a window covers: 16 KB of quantities a side
    MAX_WINDOW = 1 << 16    # 512 KB a side; clear() and a scan for a new best grow with it
    RECENTRE_AFTER = 64     # updates below an empty window before it moves down to them


cdef int side_init(Side* s, Py_ssize_t cap, bint is_bid, Py_ssize_t window) except -1:
    s.levels = <Level*>PyMem_Malloc(cap * sizeof(Level))
    s.wq = <int64_t*>PyMem_Calloc(window, sizeof(int64_t))
    s.wbits = <uint64_t*>PyMem_Calloc(window // 64, sizeof(uint64_t))
    if s.levels == NULL or s.wq == NULL or s.wbits == NULL:
        raise MemoryError()
    s.n = 0
    s.cap = cap
    s.is_bid = is_bid
    s.wsize = window
    s.wn = 0
    s.lo = 0
    s.best_g = 0
    s.anchored = False
    s.idle = 0
    return 0


cdef void side_free(Side* s) noexcept:
    PyMem_Free(s.levels)
    PyMem_Free(s.wq)
    PyMem_Free(s.wbits)
    s.levels = NULL
    s.wq = NULL
    s.wbits = NULL


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


cdef inline bint side_has_room(const Side* s, Py_ssize_t extra) noexcept nogil:
    return s.cap >= s.n + s.wn + extra


cdef int side_reserve(Side* s, Py_ssize_t extra) except -1:
    """Room for ``extra`` more levels: a batch of that many updates adds at most that many,
    and the overflow array never holds more levels than the side has, so once this returns
    the batch can be applied without growing (or the GIL)."""
    while not side_has_room(s, extra):
        side_grow(s)
    return 0


# --- the overflow array: levels worse than the window, sorted, the best at the end ----------

cdef inline void over_put(Side* s, int64_t price, int64_t qty, bint is_bid) noexcept nogil:
    """Set one level of the overflow array; an insert needs room (s.n < s.cap)."""
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


# --- the window ---------------------------------------------------------------------------

cdef inline int64_t goodness(int64_t price, bint is_bid) noexcept nogil:
    """Larger is better on both sides; its own inverse (~~p == p)."""
    return price if is_bid else ~price


cdef inline Py_ssize_t slot_of(const Side* s, int64_t g) noexcept nogil:
    return <Py_ssize_t>((<uint64_t>g) & <uint64_t>(s.wsize - 1))


cdef inline int64_t centred_lo(int64_t g, Py_ssize_t wsize) noexcept nogil:
    """The window start that puts g three quarters of the way up, within int64 (the window's
    top, lo + wsize - 1, never passes INT64_MAX)."""
    cdef int64_t below = wsize - wsize // 4
    cdef int64_t lo
    if g < INT64_MIN + below:
        lo = INT64_MIN
    else:
        lo = g - below
    if lo > INT64_MAX - (wsize - 1):
        lo = INT64_MAX - (wsize - 1)
    return lo


cdef inline int64_t window_below(const Side* s, int64_t g) noexcept nogil:
    """The best occupied goodness below g, scanning down the bitmap; one must exist in
    [lo, g). (A slot scanned on the way holds goodness in [lo, g): the bits a scan meets
    first are those of g - 1, g - 2, ..., and the ring wraps only at a word boundary.)"""
    cdef Py_ssize_t k, bit
    cdef uint64_t bits
    g -= 1
    while True:
        k = slot_of(s, g)
        bit = k & 63
        bits = s.wbits[k >> 6] & ((<uint64_t>2 << bit) - 1)    # bits 0..bit
        if bits:
            return g - (bit - (63 - __builtin_clzll(bits)))
        g -= bit + 1


cdef inline void window_set(Side* s, int64_t g, int64_t qty) noexcept nogil:
    """qty > 0 at goodness g, inside the window."""
    cdef Py_ssize_t k = slot_of(s, g)
    if s.wq[k] == 0:
        s.wbits[k >> 6] |= (<uint64_t>1) << (k & 63)
        s.wn += 1
        if s.wn == 1 or g > s.best_g:
            s.best_g = g
    s.wq[k] = qty


cdef inline void window_delete(Side* s, int64_t g) noexcept nogil:
    cdef Py_ssize_t k = slot_of(s, g)
    if s.wq[k] == 0:
        return
    s.wq[k] = 0
    s.wbits[k >> 6] &= ~((<uint64_t>1) << (k & 63))
    s.wn -= 1
    if s.wn and g == s.best_g:
        s.best_g = window_below(s, g)


cdef void shift_up(Side* s, int64_t g, bint is_bid) noexcept nogil:
    """Re-centre the window on a new best g above it: the levels that fall below the new
    start go, in ascending order, to the end of the overflow array (all of them are better
    than any level there). Needs room for them (side_reserve)."""
    cdef int64_t lo = centred_lo(g, s.wsize)
    cdef uint64_t span = (<uint64_t>lo) - (<uint64_t>s.lo)     # > 0: the window moves up
    cdef uint64_t off = 0
    cdef int64_t at
    cdef Py_ssize_t k, bit
    cdef uint64_t bits
    if span > <uint64_t>s.wsize:
        span = s.wsize
    while off < span and s.wn:
        at = <int64_t>((<uint64_t>s.lo) + off)
        k = slot_of(s, at)
        bit = k & 63
        bits = s.wbits[k >> 6] >> bit
        if bits == 0:
            off += 64 - bit
            continue
        off += __builtin_ctzll(bits)
        if off >= span:
            break
        at = <int64_t>((<uint64_t>s.lo) + off)
        k = slot_of(s, at)
        s.levels[s.n].price = goodness(at, is_bid)
        s.levels[s.n].qty = s.wq[k]
        s.n += 1
        s.wq[k] = 0
        s.wbits[k >> 6] &= ~((<uint64_t>1) << (k & 63))
        s.wn -= 1
        off += 1
    s.lo = lo


cdef void recentre_down(Side* s, bint is_bid) noexcept nogil:
    """Re-centre the window on the side's best when it has sunk to the window's bottom (or
    the window is empty and the overflow array is not), pulling the overflow levels that
    now fall inside it off that array's end."""
    cdef int64_t top, lo, g
    if s.wn:
        top = s.best_g
    elif s.n:
        top = goodness(s.levels[s.n - 1].price, is_bid)
    else:
        return
    lo = centred_lo(top, s.wsize)
    if lo >= s.lo:
        return
    # The slots of goodness [lo, s.lo) stood for goodness a window higher, above the best:
    # empty. Everything left in the window is at most top, below lo + wsize.
    s.lo = lo
    while s.n:
        g = goodness(s.levels[s.n - 1].price, is_bid)
        if g < lo:
            break
        window_set(s, g, s.levels[s.n - 1].qty)
        s.n -= 1


cdef inline void side_put_k(Side* s, int64_t price, int64_t qty, bint is_bid) noexcept nogil:
    """Set one level; needs room for one more (side_reserve)."""
    cdef int64_t g = goodness(price, is_bid)
    if not s.anchored:
        if qty == 0:
            return
        s.lo = centred_lo(g, s.wsize)
        s.anchored = True
    if g >= s.lo:
        if (<uint64_t>g) - (<uint64_t>s.lo) < <uint64_t>s.wsize:
            s.idle = 0
            if qty:
                window_set(s, g, qty)
            else:
                window_delete(s, g)
                if s.wn and s.best_g - s.lo < s.wsize // 8:
                    recentre_down(s, is_bid)
            return
        if qty == 0:
            return                  # above the window: no level there to delete
        s.idle = 0
        shift_up(s, g, is_bid)
        window_set(s, g, qty)
        return
    over_put(s, price, qty, is_bid)
    # An empty window moves down to the levels only once they have had RECENTRE_AFTER
    # updates in a row: moving it at once let one level flickering far above the rest
    # (inserted: shift_up moves every level out; deleted: this moved them all back) cost
    # the whole book twice an update.
    if s.wn == 0:
        s.idle += 1
        if s.idle >= RECENTRE_AFTER:
            s.idle = 0
            recentre_down(s, is_bid)


cdef inline bint side_best(const Side* s, int64_t* price, int64_t* qty) noexcept nogil:
    if s.wn:
        price[0] = goodness(s.best_g, s.is_bid)
        qty[0] = s.wq[slot_of(s, s.best_g)]
        return True
    if s.n:
        price[0] = s.levels[s.n - 1].price
        qty[0] = s.levels[s.n - 1].qty
        return True
    return False


cdef Py_ssize_t side_top(const Side* s, int64_t* out, Py_ssize_t k) noexcept nogil:
    """The best k levels (or fewer), best first, as (price, qty) pairs into out."""
    cdef Py_ssize_t i = 0, j
    cdef int64_t g
    if s.wn and k > 0:
        g = s.best_g
        while True:
            out[2 * i] = goodness(g, s.is_bid)
            out[2 * i + 1] = s.wq[slot_of(s, g)]
            i += 1
            if i == k or i == s.wn:
                break
            g = window_below(s, g)
    j = s.n - 1
    while i < k and j >= 0:
        out[2 * i] = s.levels[j].price
        out[2 * i + 1] = s.levels[j].qty
        i += 1
        j -= 1
    return i


cdef void side_clear(Side* s) noexcept nogil:
    if s.wn:
        memset(s.wq, 0, s.wsize * sizeof(int64_t))
        memset(s.wbits, 0, (s.wsize // 64) * sizeof(uint64_t))
    s.wn = 0
    s.n = 0
    s.anchored = False
    s.idle = 0


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
            or not side_has_room(&sides[0], nb) or not side_has_room(&sides[1], na)):
        return -1
    apply_levels(&sides[0], bids, bids + 1, nb, 2)
    apply_levels(&sides[1], asks, asks + 1, na, 2)
    return 0


cdef bint ladder_crossed(const Side* sides) noexcept nogil:
    cdef int64_t bid, ask, q
    return (side_best(&sides[0], &bid, &q) and side_best(&sides[1], &ask, &q)
            and bid >= ask)


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
    """Both sides of one instrument's book. Prices and quantities are fixed-point int64.

    ``capacity``: levels a side holds (window and array together) before its array first
    grows. ``window``: prices the window around each side's best covers (a power of two
    from 64 to 65536), three quarters below the best and a quarter above; depth updates
    within it cost the least. Prices are integers on the instrument's tick grid, so 2048
    covers hundreds of ticks on any grid that is not far finer than its tick."""

    def __cinit__(self, Py_ssize_t capacity=1024, Py_ssize_t window=DEFAULT_WINDOW):
        cdef int k
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if window < 64 or window & (window - 1) or window > MAX_WINDOW:
            raise ValueError(f"window must be a power of two from 64 to {MAX_WINDOW}, "
                             f"not {window}")
        for k in range(2):
            self.sides[k].levels = NULL
            self.sides[k].wq = NULL
            self.sides[k].wbits = NULL
        self.window = window
        side_init(&self.sides[0], capacity, True, window)
        side_init(&self.sides[1], capacity, False, window)

    def __dealloc__(self):
        side_free(&self.sides[0])
        side_free(&self.sides[1])

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
        cdef int64_t bp = 0, bq = 0, ap = 0, aq = 0
        side_best(&self.sides[0], &bp, &bq)
        side_best(&self.sides[1], &ap, &aq)
        return bp, bq, ap, aq

    def clear(self):
        side_clear(&self.sides[0])
        side_clear(&self.sides[1])

    def best_bid(self):
        """(price, quantity) of the best bid, or None when the side is empty."""
        cdef int64_t p, q
        return (p, q) if side_best(&self.sides[0], &p, &q) else None

    def best_ask(self):
        cdef int64_t p, q
        return (p, q) if side_best(&self.sides[1], &p, &q) else None

    def depth(self, int side):
        """Number of levels on a side."""
        cdef Side* s = self._side(side)
        return s.n + s.wn

    def is_crossed(self):
        """True when best bid >= best ask (a book out of sync with its exchange)."""
        return self.crossed()

    def top(self, int side, Py_ssize_t levels):
        """Best ``levels`` levels of a side, best first: int64 array of shape (k, 2)."""
        cdef Side* s = self._side(side)
        cdef Py_ssize_t k = min(max(levels, 0), s.n + s.wn)
        cdef cnp.ndarray out = np.empty((k, 2), dtype=np.int64)
        side_top(s, <int64_t*>cnp.PyArray_DATA(out), k)
        return out

    def levels(self, int side):
        """Every level of a side, best first (a copy)."""
        return self.top(side, self.depth(side))

    def state_bytes(self):
        """Canonical bytes of the whole book (for hashing): per side a u64 level count, then
        (price, qty) int64 pairs best first, little-endian. Same state, same bytes."""
        return b"".join(
            np.array([self.depth(k)], dtype="<u8").tobytes()
            + np.ascontiguousarray(self.levels(k), dtype="<i8").tobytes()
            for k in range(2))

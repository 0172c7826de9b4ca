# cython: language_level=3
"""The C-level API of ``shrivenq._ext.l2_ladder.L2Ladder``, for other compiled modules (the
Binance depth decoder applies a message's levels straight from its scratch arrays).

    from shrivenq._ext.l2_ladder cimport L2Ladder

Cython resolves that cimport to ``shrivenq/_ext/l2_ladder.pxd`` on its include path (ext/):
``ext/shrivenq/_ext/l2_ladder.pxd`` is a symlink to this file, so the cimporting module
imports the type from the right module at run time (a plain ``from l2_ladder cimport``
would look for a top-level module ``l2_ladder``), and this file stays next to its .pyx, where
Cython's rebuild check looks for it.
"""

from libc.stdint cimport int64_t, uint64_t


cdef struct Level:
    int64_t price
    int64_t qty


# A side's levels by "goodness" g: the price for bids, ~price (bitwise not: order-reversing
# and exact over all of int64) for asks, so that better is larger on both sides. Levels with
# g in [lo, lo + wsize) live in the window, a ring of quantities at slot g mod wsize; the
# rest, all worse, in the overflow array. See l2_ladder.pyx.
cdef struct Side:
    Level* levels       # overflow, ascending goodness: best at [n-1]; every g < lo
    Py_ssize_t n
    Py_ssize_t cap
    bint is_bid
    int64_t* wq         # window quantities by slot; 0: no level
    uint64_t* wbits     # window occupancy, a bit a slot
    int64_t lo
    int64_t best_g      # the window's best goodness, when wn > 0
    Py_ssize_t wn       # levels in the window
    Py_ssize_t wsize    # a power of two, at least 64
    bint anchored       # lo has been set (by the first level)
    Py_ssize_t idle     # updates below the window in a row while it was empty


cdef class L2Ladder:
    cdef Side sides[2]
    cdef readonly Py_ssize_t window

    cdef Side* _side(self, int side) except NULL

    # Both sides of one depth message from interleaved (price, quantity) pairs: ``bids``
    # holds ``nb`` pairs, ``asks`` ``na``. Both are checked (no negative quantity) before
    # either side changes: a bad batch raises ValueError and leaves the book as it was.
    cdef int apply_pairs(self, const int64_t* bids, Py_ssize_t nb, const int64_t* asks,
                         Py_ssize_t na) except -1

    # apply_pairs' checks and growth without the update: after it, ladder_apply_pairs_nogil
    # (below) applies the same pairs.
    cdef int make_room(self, const int64_t* bids, Py_ssize_t nb, const int64_t* asks,
                       Py_ssize_t na) except -1

    # Best bid >= best ask (both sides non-empty).
    cdef bint crossed(self) noexcept


# The same two on a ladder's ``sides`` (``&ladder.sides[0]``), for a caller that does not hold
# the GIL (replay's Binance loop). ladder_apply_pairs_nogil changes nothing and returns -1 when
# apply_pairs would raise (a negative quantity) or would have to grow a side; 0 when applied.
# The caller keeps the ladder alive and no other thread may use it meanwhile.
cdef int ladder_apply_pairs_nogil(Side* sides, const int64_t* bids, Py_ssize_t nb,
                                  const int64_t* asks, Py_ssize_t na) noexcept nogil
cdef bint ladder_crossed(const Side* sides) noexcept nogil

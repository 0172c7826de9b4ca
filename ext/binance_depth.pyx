# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Binance depthUpdate messages, decoded straight from the bytes: the hot path of capture
and replay.

``decode_depth(raw, specs, futures)`` scans a combined-stream message
(``{"stream": "...@depth...", "data": {"e": "depthUpdate", ...}}``) in one pass and returns
the same ``DepthEvent`` the plain-Python decoder (``shrivenq.binance.decode``:
``envelope`` + ``depth_event``) returns for it, or ``None`` when it declines. It declines
anything outside the plain form Binance sends (escapes or non-ASCII in strings, duplicate
keys, NaN, exponents or more digits than an int64 holds in a decimal, a field of the
wrong type, a missing field, an unknown symbol, U > u, nesting deeper than 32, trailing
bytes) and the caller then runs the plain-Python decoder, which either accepts the message
(a valid but unusual form) or raises the precise error. So whatever this returns is what
the twin returns; the tests hold it to that on random and hostile messages.

``on_depth(raw, specs, futures, syncs)`` is the hot path of ``BinanceBooks.on_message``: the
same decoding, then the common case of ``BookSync.on_event`` (a synced book, a stale or a
continuing event) done in C, the levels applied straight into the ``L2Ladder`` (through its
C-level API, l2_ladder.pxd) from the scratch arrays; every other case gets the DepthEvent.

``on_depth_records(books, data, ...)`` is replay's loop over a run of stream records of one
WAL batch: on_depth for each, decoding in place, with each symbol's sync kept in a C table
(``Run``) for the length of the call. Binance's own compact form is read by a template
(``scan_compact``); anything else by the general scan (``scan_general``).

Price and quantity pairs in the compact form (``["64200.01000000","0.25000000"]``) are read
one 16-byte load per decimal with SSSE3 where the CPU has it (checked at import); the scalar
scan takes whatever that reader declines, and everything on other hosts.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_DecodeASCII, PyUnicode_GET_LENGTH
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Realloc
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

from shrivenq._ext.l2_ladder cimport (L2Ladder, Side, ladder_apply_pairs_nogil,
                                      ladder_crossed)

cimport numpy as cnp
import sys
from weakref import ref as _weakref

import numpy as np

from shrivenq.events import DepthEvent

_tuple_new = tuple.__new__    # a namedtuple without its Python-level __new__

cnp.import_array()

DEF MAX_DEPTH = 32
DEF MAX_LEVELS = 100000

cdef uint64_t[19] POW10
cdef int _i
POW10[0] = 1
for _i in range(1, 19):
    POW10[_i] = POW10[_i - 1] * 10


cdef inline const char* skip_ws(const char* p, const char* e) noexcept nogil:
    # Whitespace is all <= ' ' (and the compact form Binance sends has none): one
    # comparison says there is none to skip.
    if p < e and <unsigned char>p[0] > c' ':
        return p
    while p < e and (p[0] == c' ' or p[0] == b'\n' or p[0] == b'\r' or p[0] == b'\t'):
        p += 1
    return p


cdef inline const char* scan_string(const char* p, const char* e, const char** s,
                                    Py_ssize_t* n) noexcept nogil:
    """p at the opening quote. Plain ASCII strings only (no escapes): NULL otherwise."""
    cdef const char* q
    cdef unsigned char c
    if p >= e or p[0] != c'"':
        return NULL
    q = p + 1
    while q < e:
        c = <unsigned char>q[0]
        if c == c'"':
            s[0] = p + 1
            n[0] = q - p - 1
            return q + 1
        if c == c'\\' or c < 0x20 or c >= 0x80:
            return NULL
        q += 1
    return NULL


cdef inline const char* scan_uint(const char* p, const char* e, int64_t* out) noexcept nogil:
    """A JSON integer that is a non-negative int64 written plainly (<= 18 digits)."""
    cdef const char* q = p
    cdef uint64_t v = 0
    cdef int nd = 0
    if p >= e or p[0] < c'0' or p[0] > c'9':
        return NULL
    if p[0] == c'0' and p + 1 < e and p[1] >= c'0' and p[1] <= c'9':
        return NULL
    while q < e and q[0] >= c'0' and q[0] <= c'9':
        v = v * 10 + <uint64_t>(q[0] - c'0')
        nd += 1
        q += 1
        if nd > 18:
            return NULL
    if q < e and (q[0] == c'.' or q[0] == c'e' or q[0] == c'E'):
        return NULL
    out[0] = <int64_t>v
    return q


cdef const char* skip_number(const char* p, const char* e) noexcept nogil:
    cdef const char* q = p
    if q < e and q[0] == c'-':
        q += 1
    if q >= e or q[0] < c'0' or q[0] > c'9':
        return NULL
    if q[0] == c'0':
        q += 1
    else:
        while q < e and q[0] >= c'0' and q[0] <= c'9':
            q += 1
    if q < e and q[0] == c'.':
        q += 1
        if q >= e or q[0] < c'0' or q[0] > c'9':
            return NULL
        while q < e and q[0] >= c'0' and q[0] <= c'9':
            q += 1
    if q < e and (q[0] == c'e' or q[0] == c'E'):
        q += 1
        if q < e and (q[0] == c'+' or q[0] == c'-'):
            q += 1
        if q >= e or q[0] < c'0' or q[0] > c'9':
            return NULL
        while q < e and q[0] >= c'0' and q[0] <= c'9':
            q += 1
    return q


cdef const char* skip_value(const char* p, const char* e, int depth) noexcept nogil:
    """Validate and skip any JSON value in the accepted subset; NULL to decline."""
    cdef const char* s
    cdef Py_ssize_t n
    if depth > MAX_DEPTH:
        return NULL
    p = skip_ws(p, e)
    if p >= e:
        return NULL
    if p[0] == c'"':
        return scan_string(p, e, &s, &n)
    if p[0] == c'{':
        p = skip_ws(p + 1, e)
        if p < e and p[0] == c'}':
            return p + 1
        while True:
            p = scan_string(skip_ws(p, e), e, &s, &n)
            if p == NULL:
                return NULL
            p = skip_ws(p, e)
            if p >= e or p[0] != c':':
                return NULL
            p = skip_value(p + 1, e, depth + 1)
            if p == NULL:
                return NULL
            p = skip_ws(p, e)
            if p < e and p[0] == c',':
                p += 1
                continue
            if p < e and p[0] == c'}':
                return p + 1
            return NULL
    if p[0] == c'[':
        p = skip_ws(p + 1, e)
        if p < e and p[0] == c']':
            return p + 1
        while True:
            p = skip_value(p, e, depth + 1)
            if p == NULL:
                return NULL
            p = skip_ws(p, e)
            if p < e and p[0] == c',':
                p += 1
                continue
            if p < e and p[0] == c']':
                return p + 1
            return NULL
    if e - p >= 4 and p[0] == c't' and p[1] == c'r' and p[2] == c'u' and p[3] == c'e':
        return p + 4
    if e - p >= 5 and p[0] == c'f' and p[1] == c'a' and p[2] == c'l' and p[3] == c's' \
            and p[4] == c'e':
        return p + 5
    if e - p >= 4 and p[0] == c'n' and p[1] == c'u' and p[2] == c'l' and p[3] == c'l':
        return p + 4
    return skip_number(p, e)


# --- eight digits at a time ------------------------------------------------------------------
# A decimal such as "64199.93000000" is two runs of digits. On a little-endian machine eight
# bytes loaded as one uint64 hold the first character in the lowest byte, so a run can be
# measured and converted with a few integer operations instead of a multiply-add chain per
# digit (the scan's cost). Anything these do not cover goes to the per-character scan.

cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* Binance's compact pairs, ["price","qty"], sixteen bytes a decimal with SSSE3 (pshufb,
       pmaddubsw), chosen at run time; other hosts use the scalar scan alone. */
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #include <immintrin.h>
    static int bd_simd = 0;
    /* BD_SHUF[k][n]: from the bytes of a decimal whose dot is at k (k = n: no dot), its
       first n digits, dot removed, right-aligned, zeros before. */
    static unsigned char BD_SHUF[16][16][16];
    static const uint64_t BD_POW10[19] = {
        1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
        100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL,
        10000000000000ULL, 100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL,
        100000000000000000ULL, 1000000000000000000ULL};
    static int bd_simd_init(void) {
        int k, n, j, t;
        for (k = 0; k < 16; k++)
            for (n = 0; n < 16; n++)
                for (j = 0; j < 16; j++) {
                    t = j - (16 - n);
                    BD_SHUF[k][n][j] = t < 0 ? 0x80 : (unsigned char)(t < k ? t : t + 1);
                }
        __builtin_cpu_init();
        bd_simd = __builtin_cpu_supports("ssse3") ? 1 : 0;
        return bd_simd;
    }
    /* A quoted plain decimal, 'digits[.digits]' of at most 15 characters, for ``q`` just
       after its opening quote, 16 bytes from q readable: its value at ``scale`` decimals and
       the pointer after the closing quote, or NULL to decline (the scalar scan decides). */
    __attribute__((target("ssse3")))
    static inline const char* bd_decimal_ssse3(const char* q, int scale, int64_t* out) {
        const __m128i v = _mm_loadu_si128((const __m128i*)q);
        const __m128i d = _mm_sub_epi8(v, _mm_set1_epi8('0'));
        unsigned digits = (unsigned)_mm_movemask_epi8(
            _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d));
        unsigned quote = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')));
        unsigned dot = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('.')));
        unsigned before, dots;
        int end, k, f, u;
        if (!quote) return NULL;
        end = __builtin_ctz(quote);
        before = (1u << end) - 1;
        dots = dot & before;
        if (((digits | dots) & before) != before || (dots & (dots - 1))) return NULL;
        k = dots ? __builtin_ctz(dots) : end;       /* whole digits */
        f = dots ? end - k - 1 : 0;                  /* fraction digits */
        if (k == 0 || (dots && f == 0) || k + scale > 18) return NULL;
        u = f;
        if (f > scale) {      /* the digits past the scale must be zeros */
            unsigned zeros = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('0')));
            if (before & ~((1u << (k + 1 + scale)) - 1) & ~zeros) return NULL;
            u = scale;
        }
        __m128i x = _mm_shuffle_epi8(d, _mm_loadu_si128((const __m128i*)BD_SHUF[k][k + u]));
        x = _mm_maddubs_epi16(x, _mm_setr_epi8(10, 1, 10, 1, 10, 1, 10, 1,
                                               10, 1, 10, 1, 10, 1, 10, 1));
        x = _mm_madd_epi16(x, _mm_setr_epi16(100, 1, 100, 1, 100, 1, 100, 1));
        x = _mm_packs_epi32(x, x);
        x = _mm_madd_epi16(x, _mm_setr_epi16(10000, 1, 10000, 1, 10000, 1, 10000, 1));
        uint64_t halves = (uint64_t)_mm_cvtsi128_si64(x);
        uint64_t value = (halves & 0xFFFFFFFFULL) * 100000000ULL + (halves >> 32);
        *out = (int64_t)(value * BD_POW10[scale - u]);
        return q + end + 1;
    }
    /* From ``p`` (a pair's '['), every pair in the compact form followed by ',' or, the
       last, by ']' closing the list, into out[2k], out[2k+1] while k < limit. Returns where
       it stopped (at the first pair not taken, or after the list's ']' with *closed = 1). */
    __attribute__((target("ssse3")))
    static const char* bd_pairs_ssse3(const char* p, const char* e, int ps, int qs,
                                      int64_t* out, Py_ssize_t limit, Py_ssize_t* kk,
                                      int* closed) {
        Py_ssize_t k = *kk;
        int64_t price, qty;
        const char *r, *r2;
        *closed = 0;
        /* 2 + 16 bytes for the price; after it ',"' + 16 for the quantity, then ']' and one */
        while (k < limit && e - p >= 18 && p[0] == '[' && p[1] == '"') {
            r = bd_decimal_ssse3(p + 2, ps, &price);
            if (!r || e - r < 20 || r[0] != ',' || r[1] != '"') break;
            r2 = bd_decimal_ssse3(r + 2, qs, &qty);
            if (!r2 || r2[0] != ']' || (r2[1] != ',' && r2[1] != ']')) break;
            out[2 * k] = price;
            out[2 * k + 1] = qty;
            k++;
            p = r2 + 2;
            if (r2[1] == ']') { *closed = 1; break; }
        }
        *kk = k;
        return p;
    }
    #else
    static int bd_simd = 0;
    static int bd_simd_init(void) { return 0; }
    static const char* bd_pairs_ssse3(const char* p, const char* e, int ps, int qs,
                                      int64_t* out, Py_ssize_t limit, Py_ssize_t* kk,
                                      int* closed) { *closed = 0; return p; }
    #endif
    """
    int bd_simd
    int bd_simd_init()
    const char* bd_pairs_ssse3(const char* p, const char* e, int ps, int qs, int64_t* out,
                               Py_ssize_t limit, Py_ssize_t* kk, int* closed) noexcept nogil

cdef int _simd_available = bd_simd_init()


def _use_simd(bint on):
    """Tests only: read pairs with SSSE3 (when this host has it) or with the scalar scan
    alone, so that both are held to the twin on any host. Returns whether SSSE3 is in use."""
    global bd_simd
    bd_simd = 1 if (on and _simd_available) else 0
    return bool(bd_simd)


cdef uint64_t ASCII_ZEROS = 0x3030303030303030ULL
cdef bint LITTLE_ENDIAN = sys.byteorder == "little"


cdef inline uint64_t load8(const char* p) noexcept nogil:
    cdef uint64_t x
    memcpy(&x, p, 8)
    return x


cdef inline int digits8(uint64_t x) noexcept nogil:
    """How many of the 8 bytes are ASCII digits before the first that is not (0-8). A
    byte's high nibble must be 3 and that of byte + 6 too; a carry out of a byte >= 0xFA
    only disturbs the bytes after that non-digit, which do not count."""
    cdef uint64_t t = ((x & 0xF0F0F0F0F0F0F0F0ULL)
                       | (((x + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) >> 4))
    t ^= 0x3333333333333333ULL
    if t == 0:
        return 8
    return __builtin_ctzll(t) >> 3


cdef inline uint64_t value8(uint64_t d) noexcept nogil:
    """The number written by 8 digit values (0-9, one a byte, the first in the lowest)."""
    d = d * 10 + (d >> 8)
    return (((d & 0x000000FF000000FFULL) * (100 + (1000000ULL << 32)))
            + (((d >> 16) & 0x000000FF000000FFULL) * (1 + (10000ULL << 32)))) >> 32


cdef inline uint64_t leading_value(uint64_t x, int k) noexcept nogil:
    """The number written by the first k (1-8) bytes of x, all digits: they are shifted to
    the top, so the bytes below read as leading zeros (a non-digit's borrow only reaches the
    bytes after it, shifted out)."""
    return value8((x - ASCII_ZEROS) << (8 * (8 - k)))


cdef inline uint64_t low_digits(uint64_t x, int k) noexcept nogil:
    """The digit values (0-9 a byte) of the first k (0-8) bytes of x, all digits; 0 above."""
    return 0 if k == 0 else (x - ASCII_ZEROS) & (~0ULL >> (8 * (8 - k)))


cdef inline const char* scan_quoted_decimal(const char* p, const char* e, int scale,
                                            int64_t* out) noexcept nogil:
    """p at the opening quote of a plain 'digits[.digits]' string: its value at ``scale``
    decimals, exactly, and the pointer after the closing quote; NULL to decline. The common
    form (1-8 whole digits, optionally '.' and 1-8 more) is read eight bytes at a time."""
    cdef const char* q = p + 1
    cdef const char* r
    cdef int k, f, u
    cdef uint64_t x, y, d, whole, frac
    # Every byte read lies before e: eight from q, q[k] (k < e - q), eight from r, r[f]
    # (f < e - r); the last decimal of a message (about 15 bytes from its end) qualifies.
    if LITTLE_ENDIAN and e - q >= 8 and p[0] == c'"':
        x = load8(q)
        k = digits8(x)
        if k > 0 and k + scale <= 18 and k < e - q:
            if q[k] == c'"':
                out[0] = <int64_t>(leading_value(x, k) * POW10[scale])
                return q + k + 1
            r = q + k + 1
            if q[k] == c'.' and e - r >= 8:
                y = load8(r)
                f = digits8(y)
                if f > 0 and f < e - r and r[f] == c'"':
                    d = low_digits(y, f)
                    u = f
                    if f > scale:
                        # the digits past the scale, bytes scale .. f-1, must all be zeros
                        if (d >> (8 * scale)) != 0:
                            return NULL   # more decimal places than the scale: the twin says why
                        u = scale
                        d = low_digits(y, u)
                    if k + u <= 8:
                        # whole digits then the u fraction digits in one word, read at once
                        d = low_digits(x, k) | (d << (8 * k) if u else 0)
                        out[0] = <int64_t>(value8(d << (8 * (8 - k - u))) * POW10[scale - u])
                    else:
                        whole = leading_value(x, k)
                        frac = value8(d << (8 * (8 - u))) if u else 0
                        out[0] = <int64_t>(whole * POW10[scale] + frac * POW10[scale - u])
                    return r + f + 1
    return scan_decimal_chars(p, e, scale, out)


cdef const char* scan_decimal_chars(const char* p, const char* e, int scale,
                                    int64_t* out) noexcept nogil:
    """scan_quoted_decimal, a character at a time: any length, any form it accepts."""
    cdef const char* q
    cdef const char* start
    cdef uint64_t whole = 0, frac = 0
    cdef int nw = 0, nf = 0, nint = 0
    cdef char c
    if p >= e or p[0] != c'"':
        return NULL
    q = p + 1
    start = q
    while q < e and q[0] == c'0':
        q += 1
        nint += 1
    while q < e and q[0] >= c'0' and q[0] <= c'9':
        whole = whole * 10 + <uint64_t>(q[0] - c'0')
        nw += 1
        nint += 1
        q += 1
    if nw > 18:
        return NULL
    if q < e and q[0] == c'.':
        q += 1
        while q < e and q[0] >= c'0' and q[0] <= c'9':
            if nf < scale:
                frac = frac * 10 + <uint64_t>(q[0] - c'0')
                nf += 1
            elif q[0] != c'0':
                return NULL       # more decimal places than the scale: the twin says why
            q += 1
        if nint == 0 and q - start == 1:
            return NULL           # "." alone
    elif nint == 0:
        return NULL
    if q >= e or q[0] != c'"' or q - start > 64:
        return NULL
    if nw + scale > 18:
        return NULL               # might not fit: the twin decides exactly
    out[0] = <int64_t>(whole * POW10[scale] + frac * POW10[scale - nf])
    return q + 1


cdef int64_t* scratch[2]           # bids, asks: (price, qty) pairs
cdef Py_ssize_t scratch_cap[2]
scratch[0] = scratch[1] = NULL
scratch_cap[0] = scratch_cap[1] = 0


cdef int grow(int side, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = max(need, 2 * scratch_cap[side], 256)
    cdef int64_t* q = <int64_t*>PyMem_Realloc(scratch[side], cap * sizeof(int64_t))
    if q == NULL:
        raise MemoryError()
    scratch[side] = q
    scratch_cap[side] = cap
    return 0


cdef const char* scan_pairs(const char* p, const char* e, int ps, int qs, int64_t* out,
                            Py_ssize_t cap, Py_ssize_t* count) noexcept nogil:
    """[["p","q"], ...] into ``out`` as (price, qty) pairs, at most ``cap`` of them; NULL to
    decline. More pairs than ``cap``: NULL with count -1 (a bigger buffer may take them)."""
    cdef Py_ssize_t k = 0
    cdef int64_t price, qty
    cdef int closed
    count[0] = 0
    p = skip_ws(p, e)
    if p >= e or p[0] != c'[':
        return NULL
    p = skip_ws(p + 1, e)
    if p < e and p[0] == c']':
        return p + 1
    while True:
        if bd_simd:
            p = bd_pairs_ssse3(p, e, ps, qs, out, min(cap, <Py_ssize_t>MAX_LEVELS), &k, &closed)
            if closed:
                count[0] = k
                return p
            p = skip_ws(p, e)
        if p >= e or p[0] != c'[':
            return NULL
        p = scan_quoted_decimal(skip_ws(p + 1, e), e, ps, &price)
        if p == NULL:
            return NULL
        p = skip_ws(p, e)
        if p >= e or p[0] != c',':
            return NULL
        p = scan_quoted_decimal(skip_ws(p + 1, e), e, qs, &qty)
        if p == NULL:
            return NULL
        p = skip_ws(p, e)
        if p >= e or p[0] != c']':
            return NULL
        if k >= MAX_LEVELS:
            return NULL                 # declined (count 0)
        if k >= cap:
            count[0] = -1
            return NULL
        out[2 * k] = price
        out[2 * k + 1] = qty
        k += 1
        p = skip_ws(p + 1, e)
        if p < e and p[0] == c',':
            p = skip_ws(p + 1, e)
            continue
        if p < e and p[0] == c']':
            count[0] = k
            return p + 1
        return NULL


cdef const char* scan_levels(const char* p, const char* e, int ps, int qs,
                             int side, Py_ssize_t* count) except? NULL:
    """scan_pairs into ``scratch[side]``, grown as needed (up to MAX_LEVELS pairs)."""
    cdef const char* r
    while True:
        r = scan_pairs(p, e, ps, qs, scratch[side], scratch_cap[side] // 2, count)
        if r != NULL or count[0] != -1:
            return r
        grow(side, scratch_cap[side] + 2)


# --- symbols: the last few seen, so that a message's symbol costs no new string, no hashing
# and no reading of its spec's scales. A slot holds references to the str and to the spec it
# was looked up with; a hit still looks the str up in ``specs`` (its hash is cached) and
# uses the slot's scales only when that gives the very same spec object.

cdef enum:
    SYM_SLOTS = 16

cdef PyObject* sym_str[SYM_SLOTS]
cdef PyObject* sym_spec[SYM_SLOTS]
cdef int sym_ps[SYM_SLOTS]
cdef int sym_qs[SYM_SLOTS]
for _i in range(SYM_SLOTS):
    sym_str[_i] = sym_spec[_i] = NULL


cdef object symbol_spec(const char* s, Py_ssize_t n, dict specs, int* ps, int* qs):
    """The symbol named by the ASCII bytes s[:n] as a str, its price and quantity scales
    into ``ps`` and ``qs``; None when ``specs`` has no spec for it or its scales are out of
    range."""
    cdef unsigned int slot = <unsigned int>n * 7
    cdef PyObject* cached
    cdef bint hit = False
    cdef int p_, q_
    if n:
        slot += 3 * <unsigned char>s[0] + <unsigned char>s[n - 1]
    slot &= SYM_SLOTS - 1
    cached = sym_str[slot]
    if (cached != NULL and PyUnicode_GET_LENGTH(<object>cached) == n
            and memcmp(PyUnicode_DATA(<object>cached), s, n) == 0):
        symbol = <object>cached
        hit = True
    else:
        symbol = PyUnicode_DecodeASCII(s, n, NULL)
    spec = specs.get(symbol)
    if spec is None:
        return None
    if hit and <PyObject*>spec == sym_spec[slot]:
        ps[0], qs[0] = sym_ps[slot], sym_qs[slot]
        return symbol
    p_, q_ = spec.price_scale, spec.qty_scale
    if not (0 <= p_ <= 18 and 0 <= q_ <= 18):
        return None
    Py_XDECREF(sym_str[slot])
    Py_XDECREF(sym_spec[slot])
    Py_INCREF(symbol)
    Py_INCREF(spec)
    sym_str[slot] = <PyObject*>symbol
    sym_spec[slot] = <PyObject*>spec
    sym_ps[slot], sym_qs[slot] = p_, q_
    ps[0], qs[0] = p_, q_
    return symbol


cdef inline bint key_is(const char* s, Py_ssize_t n, const char* lit, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i
    if n != m:
        return False
    for i in range(m):
        if s[i] != lit[i]:
            return False
    return True


cdef struct Head:
    int64_t U, u, pu, E
    Py_ssize_t nb, na       # pairs in scratch[0] (bids) and scratch[1] (asks)
    int slot                # the Run slot of the symbol (on_depth_records), -1 when none
    int ps, qs              # the symbol's price and quantity scales


# --- a replay run's symbols: on_depth_records keeps, for each symbol it met, the str, the
# scales, the BookSync with its ladder and counters, and the book's update id as a C integer,
# written back to ``sync.book_id`` only before any Python code runs and when the run ends.
# Nothing but this module touches them in between, so a slot stays true until then; every
# call into Python (a message the decoder declines, a case BookSync decides) writes back and
# empties the table.

cdef enum:
    RUN_SLOTS = 32
    RUN_NAME = 40           # longest symbol a slot holds (Binance's are about 20)

cdef struct RunSlot:
    PyObject* symbol        # owned references, NULL when the slot is empty
    PyObject* sync
    PyObject* book          # L2Ladder
    PyObject* counters      # SyncCounters
    int64_t book_id
    int ps, qs
    bint futures
    bint dirty              # book_id moved since it was read from sync.book_id
    # For the loop that runs without the GIL (run_nogil): the symbol's bytes, the ladder's
    # sides and the counters it moves, all inside the objects above, which the slot holds.
    char name[RUN_NAME]
    Py_ssize_t name_n
    Side* sides
    long long* stale
    long long* applied
    long long* levels


cdef struct Run:
    RunSlot slots[RUN_SLOTS]
    int used


cdef inline unsigned int run_hash(const char* s, Py_ssize_t n) noexcept nogil:
    cdef unsigned int h = <unsigned int>n
    cdef Py_ssize_t i
    for i in range(n):
        h = h * 31 + <unsigned char>s[i]
    return h & (RUN_SLOTS - 1)


cdef inline int run_find(Run* run, const char* s, Py_ssize_t n) noexcept nogil:
    cdef unsigned int k = run_hash(s, n)
    cdef RunSlot* sl = &run.slots[k]
    if sl.symbol != NULL and sl.name_n == n and memcmp(sl.name, s, n) == 0:
        return <int>k
    return -1


cdef int run_drop(RunSlot* sl) except -1:
    """Write the slot's update id back to its BookSync if it moved, and empty it."""
    cdef PyObject* sync = sl.sync
    if sync == NULL:
        return 0
    sl.sync = NULL
    try:
        if sl.dirty:
            (<object>sync).book_id = sl.book_id
    finally:
        sl.dirty = False
        Py_XDECREF(sl.symbol)
        Py_XDECREF(sl.book)
        Py_XDECREF(sl.counters)
        Py_XDECREF(sync)
        sl.symbol = sl.book = sl.counters = NULL
    return 0


cdef int run_flush(Run* run) except -1:
    """Before any Python code runs: every update id written back, the table emptied."""
    cdef int k
    if run.used:
        run.used = 0
        for k in range(RUN_SLOTS):
            run_drop(&run.slots[k])
    return 0


cdef int run_fill(Run* run, str symbol, const Head* h, dict syncs) except -2:
    """A slot for ``symbol`` if its sync is one to_sync would handle in C (a synced book:
    an int64 update id, an L2Ladder, SyncCounters); -1 otherwise."""
    cdef int overflow = 0
    cdef long long book_id
    cdef unsigned int k
    cdef Py_ssize_t n
    cdef RunSlot* sl
    cdef L2Ladder book
    cdef SyncCounters c
    sync = syncs.get(symbol)
    if sync is None:
        return -1
    bid_obj = sync.book_id
    book_obj = sync.book
    counters = sync.counters
    if (type(bid_obj) is not int or type(book_obj) is not L2Ladder
            or type(counters) is not SyncCounters):
        return -1
    book_id = PyLong_AsLongLongAndOverflow(bid_obj, &overflow)
    if overflow or book_id < 0:
        return -1
    futures = bool(sync.futures)
    n = PyUnicode_GET_LENGTH(symbol)
    if n > RUN_NAME or not symbol.isascii():   # an ASCII str's data are its bytes
        return -1
    k = run_hash(<const char*>PyUnicode_DATA(symbol), n)
    sl = &run.slots[k]
    run_drop(sl)
    for obj in (symbol, sync, book_obj, counters):
        Py_INCREF(obj)
    sl.symbol, sl.sync = <PyObject*>symbol, <PyObject*>sync
    sl.book, sl.counters = <PyObject*>book_obj, <PyObject*>counters
    sl.book_id, sl.ps, sl.qs, sl.futures, sl.dirty = book_id, h.ps, h.qs, futures, False
    memcpy(sl.name, PyUnicode_DATA(symbol), n)
    sl.name_n = n
    book = <L2Ladder>book_obj
    c = <SyncCounters>counters
    sl.sides = &book.sides[0]
    sl.stale, sl.applied, sl.levels = &c.stale, &c.applied, &c.levels
    run.used += 1
    return <int>k


cdef inline const char* lit(const char* p, const char* e, const char* s,
                            Py_ssize_t n) noexcept nogil:
    """After the literal s[:n] if p starts with it, else NULL (p may be NULL)."""
    if p != NULL and e - p >= n and memcmp(p, s, n) == 0:
        return p + n
    return NULL


cdef inline const char* field_uint(const char* p, const char* e, const char* key,
                                   Py_ssize_t n, int64_t* out) noexcept nogil:
    """The literal key[:n] (',"U":'), then a plain non-negative integer; NULL otherwise."""
    p = lit(p, e, key, n)
    return scan_uint(p, e, out) if p != NULL else NULL


cdef inline bint names_depth(const char* s, Py_ssize_t n) noexcept nogil:
    """The stream name s[:n] contains "@depth"."""
    cdef Py_ssize_t i
    for i in range(n - 5):
        if s[i] == c'@' and s[i + 1] == c'd' and s[i + 2] == c'e' \
                and s[i + 3] == c'p' and s[i + 4] == c't' and s[i + 5] == c'h':
            return True
    return False


cdef object resolve_symbol(const char* s, Py_ssize_t n, dict specs, Run* run, Head* h):
    """The symbol s[:n] (a str) and its scales into h; from the run's table when it has
    it (h.slot), else through ``symbol_spec``. None when the specs do not know it."""
    cdef int k = -1
    if run != NULL:
        k = run_find(run, s, n)
    h.slot = k
    if k >= 0:
        h.ps, h.qs = run.slots[k].ps, run.slots[k].qs
        return <object>run.slots[k].symbol
    return symbol_spec(s, n, specs, &h.ps, &h.qs)


cdef const char* compact_head(const char* base, const char* e, bint futures, Head* h,
                              const char** s, Py_ssize_t* n) noexcept nogil:
    """Binance's compact form up to its symbol: the stream, the event time (into h) and the
    symbol's bytes (s[:n]); the pointer after the symbol, NULL to decline."""
    cdef int64_t tmp
    cdef const char* p = lit(base, e, b'{"stream":', 10)
    if p == NULL:
        return NULL
    p = scan_string(p, e, s, n)
    if p == NULL or not names_depth(s[0], n[0]):
        return NULL
    p = lit(p, e, b',"data":{"e":"depthUpdate","E":', 31)
    if p == NULL:
        return NULL
    p = scan_uint(p, e, &h.E)
    if futures:
        p = field_uint(p, e, b',"T":', 5, &tmp)
    p = lit(p, e, b',"s":', 5)
    if p == NULL:
        return NULL
    return scan_string(p, e, s, n)


cdef const char* compact_body(const char* p, const char* e, bint futures, Head* h,
                              int64_t* bids, Py_ssize_t bcap, int64_t* asks,
                              Py_ssize_t acap) noexcept nogil:
    """The compact form after the symbol: the ids into h, the levels (at scales h.ps, h.qs)
    into ``bids`` and ``asks`` (h.nb, h.na pairs; at most bcap, acap), the end of the
    message. Non-NULL when it all reads; NULL to decline, with h.nb or h.na -1 when that
    side has more pairs than its buffer holds."""
    h.nb = h.na = 0
    p = field_uint(p, e, b',"U":', 5, &h.U)
    p = field_uint(p, e, b',"u":', 5, &h.u)
    if p == NULL:
        return NULL
    if futures:
        p = field_uint(p, e, b',"pu":', 6, &h.pu)
        if p == NULL:
            return NULL
    else:
        h.pu = -1
    p = lit(p, e, b',"b":', 5)
    if p == NULL:
        return NULL
    p = lit(scan_pairs(p, e, h.ps, h.qs, bids, bcap, &h.nb), e, b',"a":', 5)
    if p == NULL:
        return NULL
    p = scan_pairs(p, e, h.ps, h.qs, asks, acap, &h.na)
    if p == NULL or e - p != 2 or p[0] != c'}' or p[1] != c'}' or h.U > h.u:
        return NULL
    return p


cdef object scan_compact(const char* base, Py_ssize_t size, dict specs, bint futures,
                         Head* h, Run* run):
    """scan_depth for the one form Binance sends: no whitespace, the keys in its order
    (stream, data; e, E, [T,] s, U, u, [pu,] b, a). It takes no decision of its own: None
    for anything else (and for a declined symbol or level), and scan_depth's general scan
    then reads the message as it always did; what it accepts, that scan would read the
    same, and it reads the header with a few comparisons instead of a key at a time."""
    cdef const char* e = base + size
    cdef const char* p
    cdef const char* s
    cdef Py_ssize_t n
    p = compact_head(base, e, futures, h, &s, &n)
    if p == NULL:
        return None
    symbol = resolve_symbol(s, n, specs, run, h)
    if symbol is None:
        return None
    while compact_body(p, e, futures, h, scratch[0], scratch_cap[0] // 2,
                       scratch[1], scratch_cap[1] // 2) == NULL:
        if h.nb == -1:
            grow(0, scratch_cap[0] + 2)
        elif h.na == -1:
            grow(1, scratch_cap[1] + 2)
        else:
            return None
    return symbol


cdef object scan_depth(const char* base, Py_ssize_t size, dict specs, bint futures, Head* h,
                       Run* run):
    """Decode the whole message base[:size]: its ids into ``h``, its levels into the scratch
    arrays. The symbol (str) when it decoded cleanly, None to decline. Nothing outside this
    module changes, so a message that is declined half way has touched no book. ``run``:
    on_depth_records' table of symbols, looked in first (h.slot says where it was found)."""
    symbol = scan_compact(base, size, specs, futures, h, run)
    if symbol is not None:
        return symbol
    return scan_general(base, size, specs, futures, h, run)


cdef object scan_general(const char* base, Py_ssize_t size, dict specs, bint futures, Head* h,
                         Run* run):
    """scan_depth for any form: every key in any order, whitespace, keys it does not know."""
    cdef const char* e = base + size
    cdef const char* p = skip_ws(base, e)
    cdef const char* s
    cdef const char* sym_s = NULL
    cdef const char* b_at = NULL
    cdef const char* a_at = NULL
    cdef const char* data_end
    cdef Py_ssize_t n, sym_n = 0
    cdef int64_t U = -1, u = -1, pu = -1, E = 0, tmp
    cdef Py_ssize_t nb = 0, na = 0, i
    cdef int ps = 0, qs = 0
    symbol = None
    cdef bint have_stream = False, have_data = False, is_depth = False, have_e = False
    cdef bint have_E = False
    cdef int seen_U = 0, seen_u = 0, seen_pu = 0, seen_s = 0, seen_b = 0, seen_a = 0
    cdef int seen_E = 0, seen_e = 0
    if p >= e or p[0] != c'{':
        return None
    p = skip_ws(p + 1, e)
    # --- the envelope ----------------------------------------------------------------------
    while True:
        p = scan_string(p, e, &s, &n)
        if p == NULL:
            return None
        p = skip_ws(p, e)
        if p >= e or p[0] != c':':
            return None
        p = skip_ws(p + 1, e)
        if key_is(s, n, b"stream", 6):
            if have_stream:
                return None
            have_stream = True
            p = scan_string(p, e, &s, &n)
            if p == NULL:
                return None
            is_depth = names_depth(s, n)
            if not is_depth:
                return None
        elif key_is(s, n, b"data", 4):
            if have_data:
                return None
            have_data = True
            if p >= e or p[0] != c'{':
                return None
            p = skip_ws(p + 1, e)
            if p < e and p[0] == c'}':
                return None
            while True:
                p = scan_string(p, e, &s, &n)
                if p == NULL:
                    return None
                p = skip_ws(p, e)
                if p >= e or p[0] != c':':
                    return None
                p = skip_ws(p + 1, e)
                if n == 1 and s[0] == c'U':
                    seen_U += 1
                    p = scan_uint(p, e, &U)
                elif n == 1 and s[0] == c'u':
                    seen_u += 1
                    p = scan_uint(p, e, &u)
                elif n == 2 and s[0] == c'p' and s[1] == c'u':
                    seen_pu += 1
                    p = scan_uint(p, e, &pu)
                elif n == 1 and s[0] == c'E':
                    seen_E += 1
                    p = scan_uint(p, e, &E)
                elif n == 1 and s[0] == c'e':
                    seen_e += 1
                    p = scan_string(p, e, &s, &n)
                    if p == NULL or not key_is(s, n, b"depthUpdate", 11):
                        return None
                elif n == 1 and s[0] == c's':
                    seen_s += 1
                    p = scan_string(p, e, &sym_s, &sym_n)
                    if p != NULL and seen_s == 1:
                        symbol = resolve_symbol(sym_s, sym_n, specs, run, h)
                        if symbol is None:
                            return None
                        ps, qs = h.ps, h.qs
                elif n == 1 and s[0] == c'b':
                    seen_b += 1
                    if seen_s == 1 and seen_b == 1:     # symbol known: parse in place
                        p = scan_levels(p, e, ps, qs, 0, &nb)
                    else:
                        b_at = p
                        p = skip_value(p, e, 2)
                elif n == 1 and s[0] == c'a':
                    seen_a += 1
                    if seen_s == 1 and seen_a == 1:
                        p = scan_levels(p, e, ps, qs, 1, &na)
                    else:
                        a_at = p
                        p = skip_value(p, e, 2)
                else:
                    p = skip_value(p, e, 2)
                if p == NULL:
                    return None
                p = skip_ws(p, e)
                if p < e and p[0] == c',':
                    p = skip_ws(p + 1, e)
                    continue
                if p < e and p[0] == c'}':
                    p += 1
                    break
                return None
        else:
            p = skip_value(p, e, 1)
            if p == NULL:
                return None
        p = skip_ws(p, e)
        if p < e and p[0] == c',':
            p = skip_ws(p + 1, e)
            continue
        if p < e and p[0] == c'}':
            p += 1
            break
        return None
    if skip_ws(p, e) != e or not (have_stream and have_data and is_depth):
        return None
    if seen_e != 1 or seen_s != 1 or seen_U != 1 or seen_u != 1 or seen_b != 1 \
            or seen_a != 1 or seen_E > 1 or seen_pu > (1 if futures else 1):
        return None
    if futures and seen_pu != 1:
        return None
    if not futures:
        pu = -1
    if U > u:
        return None
    if b_at != NULL and scan_levels(b_at, e, ps, qs, 0, &nb) == NULL:
        return None
    if a_at != NULL and scan_levels(a_at, e, ps, qs, 1, &na) == NULL:
        return None
    h.U, h.u, h.pu, h.E, h.nb, h.na = U, u, pu, E, nb, na
    return symbol


cdef object make_event(str symbol, const Head* h):
    """The DepthEvent of a decoded message: four new arrays from the scratch pairs."""
    return make_event_of(symbol, h, scratch[0], scratch[1])


cdef object make_event_of(str symbol, const Head* h, const int64_t* sb, const int64_t* sa):
    """The DepthEvent of a message decoded into the pairs ``sb`` (bids) and ``sa`` (asks)."""
    cdef Py_ssize_t i, nb = h.nb, na = h.na
    cdef cnp.npy_intp nbd = nb, nad = na
    cdef cnp.ndarray bp = cnp.PyArray_EMPTY(1, &nbd, cnp.NPY_INT64, 0)
    cdef cnp.ndarray bq = cnp.PyArray_EMPTY(1, &nbd, cnp.NPY_INT64, 0)
    cdef cnp.ndarray ap = cnp.PyArray_EMPTY(1, &nad, cnp.NPY_INT64, 0)
    cdef cnp.ndarray aq = cnp.PyArray_EMPTY(1, &nad, cnp.NPY_INT64, 0)
    cdef int64_t* dbp = <int64_t*>cnp.PyArray_DATA(bp)
    cdef int64_t* dbq = <int64_t*>cnp.PyArray_DATA(bq)
    cdef int64_t* dap = <int64_t*>cnp.PyArray_DATA(ap)
    cdef int64_t* daq = <int64_t*>cnp.PyArray_DATA(aq)
    for i in range(nb):
        dbp[i] = sb[2 * i]
        dbq[i] = sb[2 * i + 1]
    for i in range(na):
        dap[i] = sa[2 * i]
        daq[i] = sa[2 * i + 1]
    return _tuple_new(DepthEvent, (symbol, h.U, h.u, h.pu, h.E, bp, bq, ap, aq))


cdef inline object scan_message(bytes raw, dict specs, bint futures, Head* h):
    """Scan a whole message into ``h``: its symbol, or None to decline."""
    memset(h, 0, sizeof(Head))
    return scan_depth(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), specs, futures, h, NULL)


def decode_depth(bytes raw, dict specs, bint futures):
    """The DepthEvent of a combined-stream depthUpdate message, or None to decline."""
    cdef Head h
    symbol = scan_message(raw, specs, futures, &h)
    if symbol is None:
        return None
    return make_event(symbol, &h)


def on_depth(bytes raw, dict specs, bint futures, dict syncs, MessageCounters counters):
    """Decode a depth message and hand it to its symbol's ``BookSync`` (``syncs[symbol]``):
    what ``syncs[symbol].on_event(decode_depth(raw, specs, futures))`` does, returning the
    same actions and counting the message (``messages`` and ``depth``), or None (nothing
    changed anywhere, nothing counted) when the decoder declines.

    The common case is done here in C, with no event built: the book is synced (an
    ``L2Ladder`` and an int64 update id) and the event is stale (``u <=`` the id: the sync's
    ``stale`` counter) or continues the book (spot ``U == id + 1``, USD-M ``pu == id``): the
    decoded levels go straight into the ladder, then the id and the ``applied`` and
    ``levels`` counters move exactly as ``BookSync.on_event`` moves them, and a book that
    is now crossed goes to ``BookSync._restart`` as there. Anything else (not synced, a
    sequence gap, a book of another type) is the DepthEvent handed to ``sync.on_event``,
    so the plain-Python sync decides every unusual case.
    """
    return depth_message(raw, specs, futures, syncs, counters)


cdef inline object depth_message(bytes raw, dict specs, bint futures, dict syncs,
                                 MessageCounters counters):
    cdef Head h
    symbol = scan_message(raw, specs, futures, &h)
    if symbol is None:
        return None
    counters.messages += 1
    out = to_sync(symbol, &h, syncs)
    counters.depth += 1
    return out


cdef class DepthRouter:
    """``BinanceBooks.on_message`` in one compiled call: a depth message the decoder reads
    is done as ``on_depth`` does it; anything else goes to ``plain(books, raw)``, the books'
    plain-Python handler. (A Python method around on_depth cost about 0.15 us of the 2 us a
    20+20-level message takes.) It keeps the books' syncs, counters and market, which are
    theirs for life, and their specs, which the books hand it again whenever they change
    (``specs``); it reaches the books only through a weak reference, so the two form no
    cycle."""

    cdef public dict specs
    cdef dict syncs
    cdef MessageCounters counters
    cdef bint futures
    cdef object books
    cdef object plain

    def __cinit__(self, books, plain):
        self.books = _weakref(books)
        self.plain = plain
        self.specs = books.specs
        self.syncs = books.syncs
        self.counters = books.counters
        self.futures = books.futures

    def on_message(self, raw):
        if type(raw) is bytes:
            out = depth_message(raw, self.specs, self.futures, self.syncs, self.counters)
            if out is not None:
                return out
        books = self.books()
        if books is None:
            raise ReferenceError("the BinanceBooks this on_message belonged to is gone")
        return self.plain(books, raw)


cdef class MessageCounters:
    """BinanceBooks' message counters: C integers, so that the compiled path counts a
    message without making Python ints; Python reads and writes them as attributes."""

    cdef public long long messages, depth, trades, book_tickers, shutdowns, other
    cdef public long long malformed, bad_snapshots

    FIELDS = ("messages", "depth", "trades", "book_tickers", "shutdowns", "other",
              "malformed", "bad_snapshots")

    def as_dict(self):
        return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self):
        return f"MessageCounters({self.as_dict()})"


cdef class SyncCounters:
    """A BookSync's counters (shrivenq.binance.sync): C integers, so that the compiled path
    counts an applied message without making Python ints; Python reads and writes them as
    attributes."""

    cdef public long long applied, levels, stale, buffered_dropped, overflow, gaps
    cdef public long long snapshots, snapshots_ignored, refetches, syncs, resets

    FIELDS = ("applied", "levels", "stale", "buffered_dropped", "overflow", "gaps",
              "snapshots", "snapshots_ignored", "refetches", "syncs", "resets")

    def as_dict(self):
        return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self):
        return f"SyncCounters({self.as_dict()})"


cdef object to_sync(str symbol, const Head* h, dict syncs):
    """A decoded message (ids in h, levels in the scratch arrays) into syncs[symbol]: the
    actions ``syncs[symbol].on_event(event)`` would return, and the same changes."""
    cdef int overflow = 0
    cdef long long book_id
    cdef L2Ladder book
    cdef SyncCounters c
    sync = syncs[symbol]
    bid_obj = sync.book_id
    book_obj = sync.book
    counters = sync.counters
    if (type(bid_obj) is not int or type(book_obj) is not L2Ladder
            or type(counters) is not SyncCounters):
        return sync.on_event(make_event(symbol, h))
    c = <SyncCounters>counters
    book_id = PyLong_AsLongLongAndOverflow(bid_obj, &overflow)
    if overflow or book_id < 0:
        return sync.on_event(make_event(symbol, h))
    if h.u <= book_id:
        c.stale += 1
        return ()
    if not ((h.pu == book_id) if sync.futures else (h.U - 1 == book_id)):
        return sync.on_event(make_event(symbol, h))   # a sequence gap: the sync decides
    book = <L2Ladder>book_obj
    book.apply_pairs(scratch[0], h.nb, scratch[1], h.na)
    sync.book_id = h.u
    c.applied += 1
    c.levels += h.nb + h.na
    if book.crossed():
        return sync._restart("crossed", make_event(symbol, h), ())
    return ()


cdef enum:
    NOGIL_PAIRS = 1024      # levels a side may have for run_nogil (more: the GIL's loop)
    # What slot_step did with a decoded message:
    STEP_STALE = 0          # counted stale
    STEP_APPLIED = 1        # applied, id and counters moved
    STEP_CROSSED = 2        # applied, and the book is now crossed: the sync restarts it
    STEP_GAP = 3            # it does not continue the book: the sync decides; nothing changed
    STEP_NO_ROOM = 4        # the ladder must grow (or a quantity is negative); nothing changed


cdef inline int slot_step(RunSlot* sl, const Head* h, const int64_t* bids,
                          const int64_t* asks) noexcept nogil:
    """to_sync's synced case on a run slot: a stale message counted, a continuing one
    applied (its pairs in ``bids``/``asks``), as BookSync.on_event does them."""
    if h.u <= sl.book_id:
        sl.stale[0] += 1
        return STEP_STALE
    if not ((h.pu == sl.book_id) if sl.futures else (h.U - 1 == sl.book_id)):
        return STEP_GAP
    if ladder_apply_pairs_nogil(sl.sides, bids, h.nb, asks, h.na) < 0:
        return STEP_NO_ROOM
    sl.book_id = h.u
    sl.dirty = True
    sl.applied[0] += 1
    sl.levels[0] += h.nb + h.na
    return STEP_CROSSED if ladder_crossed(sl.sides) else STEP_APPLIED


cdef Py_ssize_t run_nogil(const char* base, Py_ssize_t size, const uint8_t[:] kinds,
                          const uint64_t[:] offsets, const uint32_t[:] lengths, Py_ssize_t i,
                          uint8_t text, bint futures, Run* run, int64_t* bids, int64_t* asks,
                          Head* h, int* crossed, Py_ssize_t* depth) noexcept nogil:
    """on_depth_records' common case without the GIL, so that the WAL reader's read-ahead
    threads decode the next blocks meanwhile (holding it, this loop left them waiting for
    it, and replay read no faster with them than without). From record i, each stream
    message in Binance's compact form, of a symbol in the run's table, stale or continuing
    its book, with at most NOGIL_PAIRS levels a side, is decoded into ``bids``/``asks`` and
    counted or applied exactly as on_depth_records' own loop does it. Returns the index of
    the first record it did not take, of which nothing has changed (that loop takes it from
    the start); or, with ``crossed`` set to its slot, the index after a message that left
    its book crossed (decoded into h, bids and asks), whose restart is the sync's."""
    cdef Py_ssize_t n = kinds.shape[0], o, length, sn
    cdef const char* p
    cdef const char* e
    cdef const char* s
    cdef RunSlot* sl
    cdef int k, r
    crossed[0] = -1
    while i < n and kinds[i] == text:
        o, length = <Py_ssize_t>offsets[i], <Py_ssize_t>lengths[i]
        if o < 0 or length < 0 or o > size or length > size - o:
            return i
        e = base + o + length
        p = compact_head(base + o, e, futures, h, &s, &sn)
        if p == NULL:
            return i
        k = run_find(run, s, sn)
        if k < 0:
            return i
        sl = &run.slots[k]
        h.ps, h.qs = sl.ps, sl.qs
        if compact_body(p, e, futures, h, bids, NOGIL_PAIRS, asks, NOGIL_PAIRS) == NULL:
            return i
        r = slot_step(sl, h, bids, asks)
        if r == STEP_GAP or r == STEP_NO_ROOM:
            return i
        depth[0] += 1
        i += 1
        if r == STEP_CROSSED:
            crossed[0] = k
            return i
    return i


def on_depth_records(books, const uint8_t[::1] data not None, const uint8_t[:] kinds,
                     const uint64_t[:] offsets, const uint32_t[:] lengths, Py_ssize_t i,
                     uint8_t text, list decisions):
    """Replay's hot loop: from record i on, while records are stream messages (kind
    ``text``; payload ``data[offsets[i]:][:lengths[i]]``; ``data`` is any contiguous byte
    buffer, a WAL batch's payload view as it is), what ``books.on_message(payload)``
    does for each (a ``BinanceBooks``), the actions it returns appended to ``decisions`` as
    tuples. Depth messages the decoder reads are decoded in place and go to the sync as in
    ``on_depth``, counted as on_message counts them; any other message is handed to
    ``books.on_message``. Returns the index of the first record not consumed.

    A symbol's BookSync, ladder, counters, scales and update id are looked up once and kept
    in a table (``Run``) while only this loop runs: a stale or continuing message of a synced
    book costs no dictionary lookup, attribute access or Python int, and once its symbol is
    in the table it is done without the GIL (``run_nogil``; the books must not be used by
    another thread during the call). Before any Python code runs (a message the decoder
    declines, a gap, a crossed book, a book not synced) and when the loop ends, the update
    ids are written back to their syncs and the table emptied."""
    cdef Head h
    cdef Run run
    cdef RunSlot* sl
    cdef Py_ssize_t n = kinds.shape[0], size = data.shape[0], o, length
    cdef Py_ssize_t depth = 0
    cdef const char* base = <const char*>&data[0] if size else NULL
    cdef dict specs = books.specs
    cdef dict syncs = books.syncs
    cdef bint futures = books.futures
    cdef int k, crossed, step
    cdef int64_t* pairs = NULL      # run_nogil's bids then asks, NOGIL_PAIRS pairs each
    if offsets.shape[0] != n or lengths.shape[0] != n:
        raise ValueError(f"{n} kinds but {offsets.shape[0]} offsets and {lengths.shape[0]} "
                         f"lengths")
    if i < 0:
        raise ValueError(f"record index {i} is negative")
    memset(&run, 0, sizeof(run))
    counters = books.counters
    try:
        while True:
            if run.used and i < n:
                with nogil:
                    if pairs == NULL:
                        pairs = <int64_t*>malloc(4 * NOGIL_PAIRS * sizeof(int64_t))
                    if pairs != NULL:
                        i = run_nogil(base, size, kinds, offsets, lengths, i, text, futures,
                                      &run, pairs, pairs + 2 * NOGIL_PAIRS, &h, &crossed,
                                      &depth)
                if pairs != NULL and crossed >= 0:
                    sl = &run.slots[crossed]
                    symbol = <object>sl.symbol
                    sync = <object>sl.sync
                    event = make_event_of(symbol, &h, pairs, pairs + 2 * NOGIL_PAIRS)
                    run_flush(&run)
                    out = sync._restart("crossed", event, ())
                    if out:
                        for a in out:
                            decisions.append(tuple(a))
                    continue
            if i >= n or kinds[i] != text:
                break
            o, length = <Py_ssize_t>offsets[i], <Py_ssize_t>lengths[i]
            if o < 0 or length < 0 or o > size or length > size - o:
                raise ValueError(f"record {i} lies outside its batch's data")
            memset(&h, 0, sizeof(h))
            symbol = scan_depth(base + o, length, specs, futures, &h, &run)
            i += 1
            if symbol is None:
                run_flush(&run)
                out = books.on_message(PyBytes_FromStringAndSize(base + o, length))
            else:
                depth += 1
                k = h.slot if h.slot >= 0 else run_fill(&run, symbol, &h, syncs)
                if k < 0:
                    run_flush(&run)
                    out = to_sync(symbol, &h, syncs)
                else:
                    # to_sync's synced branch, on the table's copy of the sync
                    sl = &run.slots[k]
                    step = slot_step(sl, &h, scratch[0], scratch[1])
                    if step == STEP_NO_ROOM:
                        # grow the ladder (a negative quantity raises, as apply_pairs does)
                        (<L2Ladder>sl.book).make_room(scratch[0], h.nb, scratch[1], h.na)
                        step = slot_step(sl, &h, scratch[0], scratch[1])
                    if step == STEP_STALE or step == STEP_APPLIED:
                        continue
                    sync = <object>sl.sync
                    run_flush(&run)
                    if step == STEP_GAP:
                        out = sync.on_event(make_event(symbol, &h))   # the sync decides
                    else:   # STEP_CROSSED (make_room left room for the pairs)
                        out = sync._restart("crossed", make_event(symbol, &h), ())
            if out:
                for a in out:
                    decisions.append(tuple(a))
    finally:
        free(pairs)
        run_flush(&run)
        if depth:
            counters.messages += depth
            counters.depth += depth
    return i

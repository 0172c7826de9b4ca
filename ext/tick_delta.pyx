# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Tick-aware, reversible block transform for the write-ahead log (format version 3).

``pack(payloads, lengths)`` rearranges a block of WebSocket payloads so that zstd compresses
Kite tick data far better; ``unpack(packed, lengths)`` gives back the exact original bytes;
``unpack_ticks`` gives the Kite parser's rows of the frames without making their bytes.
It does not compress. Any bytes round-trip: payloads that are not well-formed Kite frames are
kept verbatim. State resets per call, so each block decodes on its own. The plain-Python twin
(byte-identical output) is ``shrivenq.wal.tick_delta_reference``; docs/TICK_DELTA.md has the
same specification with worked rationale.

Layout (all multi-byte header integers little-endian, u32)
---------------------------------------------------------
header, 36 bytes: ``b"TD"``, version u8 (3), flags u8 (0), n_payloads, raw_bytes, n_keys,
    n[0..4] (packets of each kind in the block).
tags: n_payloads bytes, one per payload in order: 0 = verbatim, 1 = well-formed Kite frame
    (u16 BE count, then count x (u16 BE length, packet), length one of 8/28/32/44/184, no
    trailing bytes; a 2-byte ``00 00`` is a frame of no packets).
raw: the verbatim payloads concatenated (raw_bytes bytes; each one's size comes from lengths).
ids: one key id per packet of every frame, in order, as ``idw`` byte planes (most significant
    plane first; each plane n_packets bytes), idw = bytes needed for n_keys - 1 (min 1).
    A key is (token, kind); ids are numbered by first appearance, so a packet is its key's
    first in the block iff its id equals the number of keys seen so far.
key kinds: n_keys bytes, the kind code (0..4) of each key in id order.
key tokens: n_keys u32 as 4 byte planes (MSB plane first).
key quanta: n_keys u32 as 4 byte planes: each key's quantum q, odd (an even one is an error).
    The encoder takes, for tokens of a segment that trades in lots (token & 0xFF in 2, 3, 5,
    6, 7, 12), the odd part of the gcd of the key's first packet's quantum words (quote: 2, 4,
    5, 6; full: 2, 4, 5, 6 and the 10 depth quantities; 1 if all are 0), else 1; a decoder
    only reads it.
firsts: for kind 0..4, for word w = 1..W-1: the residuals of the kind's first packets (one
    per key, in id order) as 4 byte planes of f_k bytes each (f_k = keys of kind k).
masks: for kind 0..4, for mask byte b = 0..MB-1: one byte per non-first packet of the kind
    (m_k = n_k - f_k bytes). Bit s % 8 of mask byte s // 8 says whether the residual of the
    word in slot s is non-zero; padding slots must be 0.
values: for kind 0..4, for word w = 1..W-1: the non-zero residuals of the word, in packet
    order, as 4 byte planes (count = how many masks have the word's bit set).

Kinds: code 0..4 = packet length 8, 28, 32, 44, 184; W = length / 4 big-endian u32 words,
word 0 the token (coded by the key, never as a residual).

Residual of word w = zigzag((cur[w] - pred) * m) mod 2^32, zigzag(d) = (d << 1) ^ (d >> 31)
on the signed 32-bit d, except for the rules Z, Z16 and P16; m = the inverse of the key's
quantum modulo 2^32 for the quantity words (quote: 2, 4, 5, 6; full: 2, 4, 5, 6, 12, 13, 14
and the depth quantities 16 + 3k), else 1. (Decoding multiplies by q: exact for any words,
and a change by a multiple of the lot becomes a change in lots.) ``prev`` = previous packet
of the same key in the block, ``glob`` = previous packet of the same kind (any key; pred 0 if
none), and rot16(x) = (x << 16 | x >> 16) mod 2^32. Rules, as (non-first ; first):

  Z: residual = cur[w] * m (no zigzag)           Z16: residual = rot16(cur[w]) (no zigzag)
  P16: residual = zigzag(rot16(cur[w]) - rot16(prev[w]))
  P: prev[w]      G: glob[w]      REF(a): cur[a]
  LEVEL(a): prev[w] + cur[a] - prev[a]
  TQ(v): cur[v] - prev[v] if cur[v] != prev[v] else prev[w]
  TT(v, e): cur[e] if cur[v] != prev[v] else prev[w]

  ltp (8):    1 last price P;Z
  index (28/32): 1 P;Z  2-5 high, low, open, close P;REF(1)  6 change LEVEL(1);Z
              7 (32 only) exchange time G;G
  quote (44): 1 last price P;Z  2 last qty TQ(4);Z  3 avg price P;REF(1)  4 volume P;Z
              5-6 buy/sell qty P;Z  7-10 ohlc P;REF(1)
  full (184): 1-10 as quote  11 last trade time TT(4,15);REF(15)  12 oi P;Z
              13-14 oi high/low P;REF(12)  15 exchange time G;G
              depth level k = 0..9 (bids 0-4, asks 5-9) at q = 16 + 3k:
              q quantity P;Z  q+1 price LEVEL(r);REF(r)  q+2 orders|pad P16;Z16
              with r = 1 (last price) for k = 0 and 5, else the previous level's price.

Decode order (dependencies first): quote 1,4,2,3,5..10; full 1,4,15,2,3,5..14,16..45;
others ascending.
Mask slots (word per bit, 0 = padding): ltp [1]; index [1..6] / [1..7]; quote [1..8],[9,10];
full [1..8], [9..15,0], [q0,n0,q1,n1,q2,n2,q3,n3], [q4,n4,..,q7,n7], [q8,n8,q9,n9,0,0,0,0],
[p0..p7], [p8,p9,0 x 6] where qk, pk, nk = 16+3k, 17+3k, 18+3k.
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from tick_row cimport (TickRow, fill_row, row_identity, K_LTP, K_INDEX_QUOTE, K_INDEX_FULL,
                       K_QUOTE, K_FULL, M_FULL, F_LTP, F_OHLC, F_QUOTE, F_EXCH_TS, F_FULL,
                       F_DEPTH, SEG_INDICES)
cimport numpy as cnp

from shrivenq._ext.kite_frame import TICK_DTYPE as _TICK_DTYPE

cnp.import_array()

FORMAT_VERSION = 3

cdef enum:
    NKIND = 5
    MAXW = 46
    MAXSLOT = 56
    HEADER_SIZE = 36
    FORMAT_V = 3

cdef enum:
    R_Z = 0
    R_P = 1
    R_G = 2
    R_REF = 3
    R_LEVEL = 4
    R_TQ = 5
    R_TT = 6
    R_P16 = 7
    R_Z16 = 8

cdef int KLEN[NKIND]
cdef int KW[NKIND]
cdef int MB[NKIND]
cdef int NT[NKIND][MAXW]       # non-first rule type, args
cdef int NA[NKIND][MAXW]
cdef int NB[NKIND][MAXW]
cdef int FT[NKIND][MAXW]       # first rule type, arg
cdef int FA[NKIND][MAXW]
cdef int ORD[NKIND][MAXW]
cdef int NORD[NKIND]
cdef int SLOT[NKIND][MAXSLOT]
cdef int QW[NKIND][MAXW]        # 1 for quantity words (residuals scaled by the key's quantum)
cdef int QUW[NKIND][MAXW]       # the words whose gcd gives a key's quantum
cdef int NQUW[NKIND]


def _tables():
    P, Z, G = (R_P, 0, 0), (R_Z, 0, 0), (R_G, 0, 0)
    P16, Z16 = (R_P16, 0, 0), (R_Z16, 0, 0)
    REF = lambda a: (R_REF, a, 0)
    LEVEL = lambda a: (R_LEVEL, a, 0)
    full = {1: (P, Z), 2: ((R_TQ, 4, 0), Z), 3: (P, REF(1)), 4: (P, Z), 5: (P, Z), 6: (P, Z),
            7: (P, REF(1)), 8: (P, REF(1)), 9: (P, REF(1)), 10: (P, REF(1)),
            11: ((R_TT, 4, 15), REF(15)), 12: (P, Z), 13: (P, REF(12)), 14: (P, REF(12)),
            15: (G, G)}
    qs = [16 + 3 * k for k in range(10)]
    for k, q in enumerate(qs):
        ref = 1 if k in (0, 5) else q - 2
        full[q] = (P, Z)
        full[q + 1] = (LEVEL(ref), REF(ref))
        full[q + 2] = (P16, Z16)
    index = {1: (P, Z), 2: (P, REF(1)), 3: (P, REF(1)), 4: (P, REF(1)), 5: (P, REF(1)),
             6: (LEVEL(1), Z)}
    rules = (
        {1: (P, Z)},
        index,
        {**index, 7: (G, G)},
        {1: (P, Z), 2: ((R_TQ, 4, 0), Z), 3: (P, REF(1)), 4: (P, Z), 5: (P, Z), 6: (P, Z),
         7: (P, REF(1)), 8: (P, REF(1)), 9: (P, REF(1)), 10: (P, REF(1))},
        full,
    )
    orders = (
        (1,), (1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 5, 6, 7), (1, 4, 2, 3, 5, 6, 7, 8, 9, 10),
        (1, 4, 15, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14) + tuple(range(16, 46)),
    )
    slots = (
        (1, 0, 0, 0, 0, 0, 0, 0),
        (1, 2, 3, 4, 5, 6, 0, 0),
        (1, 2, 3, 4, 5, 6, 7, 0),
        (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0, 0, 0, 0),
        (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0,
         *[w for q in qs[0:4] for w in (q, q + 2)],
         *[w for q in qs[4:8] for w in (q, q + 2)],
         *[w for q in qs[8:10] for w in (q, q + 2)], 0, 0, 0, 0,
         *[q + 1 for q in qs[0:8]],
         *[q + 1 for q in qs[8:10]], 0, 0, 0, 0, 0, 0),
    )
    quantity = ((), (), (), (2, 4, 5, 6), (2, 4, 5, 6, 12, 13, 14, *qs))
    quantum = ((), (), (), (2, 4, 5, 6), (2, 4, 5, 6, *qs))
    return (8, 28, 32, 44, 184), rules, orders, slots, quantity, quantum


cdef void _init_tables():
    lens, rules, orders, slots, quantity, quantum = _tables()
    cdef int k, w, j
    for k in range(NKIND):
        KLEN[k] = lens[k]
        KW[k] = lens[k] // 4
        MB[k] = len(slots[k]) // 8
        assert sorted(rules[k]) == list(range(1, KW[k]))
        assert sorted(orders[k]) == list(range(1, KW[k]))
        assert sorted(x for x in slots[k] if x) == list(range(1, KW[k]))
        for w in range(MAXW):
            NT[k][w] = NA[k][w] = NB[k][w] = FT[k][w] = FA[k][w] = 0
            ORD[k][w] = 0
        for w, (nr, fr) in rules[k].items():
            NT[k][w], NA[k][w], NB[k][w] = nr
            FT[k][w], FA[k][w] = fr[0], fr[1]
        NORD[k] = len(orders[k])
        for j in range(NORD[k]):
            ORD[k][j] = orders[k][j]
        for j in range(MAXSLOT):
            SLOT[k][j] = slots[k][j] if j < len(slots[k]) else 0
        for w in range(MAXW):
            QW[k][w] = 1 if w in quantity[k] else 0
        NQUW[k] = len(quantum[k])
        for j in range(NQUW[k]):
            QUW[k][j] = quantum[k][j]

_init_tables()


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include "small_zero.h"
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define TD_LE_GNUC 1
    #endif
    #if defined(__GNUC__)
    #define TD_ALWAYS_INLINE __attribute__((always_inline)) inline
    #define TD_ALIGN16 __attribute__((aligned(16)))
    #else
    #define TD_ALWAYS_INLINE inline
    #define TD_ALIGN16
    #endif
    static inline uint32_t td_be32(const uint8_t* p) {
    #ifdef TD_LE_GNUC
        uint32_t v; memcpy(&v, p, 4); return __builtin_bswap32(v);
    #else
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    #endif
    }
    static inline void td_put32(uint8_t* p, uint32_t v) {
    #ifdef TD_LE_GNUC
        v = __builtin_bswap32(v); memcpy(p, &v, 4);
    #else
        p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8);
        p[3] = (uint8_t)v;
    #endif
    }
    /* Byte swaps of 4 words at a time with plain SSE2 (no pshufb needed); portable loops
       elsewhere. */
    #ifdef TD_LE_GNUC
    typedef uint32_t td_v4 __attribute__((vector_size(16)));
    static inline td_v4 td_bswap4(td_v4 x) {
        return (x << 24) | ((x << 8) & 0x00ff0000u) | ((x >> 8) & 0x0000ff00u) | (x >> 24);
    }
    #endif
    static inline void td_load_be(uint32_t* dst, const uint8_t* src, int n) {
        int w = 0;
    #ifdef TD_LE_GNUC
        td_v4 v;
        for (; w + 4 <= n; w += 4) {
            memcpy(&v, src + 4 * w, 16);
            v = td_bswap4(v);
            memcpy(dst + w, &v, 16);
        }
    #endif
        for (; w < n; w++) dst[w] = td_be32(src + 4 * w);
    }
    static inline void td_store_be(uint8_t* dst, const uint32_t* src, int n) {
        int w = 0;
    #ifdef TD_LE_GNUC
        td_v4 v;
        for (; w + 4 <= n; w += 4) {
            memcpy(&v, src + w, 16);
            v = td_bswap4(v);
            memcpy(dst + 4 * w, &v, 16);
        }
    #endif
        for (; w < n; w++) td_put32(dst + 4 * w, src[w]);
    }
    static inline int td_ctz64(uint64_t m) {    /* m != 0 */
    #if defined(__GNUC__)
        return __builtin_ctzll(m);
    #else
        int n = 0;
        while (!(m & 1)) { m >>= 1; n++; }
        return n;
    #endif
    }
    static inline uint32_t td_rot16(uint32_t x) { return (x << 16) | (x >> 16); }
    static inline uint32_t td_zz(uint32_t d) { return (d << 1) ^ (uint32_t)((int32_t)d >> 31); }
    static inline uint32_t td_unzz(uint32_t z) { return (z >> 1) ^ (0u - (z & 1u)); }
    /* Full packets are stored with one pshufb per 4 words where the CPU has SSSE3 (checked at
       import: td_simd); the SSE2 swap above costs about ten instructions a vector. Only called
       from functions compiled for SSSE3. */
    #if defined(TD_LE_GNUC) && defined(__x86_64__)
    #define TD_SSSE3 1
    #include <immintrin.h>
    /* TD_FULL_SHUF[i]: the pshufb control storing words 4i..4i+3 of a decoded full packet
       big-endian, rotating the orders|pad words (18, 21, ..., 45) back by 16 on the way. */
    static uint8_t TD_FULL_SHUF[11][16];
    static int td_simd = 0;
    static int td_simd_init(void) {
        int i, j, w, b;
        for (i = 0; i < 11; i++)
            for (j = 0; j < 4; j++) {
                w = 4 * i + j;
                for (b = 0; b < 4; b++)     /* byte b of the big-endian word */
                    TD_FULL_SHUF[i][4 * j + b] = (uint8_t)(4 * j + (
                        w >= 18 && w % 3 == 0 ? (b ^ 1) : 3 - b));
            }
        __builtin_cpu_init();
        td_simd = __builtin_cpu_supports("ssse3") ? 1 : 0;
        return td_simd;
    }
    __attribute__((target("ssse3")))
    static inline void td_store_full_simd(uint8_t* out, const uint32_t* c) {
        int i;
        for (i = 0; i < 11; i++)
            _mm_storeu_si128((__m128i*)(out + 16 * i),
                             _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(c + 4 * i)),
                                              _mm_loadu_si128((const __m128i*)TD_FULL_SHUF[i])));
        td_put32(out + 176, c[44]);
        td_put32(out + 180, td_rot16(c[45]));
    }
    #else
    static int td_simd = 0;
    static int td_simd_init(void) { return 0; }
    #define td_store_full_simd(out, c) do { } while (0)   /* never called: td_simd is 0 */
    #endif

    /* bits[b] = how many of the m bytes at p have bit b set: the values each mask slot
       of a kind holds. 16 bytes at a time in byte lanes (GCC vectors: SSE2 on x86-64),
       each lane summed before it can overflow (255 steps). */
    static void td_bit_counts(const uint8_t* p, uint64_t m, uint64_t* bits) {
        uint64_t i = 0;
        int b, lane;
        for (b = 0; b < 8; b++) bits[b] = 0;
    #ifdef TD_LE_GNUC
        typedef uint8_t td_b16 __attribute__((vector_size(16)));
        while (i + 16 <= m) {
            td_b16 acc[8], v;
            uint64_t stop = m - i > 16 * 255 ? i + 16 * 255 : m;
            for (b = 0; b < 8; b++) acc[b] = (td_b16){0};
            for (; i + 16 <= stop; i += 16) {
                memcpy(&v, p + i, 16);
                for (b = 0; b < 8; b++) acc[b] += (v >> b) & 1;
            }
            for (b = 0; b < 8; b++)
                for (lane = 0; lane < 16; lane++) bits[b] += acc[b][lane];
        }
    #endif
        for (; i < m; i++)
            for (b = 0; b < 8; b++) bits[b] += (p[i] >> b) & 1;
    }

    /* n u32 from 4 byte planes (MSB plane first), un-zigzagged if ``unzz``: 16 at a time by
       interleaving the planes' bytes (SSE2, every x86-64 has it), the rest one by one. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    static void td_from_planes(uint32_t* v, const uint8_t* o, int64_t n, int unzz) {
        const uint8_t *o1 = o + n, *o2 = o + 2 * n, *o3 = o + 3 * n;
        int64_t i = 0;
        uint32_t z;
    #if defined(__SSE2__)
        const __m128i one = _mm_set1_epi32(1), zero = _mm_setzero_si128();
        for (; i + 16 <= n; i += 16) {
            __m128i b0 = _mm_loadu_si128((const __m128i*)(o + i));
            __m128i b1 = _mm_loadu_si128((const __m128i*)(o1 + i));
            __m128i b2 = _mm_loadu_si128((const __m128i*)(o2 + i));
            __m128i b3 = _mm_loadu_si128((const __m128i*)(o3 + i));
            __m128i lo_l = _mm_unpacklo_epi8(b3, b2), lo_h = _mm_unpackhi_epi8(b3, b2);
            __m128i hi_l = _mm_unpacklo_epi8(b1, b0), hi_h = _mm_unpackhi_epi8(b1, b0);
            __m128i w[4];
            int j;
            w[0] = _mm_unpacklo_epi16(lo_l, hi_l);
            w[1] = _mm_unpackhi_epi16(lo_l, hi_l);
            w[2] = _mm_unpacklo_epi16(lo_h, hi_h);
            w[3] = _mm_unpackhi_epi16(lo_h, hi_h);
            for (j = 0; j < 4; j++) {
                __m128i x = w[j];
                if (unzz)
                    x = _mm_xor_si128(_mm_srli_epi32(x, 1),
                                      _mm_sub_epi32(zero, _mm_and_si128(x, one)));
                _mm_storeu_si128((__m128i*)(v + i + 4 * j), x);
            }
        }
    #endif
        for (; i < n; i++) {
            z = ((uint32_t)o[i] << 24) | ((uint32_t)o1[i] << 16) | ((uint32_t)o2[i] << 8) | o3[i];
            v[i] = unzz ? td_unzz(z) : z;
        }
    }

    /* Mask slots of a full packet: the word of each bit, 0 = padding. */
    static const uint8_t TD_FULL_SLOTS[56] = {
        1, 2, 3, 4, 5, 6, 7, 8,
        9, 10, 11, 12, 13, 14, 15, 0,
        16, 18, 19, 21, 22, 24, 25, 27,
        28, 30, 31, 33, 34, 36, 37, 39,
        40, 42, 43, 45, 0, 0, 0, 0,
        17, 20, 23, 26, 29, 32, 35, 38,
        41, 44, 0, 0, 0, 0, 0, 0};

    /* Residuals (zigzagged) of a full packet ``pk`` whose key's previous packet is ``pv``;
       ``gl`` the previous full packet of any key (NULL if none). r[1..45]. */
    static const uint8_t TD_FULL_QTY[17] = {2, 4, 5, 6, 12, 13, 14,
                                            16, 19, 22, 25, 28, 31, 34, 37, 40, 43};

    static inline void td_full_next_res(const uint8_t* pk, uint32_t* p,
                                        const uint8_t* gl, uint32_t* r, uint32_t inv) {
        uint32_t c[46], d[46];
        int w, k;
        td_load_be(c, pk, 46);
        for (w = 0; w < 46; w++) d[w] = c[w] - p[w];
        for (k = 0; k < 10; k++) {          /* orders|pad: on the word rotated by 16 */
            int nw = 18 + 3 * k;
            d[nw] = td_rot16(c[nw]) - td_rot16(p[nw]);
        }
        for (k = 9; k >= 0; k--) {          /* depth price: change of the gap to the level before */
            int pw = 17 + 3 * k, ref = (k == 0 || k == 5) ? 1 : pw - 3;
            d[pw] -= d[ref];
        }
        uint32_t vd = c[4] - p[4];
        int traded = vd != 0;
        d[2] = traded ? c[2] - vd : d[2];
        d[11] = traded ? c[11] - c[15] : d[11];
        d[15] = c[15] - (gl ? td_be32(gl + 60) : 0u);
        for (k = 0; k < 17; k++) d[TD_FULL_QTY[k]] *= inv;   /* quantities in lots */
        for (w = 1; w < 46; w++) r[w] = td_zz(d[w]);
        memcpy(p, c, sizeof(c));            /* the key's previous packet from now on */
    }

    /* Residuals of a key's first full packet ``pk`` into column w-1 (stride ``cap``) at
       ``idx`` of ``first``; ``inv`` the inverse of the key's quantum. */
    static inline void td_full_first_res(const uint8_t* pk, const uint8_t* gl, uint32_t inv,
                                         uint32_t* first, int64_t cap, int64_t idx) {
        uint32_t c[46], r[46];
        int w, k;
        td_load_be(c, pk, 46);
        r[1] = c[1];
        r[2] = c[2] * inv;
        r[3] = td_zz(c[3] - c[1]);
        r[4] = c[4] * inv;
        r[5] = c[5] * inv;
        r[6] = c[6] * inv;
        for (w = 7; w <= 10; w++) r[w] = td_zz(c[w] - c[1]);
        r[11] = td_zz(c[11] - c[15]);
        r[12] = c[12] * inv;
        r[13] = td_zz((c[13] - c[12]) * inv);
        r[14] = td_zz((c[14] - c[12]) * inv);
        r[15] = td_zz(c[15] - (gl ? td_be32(gl + 60) : 0u));
        for (k = 0; k < 10; k++) {
            int q = 16 + 3 * k, ref = (k == 0 || k == 5) ? 1 : q - 2;
            r[q] = c[q] * inv;
            r[q + 1] = td_zz(c[q + 1] - c[ref]);
            r[q + 2] = td_rot16(c[q + 2]);
        }
        for (w = 1; w < 46; w++) first[(w - 1) * cap + idx] = r[w];
    }

    /* Decode a key's first full packet: residual of word w at src + (w-1)*4*cap (4 planes of
       stride cap); ``tok`` its token, ``q`` its quantum; ``c`` the key's state (orders|pad
       words rotated, as td_full_next_dec_body keeps them). */
    static inline void td_full_first_dec(uint8_t* out, const uint8_t* src, int64_t cap,
                                         const uint8_t* gl, uint32_t tok, uint32_t q,
                                         uint32_t* c) {
        uint32_t r[46];
        int w, k;
        for (w = 1; w < 46; w++) {
            const uint8_t* s = src + (int64_t)(w - 1) * 4 * cap;
            r[w] = ((uint32_t)s[0] << 24) | ((uint32_t)s[cap] << 16)
                 | ((uint32_t)s[2 * cap] << 8) | s[3 * cap];
        }
        c[0] = tok;
        c[1] = r[1];
        c[2] = r[2] * q;
        c[3] = td_unzz(r[3]) + c[1];
        c[4] = r[4] * q;
        c[5] = r[5] * q;
        c[6] = r[6] * q;
        for (w = 7; w <= 10; w++) c[w] = td_unzz(r[w]) + c[1];
        c[12] = r[12] * q;
        c[13] = td_unzz(r[13]) * q + c[12];
        c[14] = td_unzz(r[14]) * q + c[12];
        c[15] = td_unzz(r[15]) + (gl ? td_be32(gl + 60) : 0u);
        c[11] = td_unzz(r[11]) + c[15];
        for (k = 0; k < 10; k++) {
            int qw = 16 + 3 * k, ref = (k == 0 || k == 5) ? 1 : qw - 2;
            c[qw] = r[qw] * q;
            c[qw + 1] = td_unzz(r[qw + 1]) + c[ref];
            c[qw + 2] = td_rot16(r[qw + 2]);
        }
        td_store_be(out, c, 46);
        for (k = 0; k < 10; k++) c[18 + 3 * k] = r[18 + 3 * k];   /* state: rotated, see below */
    }

    /* Quote packets (44 bytes, 11 words): the same, for words 1..10 (mask bit w-1). */
    static inline void td_quote_next_res(const uint8_t* pk, uint32_t* p, uint32_t* r,
                                         uint32_t inv) {
        uint32_t c[11], d[11];
        int w;
        td_load_be(c, pk, 11);
        for (w = 0; w < 11; w++) d[w] = c[w] - p[w];
        uint32_t vd = d[4];
        d[2] = vd != 0 ? c[2] - vd : d[2];
        d[2] *= inv; d[4] *= inv; d[5] *= inv; d[6] *= inv;
        for (w = 1; w < 11; w++) r[w] = td_zz(d[w]);
        memcpy(p, c, sizeof(c));
    }

    static inline void td_quote_first_res(const uint8_t* pk, uint32_t inv, uint32_t* first,
                                          int64_t cap, int64_t idx) {
        uint32_t c[11], r[11];
        int w;
        td_load_be(c, pk, 11);
        r[1] = c[1];
        r[2] = c[2] * inv;
        r[3] = td_zz(c[3] - c[1]);
        r[4] = c[4] * inv;
        r[5] = c[5] * inv;
        r[6] = c[6] * inv;
        for (w = 7; w <= 10; w++) r[w] = td_zz(c[w] - c[1]);
        for (w = 1; w < 11; w++) first[(w - 1) * cap + idx] = r[w];
    }

    static inline void td_quote_scatter(const uint32_t* r, uint32_t** wp, uint8_t* mk) {
        uint32_t m = 0;
        int w;
        #pragma GCC unroll 10
        for (w = 1; w < 11; w++) {
            uint32_t v = r[w], nz = v != 0;
            uint32_t* q = wp[w];
            *q = v;
            wp[w] = q + nz;
            m |= nz << (w - 1);
        }
        mk[0] = (uint8_t)m;
        mk[1] = (uint8_t)(m >> 8);
    }

    static inline void td_quote_next_dec(uint8_t* out, uint32_t* st, const uint8_t* mk,
                                         const uint32_t** rp, uint32_t q) {
        uint32_t c[11], d[11];
        uint32_t m = mk[0] | ((uint32_t)mk[1] << 8);
        int w;
        d[0] = 0;
        #pragma GCC unroll 10
        for (w = 1; w < 11; w++) {
            uint32_t bit = (m >> (w - 1)) & 1u;
            const uint32_t* x = rp[w];
            d[w] = *x & (0u - bit);          /* columns hold changes, un-zigzagged */
            rp[w] = x + bit;
        }
        d[2] *= q; d[4] *= q; d[5] *= q; d[6] *= q;
        for (w = 0; w < 11; w++) c[w] = st[w] + d[w];
        uint32_t vd = c[4] - st[4];
        c[2] = vd != 0 ? d[2] + vd : c[2];
        td_store_be(out, c, 11);
        memcpy(st, c, sizeof(c));
    }

    static inline void td_quote_first_dec(uint8_t* out, const uint8_t* src, int64_t cap,
                                          uint32_t tok, uint32_t q, uint32_t* c) {
        uint32_t r[11];
        int w;
        for (w = 1; w < 11; w++) {
            const uint8_t* s = src + (int64_t)(w - 1) * 4 * cap;
            r[w] = ((uint32_t)s[0] << 24) | ((uint32_t)s[cap] << 16)
                 | ((uint32_t)s[2 * cap] << 8) | s[3 * cap];
        }
        c[0] = tok;
        c[1] = r[1];
        c[2] = r[2] * q;
        c[3] = td_unzz(r[3]) + c[1];
        c[4] = r[4] * q;
        c[5] = r[5] * q;
        c[6] = r[6] * q;
        for (w = 7; w <= 10; w++) c[w] = td_unzz(r[w]) + c[1];
        td_store_be(out, c, 11);
    }

    /* Store r[w] of every slot at its column's write pointer wp[w], which moves on only
       past non-zero residuals; set the mask bits. */
    static inline void td_full_scatter(const uint32_t* r, uint32_t** wp, uint8_t* mk) {
        int s;
        uint64_t m = 0;
        #pragma GCC unroll 56
        for (s = 0; s < 56; s++) {
            int w = TD_FULL_SLOTS[s];
            if (!w) continue;
            uint32_t v = r[w];
            uint32_t nz = v != 0;
            uint32_t* q = wp[w];
            *q = v;
            wp[w] = q + nz;
            m |= (uint64_t)nz << s;
        }
        for (s = 0; s < 7; s++) mk[s] = (uint8_t)(m >> (8 * s));
    }

    /* The mask slots (bits) of the quantity words, which are multiplied by the key's
       quantum: 2, 4, 5, 6 (bits 1, 3, 4, 5), 12, 13, 14 (bits 11..13) and the depth
       quantities q0 .. q9 (bits 16, 18, .., 34), as TD_FULL_SLOTS places them. */
    #define TD_FULL_QTY_BITS (0x3AULL | (0x7ULL << 11) | 0x0000000555550000ULL)

    /* A full packet's 7 mask bytes (byte s at bits 8s of ``raw``, td_full_masks64) as the
       bits of its set residuals: the quantity words' in *mq, the others returned. */
    static TD_ALWAYS_INLINE uint64_t td_full_mask(uint64_t raw, uint64_t* mq) {
        uint64_t m = raw & 0x0003ff0fffff7fffULL;   /* padding bits (rejected earlier) never count */
        *mq = m & TD_FULL_QTY_BITS;
        return m & ~TD_FULL_QTY_BITS;
    }

    /* The full kind's mask bytes, stored as 7 planes of ``m`` bytes (plane s holds byte s of
       every non-first packet's mask), as one u64 a packet (byte s at bits 8s): a packet's
       mask is then one load, not seven strided ones. 16 packets at a time by interleaving
       the planes (SSE2, every x86-64 has it), the rest one by one. */
    static void td_full_masks64(uint64_t* out, const uint8_t* planes, uint64_t m) {
        uint64_t i = 0;
        int s;
    #if defined(__SSE2__) && defined(TD_LE_GNUC)
        const __m128i zero = _mm_setzero_si128();
        for (; i + 16 <= m; i += 16) {
            __m128i p[8], a[8], b[8];
            int j;
            for (j = 0; j < 7; j++) p[j] = _mm_loadu_si128((const __m128i*)(planes + j * m + i));
            p[7] = zero;
            for (j = 0; j < 4; j++) {       /* bytes (2j, 2j+1) of packets 0..7 and 8..15 */
                a[2 * j] = _mm_unpacklo_epi8(p[2 * j], p[2 * j + 1]);
                a[2 * j + 1] = _mm_unpackhi_epi8(p[2 * j], p[2 * j + 1]);
            }
            for (j = 0; j < 2; j++) {       /* bytes 0..3 (j = 0) and 4..7 (j = 1) */
                b[4 * j + 0] = _mm_unpacklo_epi16(a[4 * j + 0], a[4 * j + 2]);   /* packets 0..3 */
                b[4 * j + 1] = _mm_unpackhi_epi16(a[4 * j + 0], a[4 * j + 2]);   /* 4..7 */
                b[4 * j + 2] = _mm_unpacklo_epi16(a[4 * j + 1], a[4 * j + 3]);   /* 8..11 */
                b[4 * j + 3] = _mm_unpackhi_epi16(a[4 * j + 1], a[4 * j + 3]);   /* 12..15 */
            }
            for (j = 0; j < 4; j++) {       /* packets 4j..4j+3: low and high halves joined */
                _mm_storeu_si128((__m128i*)(out + i + 4 * j), _mm_unpacklo_epi32(b[j], b[4 + j]));
                _mm_storeu_si128((__m128i*)(out + i + 4 * j + 2), _mm_unpackhi_epi32(b[j], b[4 + j]));
            }
        }
    #endif
        for (; i < m; i++) {
            uint64_t x = 0;
            for (s = 0; s < 7; s++) x |= (uint64_t)planes[s * m + i] << (8 * s);
            out[i] = x;
        }
    }

    /* Decode a non-first full packet. ``mk`` its first mask byte, the other 6 at ``ms``
       apart; *rp[w] the change coded by the next non-zero residual of word w (columns
       un-zigzagged, padded by one). ``st`` the key's decoded words, each orders|pad word
       kept rotated by 16 as its residual is taken, so that one add per word decodes the
       packet. ``out``: the packet big-endian (``simd`` 1: pshufb store, 0: portable).
       Inlined into the two entry points below. */
    static TD_ALWAYS_INLINE void td_full_next_dec_body(uint8_t* out, uint32_t* st,
                                                       const uint8_t* gl, uint64_t mraw,
                                                       const uint32_t** rp,
                                                       uint32_t q, int simd) {
        uint32_t d[48] TD_ALIGN16;
        uint32_t c[48] TD_ALIGN16;
        int w, k;
        uint64_t m, mq;
        m = td_full_mask(mraw, &mq);
        sq_zero(d, sizeof(d));
        while (m) {                         /* only the set bits: most residuals are zero */
            int w2 = TD_FULL_SLOTS[td_ctz64(m)];
            m &= m - 1;
            d[w2] = *rp[w2]++;
        }
        while (mq) {                        /* quantities, in lots: times the quantum */
            int w2 = TD_FULL_SLOTS[td_ctz64(mq)];
            mq &= mq - 1;
            d[w2] = *rp[w2]++ * q;
        }
        for (k = 0; k < 10; k++) {          /* depth price: change of the gap to the level before */
            int pw = 17 + 3 * k, ref = (k == 0 || k == 5) ? 1 : pw - 3;
            d[pw] += d[ref];
        }
    #ifdef TD_LE_GNUC
        for (w = 0; w < 44; w += 4) {
            td_v4 x, y;
            memcpy(&x, st + w, 16);
            memcpy(&y, d + w, 16);
            x += y;
            memcpy(c + w, &x, 16);
        }
        c[44] = st[44] + d[44];
        c[45] = st[45] + d[45];
    #else
        for (w = 0; w < 46; w++) c[w] = st[w] + d[w];
    #endif
        c[15] = d[15] + (gl ? td_be32(gl + 60) : 0u);
        if (d[4] != 0) {                    /* traded: volume moved */
            c[2] = d[2] + d[4];
            c[11] = d[11] + c[15];
        }
        memcpy(st, c, 46 * 4);
        if (simd) {
            td_store_full_simd(out, c);
        } else {
            for (k = 0; k < 10; k++) c[18 + 3 * k] = td_rot16(c[18 + 3 * k]);
            td_store_be(out, c, 46);
        }
    }
    static void td_full_next_dec(uint8_t* out, uint32_t* st, const uint8_t* gl,
                                 uint64_t mraw, const uint32_t** rp, uint32_t q) {
        td_full_next_dec_body(out, st, gl, mraw, rp, q, 0);
    }

    /* unpack_ticks keeps a full key's state as the image of its parsed row (TickRow, 180
       bytes: words 0..15 as the packet's, the change (0), the bid quantities, bid prices,
       ask quantities, ask prices (words 17..36), the ten orders as u16 (from word 37), the
       constant tail (from word 42)), then at word 48 the ten orders|pad words (rotated by
       16, as above), then at word 58 the residuals that are not plain changes (last price,
       last quantity, volume, last trade time, exchange time, the ten depth prices), zero
       between packets. A packet's row is then a copy of the row image. kite_frame's
       TICK_DTYPE fixes the layout; the offsets are checked at import. */
    #define TD_ROW_ORDERS 48
    #define TD_ROW_SPECIALS 58
    #define TD_ROW_STATE 76
    /* Where the residual of word w goes: a plain change is added to the row image. */
    static const uint8_t TD_ROW_DEST[46] = {
        0, 58, 59, 3, 60, 5, 6, 7, 8, 9, 10, 61, 12, 13, 14, 62,
        17, 63, 48, 18, 64, 49, 19, 65, 50, 20, 66, 51, 21, 67, 52,
        27, 68, 53, 28, 69, 54, 29, 70, 55, 30, 71, 56, 31, 72, 57};

    /* The row image word each mask slot's residual goes to (TD_ROW_DEST of its word; 0 for
       padding slots, which never reach it), filled at import. */
    static uint8_t TD_ROW_DEST_OF_SLOT[56];
    /* The depth price slots p0..p9: without them every depth price moves with the last price. */
    #define TD_FULL_PRICE_BITS (0x3FFULL << 40)
    static int td_row_init(void) {
        int s, seen[46] = {0};
        for (s = 0; s < 56; s++) {
            TD_ROW_DEST_OF_SLOT[s] = TD_FULL_SLOTS[s] ? TD_ROW_DEST[TD_FULL_SLOTS[s]] : 0;
            seen[TD_FULL_SLOTS[s]]++;
        }
        for (s = 1; s < 46; s++)            /* each word in exactly one slot: see below */
            if (seen[s] != 1) return -1;
        return 0;
    }
    /* unpack_ticks' read pointers of the full kind's columns, by mask slot (``rp`` by word):
       a set bit then finds its column without looking up its word. Each slot's pointer is
       its word's column (td_row_init checks that no word has two slots), and it is the one
       that moves: the full kind's ``rp`` stays at the columns' heads. */
    static void td_full_slot_pointers(const uint32_t** rps, const uint32_t* const* rp) {
        int s;
        for (s = 0; s < 56; s++) rps[s] = TD_FULL_SLOTS[s] ? rp[TD_FULL_SLOTS[s]] : NULL;
    }

    /* Decode a non-first full packet into the key's row state ``st``; ``gl_ts`` the
       exchange time of the block's previous full packet (0 if none); ``rps`` the read
       pointers by slot (td_full_slot_pointers). */
    static void td_full_next_row(uint32_t* st, uint32_t gl_ts, uint64_t mraw,
                                 const uint32_t** rps, uint32_t q) {
        uint32_t* sp = st + TD_ROW_SPECIALS;
        uint64_t m, mq, prices;
        uint32_t acc, ts;
        int k;
        m = td_full_mask(mraw, &mq);
        prices = m & TD_FULL_PRICE_BITS;
        while (m) {                         /* only the set bits: most residuals are zero */
            int s = td_ctz64(m);
            m &= m - 1;
            st[TD_ROW_DEST_OF_SLOT[s]] += *rps[s]++;
        }
        while (mq) {                        /* quantities, in lots: times the quantum */
            int s = td_ctz64(mq);
            mq &= mq - 1;
            st[TD_ROW_DEST_OF_SLOT[s]] += *rps[s]++ * q;
        }
        st[1] += sp[0];                     /* last price */
        st[4] += sp[2];                     /* volume */
        ts = sp[4] + gl_ts;                 /* exchange time: G */
        st[15] = ts;
        if (sp[2] != 0) {                   /* traded: TQ and TT take the new values */
            st[2] = sp[1] + sp[2];
            st[11] = sp[3] + ts;
        } else {
            st[2] += sp[1];
            st[11] += sp[3];
        }
        /* depth price: its residual is the change of the gap to the level before */
        if (prices) {
            acc = sp[0];
            for (k = 0; k < 5; k++) { acc += sp[5 + k]; st[22 + k] += acc; }
            acc = sp[0];
            for (k = 0; k < 5; k++) { acc += sp[10 + k]; st[32 + k] += acc; }
        } else if (sp[0] != 0) {            /* the gaps held: the book moved with the price */
            acc = sp[0];
            for (k = 0; k < 5; k++) { st[22 + k] += acc; st[32 + k] += acc; }
        }
        for (k = 0; k < 10; k++) ((uint16_t*)(st + 37))[k] = (uint16_t)st[TD_ROW_ORDERS + k];
        sq_zero(sp, 16 * 4);
    }

    /* unpack_ticks: a key's first full packet into ``out`` (as unpack does) and its row
       state (the tail, the words after the orders, is the caller's). */
    static void td_full_first_row(uint8_t* out, const uint8_t* src, int64_t cap,
                                  const uint8_t* gl, uint32_t tok, uint32_t q, uint32_t* st) {
        uint32_t pc[46];
        int k;
        td_full_first_dec(out, src, cap, gl, tok, q, pc);
        memcpy(st, pc, 16 * 4);
        st[16] = 0;
        for (k = 0; k < 5; k++) {
            st[17 + k] = pc[16 + 3 * k];
            st[22 + k] = pc[17 + 3 * k];
            st[27 + k] = pc[31 + 3 * k];
            st[32 + k] = pc[32 + 3 * k];
        }
        for (k = 0; k < 10; k++) {
            st[TD_ROW_ORDERS + k] = pc[18 + 3 * k];
            ((uint16_t*)(st + 37))[k] = (uint16_t)pc[18 + 3 * k];
        }
        memset(st + TD_ROW_SPECIALS, 0, (TD_ROW_STATE - TD_ROW_SPECIALS) * 4);
    }
    #ifdef TD_SSSE3
    __attribute__((target("ssse3")))
    static void td_full_next_dec_ssse3(uint8_t* out, uint32_t* st, const uint8_t* gl,
                                       uint64_t mraw, const uint32_t** rp, uint32_t q) {
        td_full_next_dec_body(out, st, gl, mraw, rp, q, 1);
    }
    #else
    #define td_full_next_dec_ssse3 td_full_next_dec    /* never chosen: td_simd is 0 */
    #endif
    """
    uint32_t td_be32(const uint8_t* p) noexcept nogil
    void td_put32(uint8_t* p, uint32_t v) noexcept nogil
    uint32_t td_zz(uint32_t d) noexcept nogil
    uint32_t td_unzz(uint32_t z) noexcept nogil
    void td_full_first_res(const uint8_t* pk, const uint8_t* gl, uint32_t inv,
                           uint32_t* first, int64_t cap, int64_t idx) noexcept nogil
    void td_full_first_dec(uint8_t* out, const uint8_t* src, int64_t cap,
                           const uint8_t* gl, uint32_t tok, uint32_t q,
                           uint32_t* c) noexcept nogil
    void td_full_next_res(const uint8_t* pk, uint32_t* p, const uint8_t* gl,
                          uint32_t* r, uint32_t inv) noexcept nogil
    void td_full_scatter(const uint32_t* r, uint32_t** wp, uint8_t* mk) noexcept nogil
    void td_quote_next_res(const uint8_t* pk, uint32_t* p, uint32_t* r,
                           uint32_t inv) noexcept nogil
    void td_quote_first_res(const uint8_t* pk, uint32_t inv, uint32_t* first,
                            int64_t cap, int64_t idx) noexcept nogil
    void td_quote_scatter(const uint32_t* r, uint32_t** wp, uint8_t* mk) noexcept nogil
    void td_quote_next_dec(uint8_t* out, uint32_t* st, const uint8_t* mk,
                           const uint32_t** rp, uint32_t q) noexcept nogil
    void td_quote_first_dec(uint8_t* out, const uint8_t* src, int64_t cap,
                            uint32_t tok, uint32_t q, uint32_t* c) noexcept nogil
    void td_full_next_dec(uint8_t* out, uint32_t* st, const uint8_t* gl, uint64_t mraw,
                          const uint32_t** rp, uint32_t q) noexcept nogil
    void td_full_first_row(uint8_t* out, const uint8_t* src, int64_t cap, const uint8_t* gl,
                           uint32_t tok, uint32_t q, uint32_t* st) noexcept nogil
    void td_full_next_row(uint32_t* st, uint32_t gl_ts, uint64_t mraw,
                          const uint32_t** rps, uint32_t q) noexcept nogil
    void td_full_masks64(uint64_t* out, const uint8_t* planes, uint64_t m) noexcept nogil
    void td_full_slot_pointers(const uint32_t** rps, const uint32_t** rp) noexcept nogil
    int td_row_init()
    void td_from_planes(uint32_t* v, const uint8_t* o, int64_t n, int unzz) noexcept nogil
    void td_bit_counts(const uint8_t* p, uint64_t m, uint64_t* bits) noexcept nogil
    enum: TD_ROW_STATE
    void td_full_next_dec_ssse3(uint8_t* out, uint32_t* st, const uint8_t* gl,
                                uint64_t mraw, const uint32_t** rp, uint32_t q) noexcept nogil
    int td_simd
    int td_simd_init()

cdef int _simd_available = td_simd_init()
if td_row_init() != 0:
    raise ImportError("tick_delta: a full packet's word has no mask slot, or two")


def _use_simd(bint on):
    """Tests only: decode full packets with the SSSE3 store (when this host has it) or the
    portable one, so that both are held to the twin on any host. Returns whether SSSE3 is in
    use."""
    global td_simd
    td_simd = 1 if (on and _simd_available) else 0
    return bool(td_simd)


cdef inline uint32_t be32(const uint8_t* p) noexcept nogil:
    return td_be32(p)


cdef inline uint32_t zz(uint32_t d) noexcept nogil:
    return td_zz(d)


cdef inline uint32_t unzz(uint32_t z) noexcept nogil:
    return td_unzz(z)


cdef inline int kind_of(uint32_t plen) noexcept nogil:
    if plen == 184:
        return 4
    if plen == 44:
        return 3
    if plen == 8:
        return 0
    if plen == 28:
        return 1
    if plen == 32:
        return 2
    return -1


cdef inline int id_width(uint64_t n_keys) noexcept nogil:
    cdef int w = 1
    while w < 4 and n_keys > 0 and n_keys - 1 >= (<uint64_t>1 << (8 * w)):
        w += 1
    return w


cdef Py_ssize_t frame_packets(const uint8_t* p, Py_ssize_t n, uint64_t* per_kind) noexcept nogil:
    """Packets in ``p`` if it is a well-formed Kite frame (adding them to per_kind), else -1."""
    cdef Py_ssize_t pos = 2, i, count
    cdef uint32_t plen
    cdef int k
    cdef uint64_t local[NKIND]
    if n < 2:
        return -1
    count = (<Py_ssize_t>p[0] << 8) | p[1]
    memset(local, 0, sizeof(local))
    for i in range(count):
        if pos + 2 > n:
            return -1
        plen = (<uint32_t>p[pos] << 8) | p[pos + 1]
        k = kind_of(plen)
        if k < 0 or pos + 2 + <Py_ssize_t>plen > n:
            return -1
        local[k] += 1
        pos += 2 + plen
    if pos != n:
        return -1
    for k in range(NKIND):
        per_kind[k] += local[k]
    return count


cdef inline uint32_t rot16(uint32_t x) noexcept nogil:
    return (x << 16) | (x >> 16)


cdef inline uint32_t residual(int t, int a, int b, int w, const uint32_t* cur,
                              const uint32_t* prev, const uint8_t* glob,
                              uint32_t m) noexcept nogil:
    """Residual of word ``w`` (docs/TICK_DELTA.md, Residuals); ``m`` the inverse of the
    key's quantum for quantity words, else 1."""
    if t == R_Z:
        return cur[w] * m
    if t == R_Z16:
        return rot16(cur[w])
    if t == R_P16:
        return zz(rot16(cur[w]) - rot16(prev[w]))
    return zz((cur[w] - predict(t, a, b, w, cur, prev, glob)) * m)


cdef inline uint32_t unresidual(int t, int a, int b, int w, uint32_t r, const uint32_t* cur,
                                const uint32_t* prev, const uint8_t* glob,
                                uint32_t q) noexcept nogil:
    """Word ``w`` from its residual ``r``; ``cur`` holds the words decoded before it; ``q``
    the key's quantum for quantity words, else 1."""
    if t == R_Z:
        return r * q
    if t == R_Z16:
        return rot16(r)
    if t == R_P16:
        return rot16(rot16(prev[w]) + unzz(r))
    return unzz(r) * q + predict(t, a, b, w, cur, prev, glob)


cdef inline uint32_t gcd32(uint32_t a, uint32_t b) noexcept nogil:
    cdef uint32_t t
    while b:
        t = a % b
        a = b
        b = t
    return a


cdef inline uint32_t key_quantum(int k, const uint32_t* cur) noexcept nogil:
    """Odd part of the gcd of the QUANTUM words (1 if all are 0), for the segments that
    trade in lots (token & 0xFF: nfo 2, cds 3, bfo 5, bcd 6, mcx 7, nco 12); else 1."""
    cdef uint32_t g = 0, x, seg = cur[0] & 0xFF
    cdef int j
    if NQUW[k] == 0 or not (seg == 2 or seg == 3 or seg == 5 or seg == 6 or seg == 7
                            or seg == 12):
        return 1
    for j in range(NQUW[k]):
        x = cur[QUW[k][j]]
        if x == 0:
            continue
        if g == 0:
            g = x
        elif x % g:
            g = gcd32(g, x)
        if (g & (g - 1)) == 0:     # a power of two: the odd part is 1 whatever follows
            return 1
    if g == 0:
        return 1
    while (g & 1) == 0:
        g >>= 1
    return g


cdef inline uint32_t inverse32(uint32_t q) noexcept nogil:
    """Inverse of odd ``q`` modulo 2^32 (Newton: each step doubles the correct bits)."""
    cdef uint32_t x = q
    x *= 2 - q * x
    x *= 2 - q * x
    x *= 2 - q * x
    x *= 2 - q * x
    return x


cdef inline uint32_t predict(int t, int a, int b, int w, const uint32_t* cur,
                             const uint32_t* prev, const uint8_t* glob) noexcept nogil:
    """Predicted value of word ``w`` for the rules that zigzag a difference."""
    if t == R_P:
        return prev[w]
    if t == R_LEVEL:
        return prev[w] + cur[a] - prev[a]
    if t == R_REF:
        return cur[a]
    if t == R_G:
        return be32(glob + 4 * w) if glob != NULL else 0
    if t == R_TQ:
        return cur[a] - prev[a] if cur[a] != prev[a] else prev[w]
    # R_TT
    return cur[b] if cur[a] != prev[a] else prev[w]


cdef inline void load_words(uint32_t* dst, const uint8_t* p, int nw) noexcept nogil:
    cdef int w
    for w in range(nw):
        dst[w] = be32(p + 4 * w)


cdef void to_planes(uint8_t* o, const uint32_t* v, Py_ssize_t n) noexcept nogil:
    """``n`` u32 as 4 byte planes (MSB plane first) at ``o``."""
    cdef Py_ssize_t i
    cdef uint8_t* o1 = o + n
    cdef uint8_t* o2 = o + 2 * n
    cdef uint8_t* o3 = o + 3 * n
    cdef uint32_t x
    for i in range(n):
        x = v[i]
        o[i] = <uint8_t>(x >> 24)
        o1[i] = <uint8_t>(x >> 16)
        o2[i] = <uint8_t>(x >> 8)
        o3[i] = <uint8_t>x


cdef inline void from_planes(uint32_t* v, const uint8_t* o, Py_ssize_t n,
                             bint unzigzag=False) noexcept nogil:
    """n u32 from 4 byte planes (MSB plane first). With ``unzigzag``: a column of non-first
    residuals as the changes they code (every non-first rule zigzags), in the same pass."""
    td_from_planes(v, o, n, unzigzag)


# ---------------------------------------------------------------------------------------
# scratch memory: one buffer kept across calls (fresh pages cost more than the transform)
# ---------------------------------------------------------------------------------------

cdef uint8_t* _arena = NULL
cdef size_t _arena_cap = 0
cdef bint _arena_busy = False
cdef size_t ARENA_KEEP = 64 << 20


cdef uint8_t* arena_take(size_t need, bint* owned):
    """Scratch of ``need`` bytes (call with the GIL held). ``owned``: free it yourself."""
    global _arena, _arena_cap, _arena_busy
    need = (need + 63) & ~(<size_t>63)
    if not _arena_busy and need <= ARENA_KEEP:
        if _arena_cap < need:
            free(_arena)
            _arena = <uint8_t*>malloc(need)
            _arena_cap = need if _arena != NULL else 0
        if _arena != NULL:
            _arena_busy = True
            owned[0] = False
            return _arena
    owned[0] = True
    return <uint8_t*>malloc(need)


cdef void arena_give(uint8_t* p, bint owned):
    global _arena_busy
    if owned:
        free(p)
    elif p != NULL:
        _arena_busy = False


cdef inline void* carve(uint8_t** at, size_t size) noexcept nogil:
    cdef void* p = at[0]
    at[0] += (size + 15) & ~(<size_t>15)
    return p


cdef inline size_t carved(size_t size) noexcept nogil:
    return (size + 15) & ~(<size_t>15)


# ---------------------------------------------------------------------------------------
# pack
# ---------------------------------------------------------------------------------------

cdef struct KindBuf:
    uint32_t* first     # (W-1) columns of cap residuals (first packets)
    uint32_t* vals      # W columns of cap + 1 residuals (non-first packets; column 0 unused)
    uint8_t* masks      # MB planes of cap bytes
    uint32_t* cols[MAXW]
    uint32_t* wp[MAXW]      # write pointer of each column
    Py_ssize_t cap
    Py_ssize_t nfirst
    Py_ssize_t nnext


cdef inline uint64_t hash_key(uint64_t key) noexcept nogil:
    key *= <uint64_t>0x9E3779B97F4A7C15
    return key ^ (key >> 29)


def pack(payloads, lengths):
    """Transform a block: ``payloads`` (bytes-like) holds the records concatenated,
    ``lengths`` (C-contiguous uint32 array) each record's size. Returns the packed bytes."""
    cdef const uint8_t[::1] data = _as_bytes_view(payloads)
    cdef const uint32_t[::1] lens = _as_lengths(lengths)
    cdef Py_ssize_t n_payloads = lens.shape[0]
    cdef Py_ssize_t total = data.shape[0]
    cdef uint64_t s = 0
    cdef Py_ssize_t i
    for i in range(n_payloads):
        s += lens[i]
    if s != <uint64_t>total:
        raise ValueError(f"lengths sum to {s} but the payloads hold {total} bytes")
    cdef const uint8_t* base = &data[0] if total > 0 else <const uint8_t*>b""
    cdef uint8_t* tags = <uint8_t*>malloc(n_payloads + 1)
    if tags == NULL:
        raise MemoryError()
    cdef uint64_t n[NKIND]
    cdef uint64_t raw_bytes = 0, n_packets = 0
    cdef Py_ssize_t pos = 0, L
    memset(n, 0, sizeof(n))
    with nogil:
        for i in range(n_payloads):
            L = lens[i]
            if frame_packets(base + pos, L, n) >= 0:
                tags[i] = 1
            else:
                tags[i] = 0
                raw_bytes += L
            pos += L
    cdef int k
    for k in range(NKIND):
        n_packets += n[k]
    try:
        return _pack_body(base, &lens[0] if n_payloads else NULL, n_payloads, tags, n,
                          n_packets, raw_bytes)
    finally:
        free(tags)


cdef object _pack_body(const uint8_t* base, const uint32_t* lens, Py_ssize_t n_payloads,
                       const uint8_t* tags, uint64_t* n, uint64_t n_packets,
                       uint64_t raw_bytes):
    cdef KindBuf kb[NKIND]
    cdef int k, w, j, s, nw, pb, t
    cdef Py_ssize_t cap_hash = 16
    while cap_hash < 2 * <Py_ssize_t>n_packets + 2:
        cap_hash *= 2
    cdef size_t np1 = n_packets + 1
    cdef size_t words = 0            # host-order state of every key: at most all the words
    for k in range(NKIND):
        words += n[k] * KW[k]
    cdef size_t need = carved(cap_hash * 8) + carved(cap_hash * 4) + carved(np1 * 4) \
        + carved(np1 * sizeof(uint32_t*)) + carved(np1) + 3 * carved(np1 * 4) \
        + carved((words + 1) * 4)
    for k in range(NKIND):
        need += carved(n[k] * (KW[k] - 1) * 4) + carved((n[k] + 1) * KW[k] * 4) \
            + carved(n[k] * MB[k])
    cdef bint owned
    cdef uint8_t* arena = arena_take(need, &owned)
    if arena == NULL:
        raise MemoryError()
    cdef uint8_t* at = arena
    cdef uint64_t* hkeys = <uint64_t*>carve(&at, cap_hash * 8)
    cdef uint32_t* hids = <uint32_t*>carve(&at, cap_hash * 4)
    cdef uint32_t* ids = <uint32_t*>carve(&at, np1 * 4)
    cdef uint32_t** last = <uint32_t**>carve(&at, np1 * sizeof(uint32_t*))
    cdef uint32_t* state = <uint32_t*>carve(&at, (words + 1) * 4)
    cdef uint8_t* key_kind = <uint8_t*>carve(&at, np1)
    cdef uint32_t* key_token = <uint32_t*>carve(&at, np1 * 4)
    cdef uint32_t* key_q = <uint32_t*>carve(&at, np1 * 4)
    cdef uint32_t* key_inv = <uint32_t*>carve(&at, np1 * 4)
    memset(hkeys, 0, cap_hash * 8)
    memset(kb, 0, sizeof(kb))
    for k in range(NKIND):
        kb[k].cap = n[k]
        kb[k].first = <uint32_t*>carve(&at, n[k] * (KW[k] - 1) * 4)
        kb[k].vals = <uint32_t*>carve(&at, (n[k] + 1) * KW[k] * 4)
        kb[k].masks = <uint8_t*>carve(&at, n[k] * MB[k])
        for w in range(KW[k]):
            kb[k].cols[w] = kb[k].vals + w * (n[k] + 1)
            kb[k].wp[w] = kb[k].cols[w]
    cdef const uint8_t* glob[NKIND]
    cdef uint32_t cur[MAXW]
    cdef uint32_t res[MAXW]
    cdef uint8_t mk[8]
    cdef Py_ssize_t i, pos = 0, L, cnt, pi, q, n_keys = 0, npk = 0, idx, cap
    cdef int64_t c
    cdef uint64_t key, h
    cdef uint32_t token, r, kid, plen, inv
    cdef const uint8_t* p
    cdef const uint8_t* pk
    cdef KindBuf* b
    cdef object out = None
    cdef uint8_t* o
    cdef Py_ssize_t size
    cdef int idw
    try:
        for k in range(NKIND):
            glob[k] = NULL
        with nogil:
            for i in range(n_payloads):
                L = lens[i]
                p = base + pos
                pos += L
                if not tags[i]:
                    continue
                cnt = (<Py_ssize_t>p[0] << 8) | p[1]
                q = 2
                for pi in range(cnt):
                    plen = (<uint32_t>p[q] << 8) | p[q + 1]
                    pk = p + q + 2
                    q += 2 + plen
                    k = kind_of(plen)
                    nw = KW[k]
                    b = &kb[k]
                    token = be32(pk)
                    key = (<uint64_t>token << 3) | <uint64_t>(k + 1)
                    h = hash_key(key) & (cap_hash - 1)
                    while hkeys[h] != 0 and hkeys[h] != key:
                        h = (h + 1) & (cap_hash - 1)
                    if hkeys[h] == 0:
                        # The key's first packet in the block.
                        hkeys[h] = key
                        hids[h] = <uint32_t>n_keys
                        kid = <uint32_t>n_keys
                        key_kind[n_keys] = <uint8_t>k
                        key_token[n_keys] = token
                        load_words(cur, pk, nw)
                        last[n_keys] = state
                        memcpy(state, cur, nw * 4)
                        state += nw
                        key_q[n_keys] = key_quantum(k, cur)
                        key_inv[n_keys] = inv = inverse32(key_q[n_keys])
                        n_keys += 1
                        idx = b.nfirst
                        cap = b.cap
                        b.nfirst += 1
                        if k == 4:
                            td_full_first_res(pk, glob[k], inv, b.first, cap, idx)
                        elif k == 3:
                            td_quote_first_res(pk, inv, b.first, cap, idx)
                        else:
                            for w in range(1, nw):
                                b.first[(w - 1) * cap + idx] = residual(
                                    FT[k][w], FA[k][w], 0, w, cur, NULL, glob[k],
                                    inv if QW[k][w] else 1)
                    else:
                        kid = hids[h]
                        idx = b.nnext
                        cap = b.cap
                        b.nnext += 1
                        if k == 4:
                            td_full_next_res(pk, last[kid], glob[k], res, key_inv[kid])
                            td_full_scatter(res, b.wp, mk)
                        elif k == 3:
                            td_quote_next_res(pk, last[kid], res, key_inv[kid])
                            td_quote_scatter(res, b.wp, mk)
                        else:
                            load_words(cur, pk, nw)
                            for w in range(1, nw):
                                res[w] = residual(NT[k][w], NA[k][w], NB[k][w], w,
                                                  cur, last[kid], glob[k],
                                                  key_inv[kid] if QW[k][w] else 1)
                            memcpy(last[kid], cur, nw * 4)
                            for j in range(MB[k]):
                                mk[j] = 0
                            for s in range(MB[k] * 8):
                                w = SLOT[k][s]
                                if w == 0:
                                    continue
                                r = res[w]
                                b.wp[w][0] = r
                                t = r != 0
                                b.wp[w] += t
                                mk[s >> 3] |= <uint8_t>(t << (s & 7))
                        for j in range(MB[k]):
                            b.masks[j * cap + idx] = mk[j]
                    glob[k] = pk
                    ids[npk] = kid
                    npk += 1
        # Assemble.
        idw = id_width(n_keys)
        size = HEADER_SIZE + n_payloads + raw_bytes + npk * idw + n_keys * 9
        for k in range(NKIND):
            size += kb[k].nfirst * (KW[k] - 1) * 4 + kb[k].nnext * MB[k]
            for w in range(1, KW[k]):
                size += (kb[k].wp[w] - kb[k].cols[w]) * 4
        out = PyBytes_FromStringAndSize(NULL, size)
        o = <uint8_t*>PyBytes_AS_STRING(out)
        o[0] = 84  # 'T'
        o[1] = 68  # 'D'
        o[2] = FORMAT_V
        o[3] = 0
        _put_le32(o + 4, n_payloads)
        _put_le32(o + 8, raw_bytes)
        _put_le32(o + 12, n_keys)
        for k in range(NKIND):
            _put_le32(o + 16 + 4 * k, n[k])
        o += HEADER_SIZE
        with nogil:
            memcpy(o, tags, n_payloads)
            o += n_payloads
            pos = 0
            for i in range(n_payloads):
                L = lens[i]
                if not tags[i]:
                    memcpy(o, base + pos, L)
                    o += L
                pos += L
            for pb in range(idw):
                s = 8 * (idw - 1 - pb)
                for i in range(npk):
                    o[i] = <uint8_t>(ids[i] >> s)
                o += npk
            memcpy(o, key_kind, n_keys)
            o += n_keys
            to_planes(o, key_token, n_keys)
            o += 4 * n_keys
            to_planes(o, key_q, n_keys)
            o += 4 * n_keys
            for k in range(NKIND):
                b = &kb[k]
                for w in range(1, KW[k]):
                    to_planes(o, b.first + (w - 1) * b.cap, b.nfirst)
                    o += 4 * b.nfirst
            for k in range(NKIND):
                b = &kb[k]
                for j in range(MB[k]):
                    memcpy(o, b.masks + j * b.cap, b.nnext)
                    o += b.nnext
            for k in range(NKIND):
                b = &kb[k]
                for w in range(1, KW[k]):
                    cnt = b.wp[w] - b.cols[w]
                    to_planes(o, b.cols[w], cnt)
                    o += 4 * cnt
        assert o == <uint8_t*>PyBytes_AS_STRING(out) + size
        return out
    finally:
        arena_give(arena, owned)


cdef inline void _put_le32(uint8_t* p, uint64_t v) noexcept nogil:
    p[0] = <uint8_t>v
    p[1] = <uint8_t>(v >> 8)
    p[2] = <uint8_t>(v >> 16)
    p[3] = <uint8_t>(v >> 24)


cdef inline uint32_t _le32(const uint8_t* p) noexcept nogil:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef const uint8_t[::1] _as_bytes_view(obj) except *:
    cdef const uint8_t[::1] v
    if isinstance(obj, (bytes, bytearray)):
        return obj
    m = memoryview(obj)
    if not m.c_contiguous:
        raise ValueError("payloads must be C-contiguous")
    if m.itemsize != 1 or m.format not in ("B", "b", "c"):
        m = m.cast("B")
    elif m.format != "B":
        m = m.cast("B")
    if m.ndim != 1:
        m = m.cast("B")
    v = m
    return v


cdef const uint32_t[::1] _as_lengths(obj) except *:
    import numpy as np
    if not isinstance(obj, np.ndarray) or obj.dtype != np.uint32 or obj.ndim != 1:
        raise ValueError("lengths must be a 1-d numpy uint32 array")
    if not obj.flags.c_contiguous:
        raise ValueError("lengths must be C-contiguous")
    if not obj.flags.aligned:
        obj = obj.copy()    # C reads it as uint32_t, which it may assume aligned
    cdef const uint32_t[::1] v = obj
    return v


cdef struct Block:
    # Where each section of a checked tick-delta block lies, and its counts.
    const uint8_t* tags
    const uint8_t* raw
    uint64_t raw_bytes
    const uint8_t* idp
    int idw
    uint64_t n_packets
    const uint8_t* kkind
    const uint8_t* ktok
    const uint8_t* kq
    uint64_t n_keys
    uint64_t total          # bytes the payloads decode to
    uint64_t nvals          # residual column entries, each column padded by one
    uint64_t words          # state words of every key
    uint64_t n[NKIND]
    uint64_t f[NKIND]
    const uint8_t* firsts[NKIND]
    const uint8_t* masks[NKIND]
    const uint8_t* vals[NKIND * MAXW]
    uint64_t counts[NKIND * MAXW]


cdef int _read_block(const uint8_t[::1] buf, const uint32_t[::1] lens, Block* bk) except -1:
    """Check a block's header and section sizes against ``lens`` and locate its sections.
    Raises ``ValueError`` naming what is wrong; what the packets themselves hold is checked
    as they are decoded."""
    cdef Py_ssize_t size = buf.shape[0]
    cdef Py_ssize_t n_payloads = lens.shape[0]
    if size < HEADER_SIZE:
        raise ValueError(f"truncated: {size} bytes, the header needs {HEADER_SIZE}")
    cdef const uint8_t* b0 = &buf[0]
    if b0[0] != 84 or b0[1] != 68:
        raise ValueError("not a tick-delta block (bad magic)")
    if b0[2] != FORMAT_V:
        raise ValueError(f"unsupported tick-delta version {b0[2]}")
    if b0[3] != 0:
        raise ValueError(f"unknown flags {b0[3]:#x}")
    cdef uint64_t hp = _le32(b0 + 4), raw_bytes = _le32(b0 + 8), n_keys = _le32(b0 + 12)
    cdef uint64_t* n = bk.n
    cdef uint64_t* f = bk.f
    cdef uint64_t n_packets = 0, expect = 0, total = 0
    cdef int k, w, s, j
    cdef Py_ssize_t i
    for k in range(NKIND):
        n[k] = _le32(b0 + 16 + 4 * k)
        n_packets += n[k]
    if hp != <uint64_t>n_payloads:
        raise ValueError(f"block holds {hp} payloads, {n_payloads} lengths given")
    if n_packets > <uint64_t>size or n_keys > n_packets or raw_bytes > <uint64_t>size:
        raise ValueError("header counts exceed what the block can hold")
    cdef Py_ssize_t off = HEADER_SIZE
    if off + n_payloads > size:
        raise ValueError(f"truncated: tags need {n_payloads} bytes at offset {off}")
    cdef const uint8_t* tags = b0 + off
    off += n_payloads
    cdef uint64_t n_frames = 0
    for i in range(n_payloads):
        if tags[i] > 1:
            raise ValueError("payload tag other than 0 (verbatim) or 1 (frame)")
        n_frames += tags[i]
        total += lens[i]
    expect = raw_bytes + 2 * n_frames
    for k in range(NKIND):
        expect += n[k] * (2 + KLEN[k])
    if total != expect:
        raise ValueError(f"lengths sum to {total}, the block decodes to {expect} bytes")
    if <uint64_t>(size - off) < raw_bytes:
        raise ValueError("truncated: verbatim payloads")
    cdef const uint8_t* raw = b0 + off
    off += raw_bytes
    cdef int idw = id_width(n_keys)
    if <uint64_t>(size - off) < n_packets * idw:
        raise ValueError("truncated: packet keys")
    cdef const uint8_t* idp = b0 + off
    off += n_packets * idw
    if <uint64_t>(size - off) < n_keys * 9:
        raise ValueError("truncated: keys")
    cdef const uint8_t* kkind = b0 + off
    cdef const uint8_t* ktok = b0 + off + n_keys
    cdef const uint8_t* kq = b0 + off + 5 * n_keys
    off += n_keys * 9
    for i in range(<Py_ssize_t>n_keys):
        if (kq[3 * n_keys + i] & 1) == 0:
            raise ValueError("a key quantum is even")
    memset(f, 0, NKIND * sizeof(uint64_t))
    for i in range(<Py_ssize_t>n_keys):
        if kkind[i] >= NKIND:
            raise ValueError("key kind code above 4")
        f[kkind[i]] += 1
    cdef uint64_t* counts = bk.counts
    cdef uint64_t m, need
    cdef uint64_t bits[8]
    for k in range(NKIND):
        if f[k] > n[k]:
            raise ValueError("more keys of a kind than packets of that kind")
        need = f[k] * (KW[k] - 1) * 4
        if <uint64_t>(size - off) < need:
            raise ValueError("truncated: first packets")
        bk.firsts[k] = b0 + off
        off += need
    for k in range(NKIND):
        m = n[k] - f[k]
        if <uint64_t>(size - off) < m * MB[k]:
            raise ValueError("truncated: masks")
        bk.masks[k] = b0 + off
        off += m * MB[k]
    for k in range(NKIND):
        m = n[k] - f[k]
        for w in range(MAXW):
            counts[k * MAXW + w] = 0
        for j in range(MB[k]):
            td_bit_counts(bk.masks[k] + j * m, m, bits)
            for s in range(8):
                if bits[s]:
                    w = SLOT[k][j * 8 + s]
                    if w == 0:
                        raise ValueError("a padding bit of a mask is set")
                    counts[k * MAXW + w] += bits[s]
        for w in range(1, KW[k]):
            need = counts[k * MAXW + w] * 4
            if <uint64_t>(size - off) < need:
                raise ValueError("truncated: values")
            bk.vals[k * MAXW + w] = b0 + off
            off += need
    if off != size:
        raise ValueError(f"{size - off} trailing bytes after the block")
    bk.nvals = 0
    bk.words = 0
    for k in range(NKIND):
        for w in range(1, KW[k]):
            bk.nvals += counts[k * MAXW + w] + 1
        # unpack_ticks keeps a full key's state as a row image (TD_ROW_STATE words)
        bk.words += f[k] * (TD_ROW_STATE if k == 4 else KW[k])
    bk.tags, bk.raw, bk.raw_bytes, bk.idp, bk.idw = tags, raw, raw_bytes, idp, idw
    bk.n_packets, bk.kkind, bk.ktok, bk.kq, bk.n_keys = n_packets, kkind, ktok, kq, n_keys
    bk.total = total
    return 0


cdef size_t _arena_size(const Block* bk) noexcept nogil:
    return (carved((bk.n_keys + 1) * sizeof(uint32_t*)) + carved((bk.words + 1) * 4)
            + carved((bk.n_keys + 1) * 4) + carved((bk.nvals + 1) * 4) + carved(NKIND * 184)
            + carved((bk.n[4] - bk.f[4] + 1) * 8))


cdef struct Output:
    # unpack: the payloads' bytes. unpack_ticks (to_rows): rows, and per row its payload's
    # index, wall time and connection.
    bint to_rows
    uint8_t* bytes
    TickRow* rows
    int64_t* rec
    int64_t* wall
    uint32_t* conn
    const int64_t* wall_in
    const uint32_t* conn_in


def unpack(packed, lengths):
    """Inverse of ``pack``: the original payloads concatenated. Raises ``ValueError`` (with
    the reason) on anything that is not a well-formed block for these lengths."""
    cdef const uint8_t[::1] buf = _as_bytes_view(packed)
    cdef const uint32_t[::1] lens = _as_lengths(lengths)
    cdef Block bk
    _read_block(buf, lens, &bk)
    cdef object out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>bk.total)
    cdef Output dst
    memset(&dst, 0, sizeof(dst))
    dst.bytes = <uint8_t*>PyBytes_AS_STRING(out)
    _decode(&bk, lens, &dst)
    return out


cdef int _decode(const Block* bk, const uint32_t[::1] lens, Output* dst) except -1:
    """Decode a checked block into ``dst`` without the GIL, in the scratch arena."""
    cdef Py_ssize_t n_payloads = lens.shape[0]
    cdef bint owned
    cdef int err
    cdef uint8_t* arena = arena_take(_arena_size(bk), &owned)
    if arena == NULL:
        raise MemoryError()
    try:
        with nogil:
            err = _unpack_body(bk, &lens[0] if n_payloads else NULL, n_payloads, dst, arena)
    finally:
        arena_give(arena, owned)
    if err:
        raise ValueError(_ERRORS[err])
    return 0


def unpack_ticks(packed, lengths, select, wall_ns, conn):
    """The rows ``parse_many`` would give for the selected payloads of ``unpack(packed,
    lengths)``, decoded straight from the block's words, without the frames' bytes.

    ``select``: uint8 per payload, non-zero for the payloads to parse (a WAL block's binary
    frames); ``wall_ns`` (int64) and ``conn`` (uint32) per payload. Returns ``(rows, rec,
    wall, conn)``: TICK_DTYPE rows in payload order, and per row the index of its payload
    and that payload's ``wall_ns`` and ``conn``. Returns ``None`` when the block does not fit
    this path (a selected payload kept verbatim, other than a heartbeat, or an unselected
    one stored as a frame): then unpack and parse instead. Raises ``ValueError`` exactly
    where ``unpack`` does."""
    import numpy as np
    cdef const uint8_t[::1] buf = _as_bytes_view(packed)
    cdef const uint32_t[::1] lens = _as_lengths(lengths)
    cdef Py_ssize_t n_payloads = lens.shape[0], i
    if not (isinstance(select, np.ndarray) and select.dtype == np.uint8 and select.ndim == 1
            and isinstance(wall_ns, np.ndarray) and wall_ns.dtype == np.int64
            and isinstance(conn, np.ndarray) and conn.dtype == np.uint32):
        raise ValueError("select, wall_ns and conn must be numpy uint8, int64 and uint32")
    if select.shape[0] != n_payloads or wall_ns.shape[0] != n_payloads or conn.shape[0] != n_payloads:
        raise ValueError(f"select, wall_ns and conn must have one entry per payload ({n_payloads})")
    cdef const uint8_t[::1] sel = np.ascontiguousarray(select)
    cdef const int64_t[::1] wall_in = np.require(wall_ns, requirements="CA")
    cdef const uint32_t[::1] conn_in = np.require(conn, requirements="CA")
    cdef Block bk
    _read_block(buf, lens, &bk)
    for i in range(n_payloads):
        # parse_many skips payloads under 2 bytes (heartbeats); a longer verbatim one is
        # not a well-formed frame, and its issues come from parsing its bytes
        if (bk.tags[i] == 0 and sel[i] and lens[i] >= 2) or (bk.tags[i] == 1 and not sel[i]):
            return None
    rows = np.empty(bk.n_packets, dtype=_TICK_DTYPE)
    rec = np.empty(bk.n_packets, dtype=np.int64)
    wall = np.empty(bk.n_packets, dtype=np.int64)
    conns = np.empty(bk.n_packets, dtype=np.uint32)
    cdef Output dst
    memset(&dst, 0, sizeof(dst))
    dst.to_rows = True
    dst.rows = <TickRow*>cnp.PyArray_DATA(rows)
    cdef int64_t[::1] rec_v = rec
    cdef int64_t[::1] wall_v = wall
    cdef uint32_t[::1] conn_v = conns
    if bk.n_packets:
        dst.rec = &rec_v[0]
        dst.wall = &wall_v[0]
        dst.conn = &conn_v[0]
    dst.wall_in = &wall_in[0] if n_payloads else NULL
    dst.conn_in = &conn_in[0] if n_payloads else NULL
    _decode(&bk, lens, &dst)
    return rows, rec, wall, conns


_ERRORS = {
    1: "verbatim payloads overrun their section",
    2: "frame payload shorter than 2 bytes",
    3: "frames need more packets than the block holds",
    4: "packet key out of order",
    5: "more first packets than keys of a kind",
    6: "more packets of a kind than the header says",
    7: "packets overrun their frame",
    8: "frame of more than 65535 packets",
    9: "block holds packets or bytes that no payload uses",
    10: "per-kind packet counts do not match the header",
    11: "out of memory",
}


cdef TickRow _probe
if (sizeof(TickRow) != 180 or <char*>&_probe.bid_quantity[0] - <char*>&_probe != 17 * 4
        or <char*>&_probe.bid_price[0] - <char*>&_probe != 22 * 4
        or <char*>&_probe.ask_quantity[0] - <char*>&_probe != 27 * 4
        or <char*>&_probe.ask_price[0] - <char*>&_probe != 32 * 4
        or <char*>&_probe.bid_orders[0] - <char*>&_probe != 37 * 4
        or <char*>&_probe.ask_orders[0] - <char*>&_probe != 37 * 4 + 10
        or <char*>&_probe.divisor - <char*>&_probe != 42 * 4
        or <char*>&_probe.exchange_timestamp - <char*>&_probe != 15 * 4):
    raise ImportError("tick_delta's row image does not match the compiled TickRow layout")


cdef int KIND_OF_CODE[NKIND]
KIND_OF_CODE[:] = [K_LTP, K_INDEX_QUOTE, K_INDEX_FULL, K_QUOTE, K_FULL]


cdef inline void full_row_tail(TickRow* r) noexcept nogil:
    """The fields of a full packet's row that do not change with its words (fill_row's)."""
    row_identity(r, K_FULL, 184)
    r.fields = F_LTP | F_OHLC | F_QUOTE | F_EXCH_TS | F_FULL | F_DEPTH
    r.mode = M_FULL


cdef int _unpack_body(const Block* bk, const uint32_t* lens, Py_ssize_t n_payloads,
                      Output* dst, uint8_t* arena) noexcept nogil:
    """Decode every packet of a checked block: into ``dst.bytes`` (the payloads), or, with
    ``dst.to_rows``, into ``dst.rows`` (the frames' bytes are never made). Returns 0, or the
    code of the first fault (_ERRORS)."""
    cdef const uint8_t* tags = bk.tags
    cdef const uint8_t* raw = bk.raw
    cdef const uint8_t* idp = bk.idp
    cdef const uint8_t* kkind = bk.kkind
    cdef const uint8_t* ktok = bk.ktok
    cdef uint64_t raw_bytes = bk.raw_bytes, n_packets = bk.n_packets, n_keys = bk.n_keys
    cdef const uint64_t* n = <const uint64_t*>bk.n
    cdef const uint64_t* f = <const uint64_t*>bk.f
    cdef int idw = bk.idw
    cdef bint to_rows = dst.to_rows
    cdef uint8_t* o = dst.bytes
    # dst's arrays in locals: stores through them would make the compiler reload dst
    cdef TickRow* rows = dst.rows
    cdef int64_t* rec_out = dst.rec
    cdef int64_t* wall_out = dst.wall
    cdef uint32_t* conn_out = dst.conn
    cdef const int64_t* wall_in = dst.wall_in
    cdef const uint32_t* conn_in = dst.conn_in
    cdef int k
    cdef uint32_t** last = <uint32_t**>carve(&arena, (n_keys + 1) * sizeof(uint32_t*))
    cdef uint32_t* state = <uint32_t*>carve(&arena, (bk.words + 1) * 4)
    cdef uint32_t* quanta = <uint32_t*>carve(&arena, (n_keys + 1) * 4)
    from_planes(quanta, bk.kq, n_keys)
    # Non-zero residuals as u32 columns, each padded by one (read branch-free).
    cdef uint32_t* cp = <uint32_t*>carve(&arena, (bk.nvals + 1) * 4)
    # Rows: each kind's packet is decoded into its own scratch (only the words it needs
    # for a full packet), which is also the previous packet of the kind (rule G).
    cdef uint8_t* scratch = <uint8_t*>carve(&arena, NKIND * 184)
    # the full kind's masks, a u64 a packet (read in packet order, one load each)
    cdef uint64_t* fmask = <uint64_t*>carve(&arena, (n[4] - f[4] + 1) * 8)
    td_full_masks64(fmask, bk.masks[4], n[4] - f[4])
    cdef const uint32_t* cols[NKIND * MAXW]
    cdef int w, j, s, nw, pb, err = 0
    cdef uint64_t cc
    for w in range(NKIND * MAXW):
        cols[w] = NULL
    for k in range(NKIND):
        for w in range(1, KW[k]):
            cc = bk.counts[k * MAXW + w]
            from_planes(cp, bk.vals[k * MAXW + w], cc, True)
            cp[cc] = 0
            cols[k * MAXW + w] = cp
            cp += cc + 1
    cdef uint8_t* glob[NKIND]
    cdef uint64_t fi[NKIND]
    cdef uint64_t ni[NKIND]
    cdef const uint32_t* rp[NKIND * MAXW]     # read pointer of each column
    cdef uint32_t cur[MAXW]
    cdef uint32_t res[MAXW]
    cdef uint8_t mk[8]
    cdef uint64_t raw_pos = 0, pkt = 0, seen = 0, kid, idx, m, cap, bit, row = 0
    cdef int64_t c
    cdef Py_ssize_t i, L, fpos, count
    cdef uint8_t* start = NULL
    cdef uint8_t* pk
    cdef const uint8_t* src
    cdef uint32_t plen
    cdef uint64_t nm[NKIND]      # non-first packets of each kind
    for k in range(NKIND):
        glob[k] = NULL
        fi[k] = 0
        ni[k] = 0
        nm[k] = n[k] - f[k]
    for w in range(NKIND * MAXW):
        rp[w] = cols[w]
    cdef const uint32_t* rps[56]
    td_full_slot_pointers(rps, &rp[4 * MAXW])
    for i in range(n_payloads):
        L = lens[i]
        if tags[i] == 0:
            if raw_pos + L > raw_bytes:
                err = 1
                break
            if not to_rows:
                memcpy(o, raw + raw_pos, L)
                o += L
            raw_pos += L
            continue
        if L < 2:
            err = 2
            break
        if not to_rows:
            start = o
            o += 2
        fpos = 2
        count = 0
        while fpos < L:
            if pkt >= n_packets:
                err = 3
                break
            if idw == 1:
                kid = idp[pkt]
            else:
                kid = 0
                for pb in range(idw):
                    kid = (kid << 8) | idp[pb * n_packets + pkt]
            pkt += 1
            if kid > seen or kid >= n_keys:
                err = 4
                break
            k = kkind[kid]
            nw = KW[k]
            plen = KLEN[k]
            if fpos + 2 + <Py_ssize_t>plen > L:
                err = 7
                break
            count += 1
            if count > 0xFFFF:
                err = 8
                break
            if to_rows:
                pk = scratch + 184 * k
            else:
                o[0] = <uint8_t>(plen >> 8)
                o[1] = <uint8_t>plen
                pk = o + 2
            if kid == seen:
                seen += 1
                if fi[k] >= f[k]:
                    err = 5
                    break
                idx = fi[k]
                fi[k] += 1
                cap = f[k]
                cur[0] = (<uint32_t>ktok[kid] << 24) | (<uint32_t>ktok[n_keys + kid] << 16) \
                    | (<uint32_t>ktok[2 * n_keys + kid] << 8) | ktok[3 * n_keys + kid]
                last[kid] = state
                state += TD_ROW_STATE if k == 4 and to_rows else nw
                if k == 4 and to_rows:
                    td_full_first_row(pk, bk.firsts[k] + idx, cap, glob[k], cur[0],
                                      quanta[kid], last[kid])
                    full_row_tail(<TickRow*>last[kid])
                elif k == 4:
                    td_full_first_dec(pk, bk.firsts[k] + idx, cap, glob[k], cur[0],
                                      quanta[kid], last[kid])
                elif k == 3:
                    td_quote_first_dec(pk, bk.firsts[k] + idx, cap, cur[0], quanta[kid],
                                       last[kid])
                else:
                    for j in range(nw - 1):
                        w = ORD[k][j]
                        src = bk.firsts[k] + (w - 1) * 4 * cap + idx
                        cur[w] = unresidual(FT[k][w], FA[k][w], 0, w,
                                            (<uint32_t>src[0] << 24) | (<uint32_t>src[cap] << 16)
                                            | (<uint32_t>src[2 * cap] << 8) | src[3 * cap],
                                            cur, NULL, glob[k], quanta[kid] if QW[k][w] else 1)
                    for w in range(nw):
                        td_put32(pk + 4 * w, cur[w])
                    memcpy(last[kid], cur, nw * 4)
                if to_rows and k == 4:
                    memcpy(rows + row, last[kid], sizeof(TickRow))
                elif to_rows:
                    fill_row(rows + row, pk, KIND_OF_CODE[k], <uint16_t>plen)
            else:
                m = nm[k]
                if ni[k] >= m:
                    err = 6
                    break
                idx = ni[k]
                ni[k] += 1
                if k == 4:
                    if to_rows:
                        td_full_next_row(last[kid], td_be32(glob[k] + 60) if glob[k] else 0,
                                         fmask[idx], rps, quanta[kid])
                        memcpy(rows + row, last[kid], sizeof(TickRow))
                        td_put32(pk + 60, last[kid][15])    # what rule G reads next
                    elif td_simd:
                        td_full_next_dec_ssse3(pk, last[kid], glob[k], fmask[idx],
                                               &rp[k * MAXW], quanta[kid])
                    else:
                        td_full_next_dec(pk, last[kid], glob[k], fmask[idx],
                                         &rp[k * MAXW], quanta[kid])
                else:
                    for j in range(MB[k]):
                        mk[j] = bk.masks[k][j * m + idx]
                    if k == 3:
                        td_quote_next_dec(pk, last[kid], mk, &rp[k * MAXW], quanta[kid])
                    else:
                        for s in range(MB[k] * 8):
                            w = SLOT[k][s]
                            if w == 0:
                                continue
                            bit = (mk[s >> 3] >> (s & 7)) & 1
                            # columns hold un-zigzagged changes; unresidual takes the residual
                            res[w] = zz(rp[k * MAXW + w][0] & (<uint32_t>0 - <uint32_t>bit))
                            rp[k * MAXW + w] += bit
                        cur[0] = last[kid][0]
                        for j in range(nw - 1):
                            w = ORD[k][j]
                            cur[w] = unresidual(NT[k][w], NA[k][w], NB[k][w], w, res[w], cur,
                                                last[kid], glob[k],
                                                quanta[kid] if QW[k][w] else 1)
                        for w in range(nw):
                            td_put32(pk + 4 * w, cur[w])
                        memcpy(last[kid], cur, nw * 4)
                    if to_rows:
                        fill_row(rows + row, pk, KIND_OF_CODE[k], <uint16_t>plen)
            if to_rows:
                rec_out[row] = i
                wall_out[row] = wall_in[i]
                conn_out[row] = conn_in[i]
                row += 1
            else:
                o += 2 + plen
            glob[k] = pk
            fpos += 2 + plen
        if err:
            break
        if not to_rows:
            start[0] = <uint8_t>(count >> 8)
            start[1] = <uint8_t>count
    if err:
        return err
    if pkt != n_packets or seen != n_keys or raw_pos != raw_bytes:
        return 9
    for k in range(NKIND):
        if fi[k] != f[k] or ni[k] != n[k] - f[k]:
            return 10
    return 0

/* Zeroing a small fixed-size block (a parsed tick row, a packet's residuals) with plain
   16-byte stores.

   GCC expands memset() of a constant 100-250 bytes into `rep stosq` under its generic
   tuning. Its start-up cost (some 30 cycles on AMD Zen) was over a third of parsing a Kite
   packet (perf annotate on replay, 2026-12-01). The loop below compiles to straight-line
   `movups` once n is a constant; the empty asm keeps GCC from recognising the loop as a
   memset and emitting `rep stosq` again. n must be at least 16 (smaller: memset). */
#ifndef SHRIVENQ_SMALL_ZERO_H
#define SHRIVENQ_SMALL_ZERO_H

#include <stddef.h>
#include <string.h>

#if defined(__GNUC__)
typedef unsigned char sq_v16 __attribute__((vector_size(16), aligned(1), may_alias));

static inline __attribute__((always_inline)) void sq_zero(void *p, size_t n) {
    unsigned char *c = (unsigned char *)p;
    size_t i;
    if (n < 16) {
        memset(p, 0, n);
        return;
    }
    for (i = 0; i + 16 <= n; i += 16) {
        *(sq_v16 *)(c + i) = (sq_v16){0};
        __asm__ volatile("" : : "r"(c));
    }
    if (i < n)   /* the tail: the last 16 bytes, overlapping what is already zero */
        *(sq_v16 *)(c + n - 16) = (sq_v16){0};
}
#else
static inline void sq_zero(void *p, size_t n) { memset(p, 0, n); }
#endif

#endif

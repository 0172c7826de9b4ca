# Declarations shared by the Kite parser and the Kite books: one parsed packet in C, laid
# out exactly as numpy's TICK_DTYPE (checked at import by kite_frame), and its constants.
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t

cdef enum:
    # Packet kinds (the ``kind`` column).
    K_LTP = 1
    K_INDEX_QUOTE = 2
    K_INDEX_FULL = 3
    K_QUOTE = 4
    K_FULL = 5
    # Bits of the ``fields`` column: which groups of columns the packet carried.
    F_LTP = 1          # last_price
    F_OHLC = 2         # open, high, low, close (index packets also: change)
    F_QUOTE = 4        # last_quantity, average_price, volume, total_buy/sell_quantity
    F_EXCH_TS = 8      # exchange_timestamp
    F_FULL = 16        # last_trade_time, oi, oi_day_high, oi_day_low
    F_DEPTH = 32       # bid_* / ask_* (5 levels each)
    # Modes (the ``mode`` column).
    M_LTP = 0
    M_QUOTE = 1
    M_FULL = 2
    # Segments with their own price divisor.
    SEG_CDS = 3
    SEG_BCD = 6
    SEG_INDICES = 9
    SEG_NCO = 12


cdef packed struct TickRow:
    uint32_t token
    int32_t last_price
    uint32_t last_quantity
    int32_t average_price
    uint32_t volume
    uint32_t total_buy_quantity
    uint32_t total_sell_quantity
    int32_t open
    int32_t high
    int32_t low
    int32_t close
    uint32_t last_trade_time
    uint32_t oi
    uint32_t oi_day_high
    uint32_t oi_day_low
    uint32_t exchange_timestamp
    int32_t change
    uint32_t bid_quantity[5]
    int32_t bid_price[5]
    uint32_t ask_quantity[5]
    int32_t ask_price[5]
    uint16_t bid_orders[5]
    uint16_t ask_orders[5]
    uint32_t divisor
    uint16_t fields
    uint16_t packet_length
    uint8_t segment
    uint8_t kind
    uint8_t mode
    uint8_t tradable


# ---------------------------------------------------------------------------------------
# One packet's bytes into a row: the parser's, and the WAL decoder's for the packets it
# does not fill from decoded words, so both give the same rows by construction.
# ---------------------------------------------------------------------------------------

cdef extern from "small_zero.h":
    void sq_zero(void* p, size_t n) noexcept nogil


cdef inline uint32_t row_be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline uint16_t row_be16(const uint8_t* p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | <uint16_t>p[1])


cdef inline uint32_t divisor_for(uint32_t segment) noexcept nogil:
    if segment == SEG_CDS:
        return 10000000
    if segment == SEG_BCD or segment == SEG_NCO:
        return 10000
    return 100


cdef inline int kind_for_length(uint16_t plen) noexcept nogil:
    if plen == 184:
        return K_FULL
    if plen == 44:
        return K_QUOTE
    if plen == 8:
        return K_LTP
    if plen == 28:
        return K_INDEX_QUOTE
    if plen == 32:
        return K_INDEX_FULL
    return 0


cdef inline void row_identity(TickRow* r, int kind, uint16_t plen) noexcept nogil:
    """The fields that follow from the token (already set) and the packet's kind."""
    r.segment = r.token & 0xFF
    r.divisor = divisor_for(r.segment)
    r.tradable = r.segment != SEG_INDICES
    r.kind = kind
    r.packet_length = plen


cdef inline void fill_row(TickRow* r, const uint8_t* p, int kind, uint16_t plen) noexcept nogil:
    cdef int i
    cdef const uint8_t* d
    sq_zero(r, sizeof(TickRow))
    r.token = row_be32(p)
    row_identity(r, kind, plen)
    r.last_price = <int32_t>row_be32(p + 4)
    if kind == K_LTP:
        r.mode = M_LTP
        r.fields = F_LTP
    elif kind == K_INDEX_QUOTE or kind == K_INDEX_FULL:
        # Index packets order the range high, low, open, close.
        r.high = <int32_t>row_be32(p + 8)
        r.low = <int32_t>row_be32(p + 12)
        r.open = <int32_t>row_be32(p + 16)
        r.close = <int32_t>row_be32(p + 20)
        # Bytes 24..28 carry the price change; kiteconnect ignores them and recomputes it.
        r.change = <int32_t>row_be32(p + 24)
        if kind == K_INDEX_FULL:
            r.exchange_timestamp = row_be32(p + 28)
            r.mode = M_FULL
            r.fields = F_LTP | F_OHLC | F_EXCH_TS
        else:
            r.mode = M_QUOTE
            r.fields = F_LTP | F_OHLC
    else:
        r.last_quantity = row_be32(p + 8)
        r.average_price = <int32_t>row_be32(p + 12)
        r.volume = row_be32(p + 16)
        r.total_buy_quantity = row_be32(p + 20)
        r.total_sell_quantity = row_be32(p + 24)
        r.open = <int32_t>row_be32(p + 28)
        r.high = <int32_t>row_be32(p + 32)
        r.low = <int32_t>row_be32(p + 36)
        r.close = <int32_t>row_be32(p + 40)
        if kind == K_QUOTE:
            r.mode = M_QUOTE
            r.fields = F_LTP | F_OHLC | F_QUOTE
        else:
            r.mode = M_FULL
            r.fields = F_LTP | F_OHLC | F_QUOTE | F_EXCH_TS | F_FULL | F_DEPTH
            r.last_trade_time = row_be32(p + 44)
            r.oi = row_be32(p + 48)
            r.oi_day_high = row_be32(p + 52)
            r.oi_day_low = row_be32(p + 56)
            r.exchange_timestamp = row_be32(p + 60)
            d = p + 64
            for i in range(5):
                r.bid_quantity[i] = row_be32(d)
                r.bid_price[i] = <int32_t>row_be32(d + 4)
                r.bid_orders[i] = row_be16(d + 8)
                d += 12
            for i in range(5):
                r.ask_quantity[i] = row_be32(d)
                r.ask_price[i] = <int32_t>row_be32(d + 4)
                r.ask_orders[i] = row_be16(d + 8)
                d += 12

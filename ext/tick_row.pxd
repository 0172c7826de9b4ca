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

"""Zerodha Kite Connect: the binary WebSocket protocol (sans-I/O).

``parse_frame`` turns one binary WebSocket message into rows of ``TICK_DTYPE``:

==========================  ======  ===============================================
column                      type    meaning
==========================  ======  ===============================================
token                       u4      instrument token; ``token & 0xFF`` is the segment
last_price                  i4      exchange integer; price = value / divisor
last_quantity               u4      quote, full
average_price               i4      quote, full (fixed-point like last_price)
volume                      u4      quote, full: cumulative day volume
total_buy_quantity          u4      quote, full
total_sell_quantity         u4      quote, full
open, high, low, close      i4      all but ltp (index packets send high, low, open,
                                    close; the columns are by name, not wire order)
last_trade_time             u4      full: epoch seconds
oi, oi_day_high, oi_day_low u4      full
exchange_timestamp          u4      full and index full: epoch seconds
change                      i4      index packets: the change field as sent (bytes
                                    24..28); kiteconnect ignores it
bid_quantity/price/orders   [5]     full: best first (orders u2)
ask_quantity/price/orders   [5]     full: best first
divisor                     u4      100; cds 10,000,000; bcd and nco 10,000
fields                      u2      bitmask of FIELD_* groups the packet carried;
                                    columns outside it are zero
packet_length               u2      8, 28, 32, 44 or 184
segment                     u1      nse 1, nfo 2, cds 3, bse 4, bfo 5, bcd 6, mcx 7,
                                    mcxsx 8, indices 9, nco 12
kind                        u1      KIND_LTP, KIND_INDEX_QUOTE, KIND_INDEX_FULL,
                                    KIND_QUOTE, KIND_FULL
mode                        u1      MODE_LTP 0, MODE_QUOTE 1, MODE_FULL 2
tradable                    u1      0 for indices
==========================  ======  ===============================================

Prices are signed 32-bit integers, as the exchange means them. kiteconnect reads every field
unsigned, so a negative price (spreads, a commodity below zero) comes out of the SDK as about
42949672.95; ``parse_ticks`` reproduces that for compatibility, ``parse_frame`` does not.

``parse_ticks`` returns exactly what ``KiteTicker`` hands to ``on_ticks``. Malformed frames
raise ``shrivenq.errors.KiteFrameError`` with the byte offset; ``parse_frame_lenient`` keeps
the good packets and lists what it skipped (the SDK drops unknown packet lengths silently).
"""

from shrivenq._ext.kite_frame import (
    FIELD_DEPTH,
    FIELD_EXCHANGE_TIMESTAMP,
    FIELD_FULL,
    FIELD_LTP,
    FIELD_OHLC,
    FIELD_QUOTE,
    KIND_FULL,
    KIND_INDEX_FULL,
    KIND_INDEX_QUOTE,
    KIND_LTP,
    KIND_QUOTE,
    MODE_FULL,
    MODE_LTP,
    MODE_QUOTE,
    TICK_DTYPE,
    frame_keys,
    frame_row_bound,
    parse_frame,
    parse_frame_into,
    parse_frame_lenient,
    parse_ticks,
)
from shrivenq.kite.messages import MessageKind, TextMessage, classify, parse_text

__all__ = [
    "FIELD_DEPTH", "FIELD_EXCHANGE_TIMESTAMP", "FIELD_FULL", "FIELD_LTP", "FIELD_OHLC",
    "FIELD_QUOTE", "KIND_FULL", "KIND_INDEX_FULL", "KIND_INDEX_QUOTE", "KIND_LTP",
    "KIND_QUOTE", "MODE_FULL", "MODE_LTP", "MODE_QUOTE", "TICK_DTYPE", "MessageKind",
    "TextMessage", "classify", "frame_keys", "frame_row_bound", "parse_frame", "parse_frame_into",
    "parse_frame_lenient", "parse_text", "parse_ticks",
]

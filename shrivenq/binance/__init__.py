"""Binance spot and USD-M futures: exact decimals, strict decoding, and an L2 book per symbol
kept provably in sync with the exchange (docs/BINANCE.md).

    decimal     exact decimal strings <-> fixed-point integers
    decode      stream envelopes, depthUpdate, REST snapshots, exchangeInfo (plain Python)
    sync        BookSync: the sans-I/O sync state machine (one per symbol)
    reference   ReferenceSync: an independent twin of it, for the property tests
"""

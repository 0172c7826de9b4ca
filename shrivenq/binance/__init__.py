"""Binance spot and USD-M futures: exact decimals, strict decoding, and an L2 book per symbol
kept provably in sync with the exchange (docs/BINANCE.md).

    decimal     exact decimal strings <-> fixed-point integers
    decode      stream envelopes, depthUpdate, REST snapshots, exchangeInfo (plain Python;
                shrivenq._ext.binance_depth is its compiled twin for depth messages)
    sync        BookSync: the sans-I/O sync state machine (one per symbol)
    reference   ReferenceSync: an independent twin of it, for the property tests
    books       BinanceBooks: WAL inputs -> books; shared by capture and replay
    streams     stream names, connection plans, URLs
    feed        BinanceFeed: the asyncio websockets layer (reconnects, handovers, gaps)
    rest        python-binance wiring, the request-weight pacer, the snapshot fetcher
Capture is ``shrivenq.capture.binance``, replay from the WAL ``shrivenq.replay.binance``, the
simulator ``shrivenq.sim.binance_server``: this package knows nothing of the WAL.
"""

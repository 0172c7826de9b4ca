"""shrivenq: market-data capture for Zerodha Kite and Binance.

Cython parsers and fixed-point order books over a segmented, zstd-compressed, checksummed
write-ahead log. See README.md for the quick start.
"""

__version__ = "0.1.0"

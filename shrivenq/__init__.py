"""shrivenq: market-data capture for Zerodha Kite and Binance.

Cython parsers and fixed-point order books over a segmented, zstd-compressed, checksummed
write-ahead log. See README.md for the quick start.
"""

__version__ = "0.1.0"


def open(data_dir="data", cache_dir="cache", on_corrupt="raise"):  # noqa: A001 (like io.open)
    """Open captured data for reading in code and notebooks; see shrivenq.replay.dataset.
    ``on_corrupt="skip"`` reads past damaged or missing WAL data, lists it in ``.skipped``
    and warns, instead of raising."""
    from shrivenq.replay.dataset import Dataset

    return Dataset(data_dir, cache_dir, on_corrupt)


def __getattr__(name):
    # shrivenq.ShrivenqDataWarning without importing the library at ``import shrivenq``
    if name == "ShrivenqDataWarning":
        from shrivenq.errors import ShrivenqDataWarning

        return ShrivenqDataWarning
    raise AttributeError(f"module 'shrivenq' has no attribute {name!r}")

"""The example notebook runs, top to bottom, on a day the simulator produced; the notebook
API imports pandas only when a DataFrame is asked for."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from shrivenq.capture.kite import KiteCapture, KiteCaptureSettings
from shrivenq.sim.kite_server import DEMO_ACCESS_TOKEN, DEMO_API_KEY, KiteSimServer

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "captured_day.ipynb"


def record(path: Path, duration: float = 3.0, snapshot_interval: float = 1.0) -> None:
    """Capture four instruments from the simulator into ``path``."""
    async def main():
        async with KiteSimServer(rate=20, frame_interval=0.02) as sim:
            modes = {256265: "full", 13312002: "full", 738561: "full", 408065: "quote"}
            await KiteCapture(KiteCaptureSettings(
                modes, path, DEMO_API_KEY, DEMO_ACCESS_TOKEN, ws_root=sim.ws_url,
                duration=duration, snapshot_interval=snapshot_interval)).run()

    asyncio.run(main())


def test_example_notebook_executes_on_simulated_data(tmp_path, monkeypatch):
    record(tmp_path)
    monkeypatch.setenv("SHRIVENQ_DATA", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
                     for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "ticks of 4 instruments" in text
    assert "mean imbalance:" in text and "NIFTY25NOVFUT" in text and "RELIANCE" in text
    assert "sampled book rows" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the price and spread plots rendered


# Reads the captured day in a fresh interpreter and reports, as JSON, whether pandas was
# imported after each step.
PANDAS_PROBE = """
import json, sys
import shrivenq
steps = {"import": "pandas" in sys.modules}
ds = shrivenq.open(sys.argv[1], cache_dir=sys.argv[2])
ticks = ds.ticks()
steps["ticks"] = "pandas" in sys.modules
books = ds.books(every="100ms")
pairs = sum(1 for _ in ds.replay())
steps["books and replay"] = "pandas" in sys.modules
frame = ds.to_pandas()
steps["to_pandas"] = "pandas" in sys.modules
print(json.dumps({"steps": steps, "ticks": len(ticks), "frame": len(frame),
                  "books": len(books), "pairs": pairs}))
"""


def test_pandas_is_imported_only_when_a_frame_is_asked_for(tmp_path):
    record(tmp_path / "data", duration=0.5, snapshot_interval=0.2)
    out = subprocess.run([sys.executable, "-c", PANDAS_PROBE, str(tmp_path / "data"),
                          str(tmp_path / "cache")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["steps"] == {"import": False, "ticks": False, "books and replay": False,
                            "to_pandas": True}
    assert got["ticks"] > 0 and got["frame"] == got["ticks"] == got["pairs"]
    assert got["books"] > 0

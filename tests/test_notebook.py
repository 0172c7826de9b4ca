"""The example notebook runs, top to bottom, on a day the simulator produced."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from shrivenq.capture.kite import KiteCapture, KiteCaptureSettings
from shrivenq.sim.kite_server import DEMO_ACCESS_TOKEN, DEMO_API_KEY, KiteSimServer

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "captured_day.ipynb"


def test_example_notebook_executes_on_simulated_data(tmp_path, monkeypatch):
    async def record():
        async with KiteSimServer(rate=20, frame_interval=0.02) as sim:
            modes = {256265: "full", 13312002: "full", 738561: "full", 408065: "quote"}
            await KiteCapture(KiteCaptureSettings(
                modes, tmp_path, DEMO_API_KEY, DEMO_ACCESS_TOKEN, ws_root=sim.ws_url,
                duration=3.0, snapshot_interval=1.0)).run()

    asyncio.run(record())
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

"""Accelerator cost model. For now: accelerator presets by name; the cost model itself is issue 5."""

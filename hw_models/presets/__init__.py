"""Accelerator presets shipped with the package (YAML specs), addressed by name; read by `hw_models.spec`."""

"""medsam_edge.calibration."""

"""medsam_edge.engines."""

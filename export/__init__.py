"""medsam_edge.export."""

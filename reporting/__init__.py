"""What people look at: overlays, per-image panels and overviews (`visualization`)."""

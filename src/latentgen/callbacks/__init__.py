"""Lightning callbacks: image grids, checkpoints that carry their config, atomic checkpoint writes."""

"""Tools that are not the product: benches, chaos scenarios, load generator, simulator, demo."""

"""Model math: the MMoE ranking model, training, TorchScript export,
calibrators, the blender, drift metrics and the score function."""

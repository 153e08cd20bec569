"""LightningModules ("systems"): they wire nn.Modules together and own optimization."""

"""reimager's host-agnostic core. Nothing here imports azure.functions."""

"""ARM Compute: the client (an azure-core pipeline), its typed errors, and the LRO protocol."""

"""OPC UA server for HMI clients: address space, publisher (security, methods, A&C: later issues)."""

"""OPC UA server for HMI clients: address space, publisher (security, methods, A&C: later issues)."""

# Here rather than in server.py: the command line shows it in every command's --help, and
# server.py's imports (asyncua) cost half a second a technician's `scada check` need not pay.
DEFAULT_ENDPOINT = "opc.tcp://127.0.0.1:4840/scada/"  # loopback: another address is a choice

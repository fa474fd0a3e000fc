"""What the server and the simulators both need, and nothing else: YAML reading with line
numbers (``yamlsrc``), typed field reading (``fields``), structured logs (``logs``), the event
loop choice (``eventloop``) and the open-files limit (``limits``).

``scada`` (with ``drivers``) and ``simulators`` depend on this package, never on each other:
the simulators reach the server only through the field protocols.
"""

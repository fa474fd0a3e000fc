"""Who may do what on the HMI side, and the proof of who did it.

Pure parts (no asyncua): identity.py (roles, permissions, communes), context.py (the request being
served), audit.py (audit records and their sink), refusal_audit.py (refusals audited at a bounded rate),
settings.py (the ``security.yaml`` settings).
The OPC UA side applies them in scada/opcua (endpoints.py, login.py, authorise.py, bounds.py,
audit_events.py); the asyncua internals they need sit in scada/opcua/asyncua_private/.
"""

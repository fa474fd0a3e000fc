"""Alarm definitions (config.py). The ISA-18.2 engine, journal and routing are issue 5."""

"""Supervisory control: commands from the HMI to the field (see scada/control/model.py)."""

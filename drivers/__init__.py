"""Protocol drivers, one package each (config.py, codec.py, driver.py), implementing the
interface the core declares in ``scada/driver_api.py``. Their registry is the composition
point's table, ``city_scada/registry.py``; nothing here imports it or the simulators."""

"""The OPC UA front process and what feeds it."""

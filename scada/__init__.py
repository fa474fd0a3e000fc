"""City supervision server core: tag database, configuration, OPC UA server. No protocol code."""

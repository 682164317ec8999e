"""Traffic domain: segment speed forecasting, its published evaluation protocol, incident detection."""

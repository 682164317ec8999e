"""四表合一 metering (electricity, water, gas, heat): consumption from registers, anomalies, collection rates."""

"""TCP gateways for field devices that cannot speak MQTT themselves (HJ 212 stations, JT/T 808
terminals): accept, validate identity against the device registry, publish each accepted packet raw to
MQTT with QoS 1 and answer the device only after the broker's PUBACK."""

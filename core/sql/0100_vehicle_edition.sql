-- The JT/T 808 edition a terminal speaks, per device and per position: the alarm flag word means
-- different things in JT/T 808-2013 (Table 24) and 2019 (Table 25), so each position's bits are read with
-- its own edition's table (core/vehicles/jt808_bits.py).
--
-- devices.protocol_edition: set by the JT/T 808 gateway from the 0x0100 registration body, whose layout
-- differs by edition (2011, 2013, 2019); NULL when unknown (JSON telemetry, not registered yet).
-- vehicle_positions.protocol_edition: set by ingest from the frame the position came in (2019 header:
-- body-properties bit 14 and the protocol-version byte; otherwise 2013, as 2011 and 2013 share the header);
-- NULL for JSON telemetry and for rows written before this migration.
-- The vehicle job reads a position's edition, else its device's, else the documented default (2019).
ALTER TABLE devices ADD COLUMN protocol_edition smallint
    CONSTRAINT devices_protocol_edition CHECK (protocol_edition IN (2011, 2013, 2019));
ALTER TABLE vehicle_positions ADD COLUMN protocol_edition smallint
    CONSTRAINT vehicle_positions_protocol_edition CHECK (protocol_edition IN (2011, 2013, 2019));

-- HJ/T 212-2005 flag P (电源故障, power fault) is invalid data, like the HJ 212-2017 flags F M S D C T B
-- (core.const.INVALID_FLAGS). Rules store their exclude_flags explicitly (Rule.to_dict), so rules saved
-- with the former default 'BCDFMST' would keep alarming on P readings: give them the new default.
-- Rules whose exclude_flags were chosen by hand (anything else) are left as they are.
UPDATE rules
SET definition = jsonb_set(definition, '{exclude_flags}', to_jsonb('BCDFMPST'::text)),
    updated_at = now(),
    updated_by = 'migration 0103'
WHERE definition ->> 'exclude_flags' = 'BCDFMST';

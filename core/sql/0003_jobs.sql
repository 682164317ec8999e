-- Derived-data jobs (wulian derive): how far each job has processed, so a restart resumes there.
CREATE TABLE job_watermarks (
    job        text PRIMARY KEY,
    upto       timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    stats      jsonb
);

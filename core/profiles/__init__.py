"""What the shipped profiles' users compute over stored readings (pure; the derive jobs in ingest/jobs/
read and write): time per state of a step signal, cold-chain trips and their compliance, standard coal,
and the hour-of-week consumption baseline."""

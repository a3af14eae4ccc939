-- docker-compose only: the runtime role with a password (migration 0001 creates
-- it without one on development machines, where loopback is trusted).
CREATE ROLE learnvault_app LOGIN PASSWORD 'change-me-app' NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;

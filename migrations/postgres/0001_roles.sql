-- The runtime role. learnvault serves requests as `learnvault_app`, which owns
-- nothing: it gets exactly the privileges granted below, so it cannot disable
-- the audit log's triggers, alter tables or bypass append-only rules.
-- Migrations run as the database owner (LEARNVAULT_ADMIN_DATABASE_URL).
-- Roles are cluster-wide; concurrent migrations of several databases (tests)
-- may race to create it, hence the exception handler.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'learnvault_app') THEN
        CREATE ROLE learnvault_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

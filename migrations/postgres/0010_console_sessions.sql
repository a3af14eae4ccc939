-- Console sign-in (src/console/, src/auth/session.rs).
--
-- Invariants:
-- * a one-time sign-in code and a session id are never stored: only their
--   SHA-256 (a database reader cannot sign in with what it reads);
-- * a code is exchanged at most once (`used_at` set in the same UPDATE that
--   checks it) and only before `expires_at`;
-- * a session is valid while `now() < last_seen + idle` and `now() < expires_at`;
--   its principal (sub, roles, institutions, courses) is what the API's
--   `Principal` would be for a token with the same claims: no privilege of its own.
CREATE TABLE console_login_codes (
    code_hash    bytea PRIMARY KEY CHECK (length(code_hash) = 32),
    sub          text NOT NULL,
    roles        text[] NOT NULL,
    institutions text[] NOT NULL,
    courses      text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);

CREATE TABLE console_sessions (
    id_hash      bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    sub          text NOT NULL,
    roles        text[] NOT NULL,
    institutions text[] NOT NULL,
    courses      text[] NOT NULL,
    -- The CSRF token of this session (random, compared in constant time).
    csrf         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- OpenID Connect sign-ins in flight (authorization code + PKCE): the `state`
-- (hashed) maps to the PKCE verifier and the nonce; taken once, before it expires.
CREATE TABLE console_oidc_logins (
    state_hash   bytea PRIMARY KEY CHECK (length(state_hash) = 32),
    verifier     text NOT NULL,
    nonce        text NOT NULL,
    expires_at   timestamptz NOT NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON console_login_codes TO learnvault_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON console_sessions TO learnvault_app;
GRANT SELECT, INSERT, DELETE ON console_oidc_logins TO learnvault_app;

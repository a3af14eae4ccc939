# Shared by the ops scripts that fetch a pinned, checksummed artifact (ops/axe-core.sh,
# ops/keycloak.sh). Source it after setting SHA256.

# A progress line on stderr (stdout is the script's answer: a path), headed by the script's name.
say() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }

# Whether file $1 exists and its SHA-256 is the pinned $SHA256.
pinned() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

# Exit, saying so, unless file $1's SHA-256 is the pinned $SHA256.
require_pinned() {
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$got" = "$SHA256" ] || { say "SHA-256 mismatch: got $got, want $SHA256"; exit 1; }
}

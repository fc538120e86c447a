#!/usr/bin/env bash
# The real services the tests use, from Debian's packages: PostgreSQL started on 127.0.0.1 (a
# role `lvit` that may create databases; the tests make their own and drop it) and headless
# Chromium with its driver. Installs what is missing when run as root (CI); otherwise says what
# is missing, and the tests that need it are skipped with that reason.
# Prints nothing on stdout but the PostgreSQL URL for LVIT_TEST_POSTGRES (empty when unavailable).
# The real data files the tests read (Fashion-MNIST) come from experiments/install_data.sh.
set -euo pipefail

bash "$(dirname "$0")/../experiments/install_data.sh"

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || need+=(postgresql)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "services: installing ${need[*]} from Debian's packages" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") \
      >/dev/null 2>&1 || echo "services: apt-get install ${need[*]} failed" >&2
  else
    echo "services: missing ${need[*]}: install them (apt-get install ${need[*]})" \
      "or the tests that need them are skipped" >&2
  fi
fi

compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || exit 0
if [ "$(id -u)" = 0 ]; then as_postgres=(runuser -u postgres --); else as_postgres=(); fi
if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
  version=$(basename "$(dirname "$(dirname "$(compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" | head -1)")")")
  "${as_postgres[@]}" pg_createcluster "$version" main >/dev/null 2>&1 || true
fi
read -r version cluster port status _ < <(pg_lsclusters -h | head -1)
password=lvit-pw-5e3a  # distinctive, so the tests can look for it wherever it must not be
if [ "$status" != online ]; then
  pg_ctlcluster "$version" "$cluster" start >/dev/null 2>&1 \
    || { echo "services: PostgreSQL $version/$cluster did not start" >&2; exit 0; }
fi
"${as_postgres[@]}" psql -q -p "$port" -d postgres -v ON_ERROR_STOP=1 >/dev/null 2>&1 <<SQL || true
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lvit') THEN
    CREATE ROLE lvit LOGIN CREATEDB;
  END IF;
END \$\$;
ALTER ROLE lvit PASSWORD '$password';
SQL
echo "postgresql://lvit:$password@127.0.0.1:$port/postgres"

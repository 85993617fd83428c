#!/usr/bin/env bash
# Starts a single-node Garage on loopback in DIR (default .garage-test), creates a bucket and a
# key, and writes DIR/env with MOSS_TEST_S3_* variables for the tests. Prints that file's path.
# Stop it with: kill "$(cat DIR/garage.pid)"
set -euo pipefail
dir="${1:-$PWD/.garage-test}"
garage="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
s3_port="${GARAGE_S3_PORT:-3900}"
rpc_port="${GARAGE_RPC_PORT:-3901}"
rm -rf "$dir"
mkdir -p "$dir/meta" "$dir/data"
cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
TOML
export GARAGE_CONFIG_FILE="$dir/garage.toml"
"$garage" server > "$dir/garage.log" 2>&1 &
echo $! > "$dir/garage.pid"
for _ in $(seq 1 100); do
    if "$garage" status > /dev/null 2>&1; then break; fi
    sleep 0.2
done
node=$("$garage" status 2>/dev/null | grep -oE '^[0-9a-f]{16}' | head -1 || true)
if [[ -z "$node" ]]; then
    echo "garage-start: garage did not come up; see $dir/garage.log" >&2
    exit 1
fi
"$garage" layout assign -z dc1 -c 10G "$node" > /dev/null
"$garage" layout apply --version 1 > /dev/null
"$garage" bucket create moss-test > /dev/null
"$garage" key create moss-test-key > "$dir/key.txt"
"$garage" bucket allow --read --write --owner moss-test --key moss-test-key > /dev/null
key_id=$(awk -F': *' '/Key ID/ {print $2; exit}' "$dir/key.txt")
secret=$(awk -F': *' '/Secret key/ {print $2; exit}' "$dir/key.txt")
if [[ -z "$key_id" || -z "$secret" ]]; then
    "$garage" key info --show-secret moss-test-key > "$dir/key.txt"
    key_id=$(awk -F': *' '/Key ID/ {print $2; exit}' "$dir/key.txt")
    secret=$(awk -F': *' '/Secret key/ {print $2; exit}' "$dir/key.txt")
fi
cat > "$dir/env" <<ENV
export MOSS_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export MOSS_TEST_S3_REGION=garage
export MOSS_TEST_S3_BUCKET=moss-test
export MOSS_TEST_S3_KEY_ID=$key_id
export MOSS_TEST_S3_SECRET=$secret
export MOSS_TEST_GARAGE_DIR=$dir
ENV
echo "$dir/env"

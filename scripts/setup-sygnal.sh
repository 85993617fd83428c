#!/usr/bin/env bash
# Installs Sygnal, Element's push gateway (the one behind matrix.org's
# /_matrix/push/v1/notify), into .venv-sygnal for tests/clients/python/test_push_sygnal.py:
# moss pushes to a real Sygnal, whose webpush pushkin encrypts each notification (RFC 8291)
# and posts it to a browser push service that the test plays on loopback.
# Its own venv: Sygnal pins Twisted, prometheus-client 0.7 and friends, which must not meet the
# client test venv.
#
# Where Sygnal comes from: `matrix-sygnal==$version` from the package index when the index has it;
# otherwise from a source tree or sdist of the same release given as $SYGNAL_SRC (upstream:
# github.com/element-hq/sygnal, tag v$version, AGPL-3.0; unmodified). Some indexes do not serve
# matrix-sygnal at all ("from versions: none"); then, without $SYGNAL_SRC, this exits 1 and
# scripts/test runs the other tests without the Sygnal one. Either way the version is checked.
#
# Its runtime dependencies are pinned below to the versions of Sygnal's own poetry.lock at the
# v0.17.0 tag (what its release and Docker image run). Not what pip would pick from Sygnal's
# loose ranges: with today's releases its webpush pushkin is broken twice over, seen here —
# - pywebpush 2.2.x and later (2.2.1 to 2.5.0 read; 2.1.2 is fine) log `resp.headers` of the
#   stand-in response Sygnal hands them (its HttpDelayedRequest has none): every webpush dispatch
#   fails with AttributeError, a 500 to the homeserver;
# - Twisted 26.10 (24.7.0, the lock's, is fine) gives each new asyncio reactor that is not
#   started from a running loop its own event loop: Sygnal runs a reactor of its own beside
#   the installed global one, and the global one, never run, is what the request body
#   producer (FileBodyProducer's cooperator) waits on, so the encrypted body is never sent
#   and the push service times out.
#
# Idempotent: a quick no-op when .venv-sygnal/.installed matches the version and pins. The venv
# holds a `.gitignore` of `*`, so git ignores it without an entry in the repo's .gitignore.
# Override the interpreter with PYTHON=/path/to/python3 (3.10+).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv-sygnal"
python="${PYTHON:-python3}"
version="0.17.0"
source_dir="${SYGNAL_SRC:-}"
constraints="aioapns==3.2
aiohappyeyeballs==2.4.3
aiohttp==3.10.11
aiosignal==1.3.1
attrs==23.2.0
Automat==22.10.0
cachetools==5.3.3
certifi==2024.7.4
cffi==1.16.0
charset-normalizer==3.3.2
constantly==23.10.4
cryptography==42.0.7
frozenlist==1.4.1
google-auth==2.29.0
h2==4.1.0
hpack==4.0.0
http_ece==1.2.0
hyperframe==6.0.1
hyperlink==21.0.0
idna==3.7
Incremental==24.7.2
jaeger-client==4.8.0
matrix-common==1.3.0
multidict==6.0.5
opentracing==2.4.0
prometheus_client==0.7.1
propcache==0.2.0
py-vapid==1.9.1
pyasn1==0.6.0
pyasn1_modules==0.4.0
pycparser==2.22
PyJWT==2.8.0
pyOpenSSL==24.1.0
pywebpush==2.0.0
PyYAML==6.0.1
requests==2.32.3
rsa==4.9
sentry-sdk==2.8.0
service-identity==24.1.0
six==1.16.0
threadloop==1.0.2
thrift==0.20.0
tornado==6.4.2
Twisted==24.7.0
typing_extensions==4.12.0
urllib3==2.2.2
yarl==1.15.2
zope.interface==6.4.post2"
want="matrix-sygnal==$version $(sha256sum <<< "$constraints" | cut -d' ' -f1)"
stamp="$venv/.installed"

# A venv whose interpreter vanished (the base Python was upgraded) is useless: rebuild it.
if [[ -d "$venv" && ! -x "$venv/bin/python" ]]; then
    rm -rf "$venv"
fi
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
echo '*' > "$venv/.gitignore"
printf '%s\n' "$constraints" > "$venv/constraints.txt"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$venv/constraints.txt")

index_log="$venv/index-install.log"
if ! "${pip[@]}" "matrix-sygnal==$version" > "$index_log" 2>&1; then
    if [[ -n "$source_dir" && -e "$source_dir" ]]; then
        echo "setup-sygnal: matrix-sygnal==$version is not on the package index; installing it from $source_dir" >&2
        "${pip[@]}" "$source_dir"
    else
        cat "$index_log" >&2
        echo "setup-sygnal: matrix-sygnal==$version is not on the package index, and no source was given:" \
            "set SYGNAL_SRC to a checkout or sdist of Sygnal v$version" \
            "(github.com/element-hq/sygnal, tag v$version)" >&2
        exit 1
    fi
fi

# The fallback source could be another release: check what was installed, and that the webpush
# pushkin (the one the test uses) imports with these pins.
have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("matrix-sygnal"))')"
if [[ "$have" != "$version" ]]; then
    echo "setup-sygnal: installed matrix-sygnal $have, want $version (check $source_dir)" >&2
    exit 1
fi
"$venv/bin/python" -c 'import sygnal.sygnal, sygnal.webpushpushkin'
# Written only after a successful install, so a failed install is retried next time.
echo "$want" > "$stamp"

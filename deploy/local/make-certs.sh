#!/usr/bin/env bash
# Test certificates for MQTT and API TLS: a private CA and a server certificate for 127.0.0.1/localhost.
#   make-certs.sh DIR        -> DIR/ca.crt DIR/ca.key DIR/server.crt DIR/server.key (skips if present)
set -euo pipefail
DIR="${1:?usage: make-certs.sh DIR}"
mkdir -p "$DIR"
cd "$DIR"
[ -f server.crt ] && [ -f server.key ] && [ -f ca.crt ] && exit 0
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=Wulian test CA" \
  -keyout ca.key -out ca.crt >/dev/null 2>&1
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr >/dev/null 2>&1
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -extfile server.ext \
  -out server.crt >/dev/null 2>&1
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
chmod 644 server.crt ca.crt
echo "$DIR"

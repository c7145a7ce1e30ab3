#!/bin/sh
# Regenerates the test certificates (valid 100 years): two mesh roots (a, b),
# workload certificates with SPIFFE URI SANs as the mesh CA issues them.
set -eu
cd "$(dirname "$0")"
days=36500
root() {
  openssl ecparam -name prime256v1 -genkey -noout -out "$1-root.key"
  openssl req -x509 -new -key "$1-root.key" -subj "/O=$2" -days $days -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$1-root.pem"
}
leaf() { # name root uri keytype
  case "$4" in
    ec) openssl ecparam -name prime256v1 -genkey -noout -out "$1.sec1.key"
        openssl pkcs8 -topk8 -nocrypt -in "$1.sec1.key" -out "$1.key" ;;
    rsa) openssl genrsa -traditional -out "$1.key" 2048 2>/dev/null ;;
  esac
  openssl req -new -key "$1.key" -subj "/" -out "$1.csr" 2>/dev/null || openssl req -new -key "$1.key" -subj "/O=x" -out "$1.csr"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=critical,URI:%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2-root.pem" -CAkey "$2-root.key" -CAcreateserial -days $days -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
root a cluster.local
root b other-ca
leaf client a spiffe://cluster.local/ns/default/sa/client ec
leaf product a spiffe://cluster.local/ns/default/sa/product ec
leaf reviews a spiffe://cluster.local/ns/default/sa/reviews rsa
leaf intruder b spiffe://cluster.local/ns/default/sa/product ec
rm -f ./*.srl a-root.key b-root.key intruder.sec1.key product.sec1.key reviews.sec1.key

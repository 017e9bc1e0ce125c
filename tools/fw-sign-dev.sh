#!/usr/bin/env bash
# fw-sign-dev.sh - DEV/TEST ONLY: write and sign a firmware release descriptor for an image
# with the dev publisher key (var/pki/publisher.key from certs/mkpki.sh). A real publisher signs
# offline with a key that never touches the CMS host (docs/firmware.md).
#
#   tools/fw-sign-dev.sh IMAGE MODEL VERSION SECURITY_COUNTER [OUT_PREFIX]
#
# Writes OUT_PREFIX.desc.json (the descriptor: exactly the bytes that are signed) and
# OUT_PREFIX.sig (the raw signature), OUT_PREFIX defaulting to IMAGE. Then:
#   build/cmsctl firmware import --image IMAGE --descriptor IMAGE.desc.json --signature IMAGE.sig
#
# Environment: FW_PUBLISHER_KEY (default var/pki/publisher.key): Ed25519 (openssl pkeyutl
# -sign -rawin) or EC P-256 (openssl dgst -sha256 -sign, DER ECDSA signature).
set -euo pipefail

die() {
	echo "fw-sign-dev.sh: $*" >&2
	exit 1
}
(($# >= 4 && $# <= 5)) || die "usage: $0 IMAGE MODEL VERSION SECURITY_COUNTER [OUT_PREFIX]"
image=$1 model=$2 version=$3 counter=$4 out=${5:-$1}
key=${FW_PUBLISHER_KEY:-var/pki/publisher.key}
[[ -f $image ]] || die "$image: no such file"
[[ -f $key ]] || die "$key: no such key (run certs/mkpki.sh dev var/pki)"
[[ $version =~ ^(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})$ ]] ||
	die "version must be MAJOR.MINOR.PATCH"
[[ $counter =~ ^[0-9]+$ ]] && ((counter <= 4294967295)) || die "security counter: 0..4294967295"
[[ $model =~ ^[\ -~]{1,64}$ && $model != " "* && $model != *" " && $model != *'"'* && $model != *'\'* ]] ||
	die "model: 1..64 printable ASCII characters (no quotes or backslashes here)"

sha=$(sha256sum "$image" | cut -d' ' -f1)
len=$(stat -c %s "$image")
# Compact JSON; the signature covers these exact bytes (no trailing newline).
printf '{"format":"cms-fw-descriptor/1","model":"%s","version":"%s","security_counter":%s,"sha256":"%s","length":%s}' \
	"$model" "$version" "$counter" "$sha" "$len" >"$out.desc.json"

if openssl pkey -in "$key" -pubout 2>/dev/null | openssl pkey -pubin -noout -text 2>/dev/null | grep -q "^ED25519"; then
	openssl pkeyutl -sign -rawin -inkey "$key" -in "$out.desc.json" -out "$out.sig"
else
	openssl dgst -sha256 -sign "$key" -out "$out.sig" "$out.desc.json"
fi
echo "descriptor: $out.desc.json"
echo "signature:  $out.sig"

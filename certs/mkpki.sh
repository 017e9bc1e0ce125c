#!/usr/bin/env bash
# mkpki.sh - dev and test PKI for the CMS server, with the openssl CLI only.
#
#   certs/mkpki.sh dev  DIR                      dev PKI (make run uses var/pki)
#   certs/mkpki.sh test DIR                      dev PKI + hostile certificates for tests
#   certs/mkpki.sh mint DIR PREFIX FIRST COUNT   COUNT device certs PREFIX%04d from FIRST
#   certs/mkpki.sh revoke DIR CERT               revoke CERT (issued by device-ca), rewrite crl.pem
#
# Environment:
#   KEY_ALG     ec (P-256, default) | rsa:2048 (any rsa:BITS) | ed25519. Applies to keys created
#               by this run; existing keys are reused (delete DIR to switch algorithms).
#   MINT_KEYS   shared (default: one key for all minted certs, DIR/mint/PREFIX.key, with a
#               symlink DIR/devices/SERIAL.key to it) | each (one key per cert in
#               DIR/devices/SERIAL.key)
#   MINT_JOBS   parallel CSR/key jobs for mint (default: nproc)
#
# Idempotent: every file is created only when missing; a certificate is re-issued only when it
# is missing, does not chain to its CA any more, or expires within a day. Private keys are
# created under umask 077 and are mode 0600; nothing secret is printed. DIR/README.txt lists
# the layout. Concurrent runs on one DIR are serialized with flock(1).
#
# Timing here (2 CPUs, OpenSSL 3.0.x, busy machine): dev ~0.3 s, test ~0.6 s, a re-run ~0.3-0.9 s
# (it re-verifies every certificate); mint 10000 certs ~25-40 s with the shared key, ~30-70 s
# with MINT_KEYS=each. A per-certificate `openssl x509 -req` would cost ~20 ms each (~200 s).
#
# Layout (DIR):
#   ca.pem                  root CA certificate: clients verify the server with it
#   root-ca.{key,crt}       root CA (self-signed)
#   device-ca.{key,crt}     device-issuing intermediate CA (signed by root; EKU clientAuth)
#   device-ca-bundle.pem    device-ca.crt + root-ca.crt        -> cmsd tls_device_ca
#   operator-ca.{key,crt}   operator CA: a separate self-signed root, so that device certs
#                           never verify as operators and operator certs never as devices
#   operator-ca-bundle.pem  operator-ca.crt                    -> cmsd tls_operator_ca
#   server.{key,crt}        cmsd identity (root-signed leaf; SAN DNS:localhost, IP:127.0.0.1,
#                           IP:::1; EKU serverAuth)            -> cmsd tls_cert / tls_key
#   crl.pem                 CRL of device-ca (empty in dev)    -> cmsd tls_crl
#   publisher.{key,pub}     firmware publisher Ed25519 key pair (always Ed25519)
#   fw-distribution.{key,pub}  cmsd's manifest-signing Ed25519 key pair (fw_distribution_key)
#   devices/MON-000N.{key,crt,chain.pem}   demo monitors (N = 1..3): CN=serial, clientAuth;
#                           .crt is the leaf alone, .chain.pem = leaf + device-ca.crt
#   operators/operator.{key,crt}           CN=operator, OU=admin (OU names the role)
#   operators/operator2.{key,crt}          CN=operator2, OU=operator (a second person)
#   operators/scraper.{key,crt}            CN=scraper, OU=scraper (reads GET /metrics only)
#   ca/NAME/                openssl ca state (index.txt, serial, crlnumber, ca.cnf)
# Test only (mkpki.sh test):
#   operators/{admin1,admin2,operator1,operator2,viewer1}.{key,crt}  OU=admin|operator|viewer
#   bad/expired.{key,crt}      CN=MON-0001, device-ca, valid 2020-01-01..2021-01-01
#   bad/notyet.{key,crt}       CN=MON-0001, device-ca, valid 2090-01-01..2091-01-01
#   bad/revoked.{key,crt}      CN=MON-0001, device-ca, listed in crl.pem
#   bad/rogue-ca.{key,crt}     unrelated self-signed CA (CN=CMS Dev Device CA, same name as ours)
#   bad/rogue.{key,crt,chain.pem}  CN=MON-0001 issued by the rogue CA
#   bad/impersonator.{key,crt} copy of MON-0002: a genuine device that claims MON-0001 in MSH
#   bad/unknown.{key,crt}      CN=MON-9999, valid device-ca cert for an unregistered serial
#   bad/server-eku.{key,crt}   CN=MON-0001, device-ca, EKU serverAuth only (not a client cert)
#   bad/operator-as-device: use operators/operator.* against the MLLP port
#   rogue-publisher.{key,pub}  an Ed25519 key pair that is not the trusted publisher
set -euo pipefail

PROG=${0##*/}
KEY_ALG=${KEY_ALG:-ec}
LEAF_DAYS=825
CA_DAYS=3650

die() {
	echo "$PROG: $*" >&2
	exit 1
}

usage() {
	sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

# --- key algorithm ----------------------------------------------------------------------------
case "$KEY_ALG" in
ec | p256 | P-256)
	GENPKEY_ARGS=(-algorithm EC -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve)
	NEWKEY_ARGS=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
	MD=sha256
	LEAF_KU=digitalSignature
	;;
rsa:*)
	bits=${KEY_ALG#rsa:}
	if ! [[ $bits =~ ^[0-9]+$ ]] || ((bits < 2048)); then
		die "KEY_ALG=$KEY_ALG: need rsa:BITS with BITS >= 2048"
	fi
	GENPKEY_ARGS=(-algorithm RSA -pkeyopt "rsa_keygen_bits:$bits")
	NEWKEY_ARGS=(-newkey "rsa:$bits")
	MD=sha256
	LEAF_KU=digitalSignature,keyEncipherment
	;;
ed25519 | ED25519)
	GENPKEY_ARGS=(-algorithm ED25519)
	NEWKEY_ARGS=(-newkey ed25519)
	MD=default # Ed25519 signs the message itself: no separate digest
	LEAF_KU=digitalSignature
	;;
*) die "KEY_ALG=$KEY_ALG: use ec, rsa:2048 or ed25519" ;;
esac

# --- helpers ----------------------------------------------------------------------------------
# All openssl chatter goes to $LOG (it never contains key material); shown only on failure.
LOG=
run() {
	if ! "$@" >>"$LOG" 2>&1; then
		echo "$PROG: failed: $*" >&2
		tail -n 20 "$LOG" >&2
		exit 1
	fi
}

# genkey FILE [ALG-ARGS...]: private key, mode 0600, created only if missing.
genkey() {
	local f=$1
	shift
	[[ -s $f ]] && {
		chmod 0600 "$f"
		return 0
	}
	local args=("${GENPKEY_ARGS[@]}")
	(($# > 0)) && args=("$@")
	(
		umask 077
		rm -f "$f.tmp"
		run openssl genpkey "${args[@]}" -out "$f.tmp"
		mv -f "$f.tmp" "$f"
	)
	chmod 0600 "$f"
	CHANGED=1
}

# pubkey KEY PUB: public half of KEY.
pubkey() {
	[[ -s $2 ]] || run openssl pkey -in "$1" -pubout -out "$2"
	chmod 0644 "$2"
}

# key_matches KEY CRT: the certificate carries KEY's public half.
key_matches() {
	[[ -s $1 && -s $2 ]] || return 1
	local a b
	a=$(openssl pkey -in "$1" -pubout 2>/dev/null) || return 1
	b=$(openssl x509 -in "$2" -noout -pubkey 2>/dev/null) || return 1
	[[ $a == "$b" ]]
}

# cert_ok KEY CRT CAFILE [UNTRUSTED [TIME]]: CRT exists, matches KEY, chains to CAFILE and
# (unless TIME=any) is valid for at least another day.
cert_ok() {
	local key=$1 crt=$2 cafile=$3 untrusted=${4:-} time=${5:-now} extra=()
	[[ -s $crt ]] || return 1
	key_matches "$key" "$crt" || return 1
	[[ -n $untrusted ]] && extra+=(-untrusted "$untrusted")
	[[ $time == any ]] && extra+=(-no_check_time)
	openssl verify -CAfile "$cafile" "${extra[@]}" "$crt" >/dev/null 2>&1 || return 1
	[[ $time == any ]] || openssl x509 -in "$crt" -noout -checkend 86400 >/dev/null 2>&1
}

# write_req_cnf: minimal config for openssl req (keeps the system openssl.cnf out of the way).
write_req_cnf() {
	REQ_CNF=$DIR/ca/req.cnf
	[[ -s $REQ_CNF ]] && return 0
	cat >"$REQ_CNF" <<'EOF'
# openssl req config used by mkpki.sh (subjects always come from -subj)
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
EOF
}

# ca_init NAME [BASE]: openssl ca state + config for the CA BASE.{key,crt} (BASE=DIR/NAME).
declare -A CA_BASE=()
ca_init() {
	local name=$1 d=$DIR/ca/$1 base=${2:-$DIR/$1}
	CA_BASE[$name]=$base
	mkdir -p "$d/new"
	[[ -f $d/index.txt ]] || : >"$d/index.txt"
	[[ -f $d/index.txt.attr ]] || echo "unique_subject = no" >"$d/index.txt.attr"
	# Serials start at a random positive 64-bit value, then count up.
	[[ -s $d/serial ]] || openssl rand -hex 8 | sed 's/^./1/' >"$d/serial"
	[[ -s $d/crlnumber ]] || echo 1000 >"$d/crlnumber"
	cat >"$d/ca.cnf.tmp" <<EOF
# openssl ca config for $name, written by mkpki.sh
[ca]
default_ca = this_ca
[this_ca]
dir = $d
database = \$dir/index.txt
serial = \$dir/serial
crlnumber = \$dir/crlnumber
new_certs_dir = \$dir/new
certificate = $base.crt
private_key = $base.key
default_md = $MD
default_days = $LEAF_DAYS
default_crl_days = 3650
policy = policy_any
preserve = yes
unique_subject = no
copy_extensions = none
email_in_dn = no
crl_extensions = ext_crl
[policy_any]
organizationName = optional
organizationalUnitName = optional
commonName = supplied
[ext_crl]
authorityKeyIdentifier = keyid:always
[ext_ca]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ext_device_ca]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ext_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,$LEAF_KU
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ext_client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,$LEAF_KU
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
	mv -f "$d/ca.cnf.tmp" "$d/ca.cnf"
}

# selfsigned_ca NAME SUBJECT [BASE]: root key + self-signed certificate (reused when valid).
selfsigned_ca() {
	local name=$1 subj=$2 base=${3:-$DIR/$1}
	genkey "$base.key"
	if ! cert_ok "$base.key" "$base.crt" "$base.crt"; then
		local ext=$DIR/ca/$name.ext
		cat >"$ext" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext_root
[dn]
CN = unused
[ext_root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
EOF
		local md=()
		[[ $MD != default ]] && md=("-$MD")
		run openssl req -x509 -new -config "$ext" -key "$base.key" -subj "$subj" \
			-days "$CA_DAYS" "${md[@]}" -out "$base.crt.tmp"
		mv -f "$base.crt.tmp" "$base.crt"
		CHANGED=1
	fi
	chmod 0644 "$base.crt"
	ca_init "$name" "$base"
}

# sign CA KEY CRT SUBJECT EXT [STARTDATE ENDDATE]: CSR from KEY, issued by CA with profile EXT.
sign() {
	local ca=$1 key=$2 crt=$3 subj=$4 ext=$5 start=${6:-} end=${7:-}
	local csr=$DIR/ca/$ca/req.csr dates=()
	[[ -n $start ]] && dates=(-startdate "$start" -enddate "$end")
	run openssl req -new -config "$REQ_CNF" -key "$key" -subj "$subj" -out "$csr"
	run openssl ca -batch -notext -config "$DIR/ca/$ca/ca.cnf" -extensions "$ext" \
		"${dates[@]}" -in "$csr" -out "$crt.tmp"
	rm -f "$csr"
	mv -f "$crt.tmp" "$crt"
	chmod 0644 "$crt"
	CHANGED=1
}

# intermediate NAME SUBJECT EXT: key + cert issued by root-ca.
intermediate() {
	local name=$1 subj=$2 ext=$3
	genkey "$DIR/$name.key"
	cert_ok "$DIR/$name.key" "$DIR/$name.crt" "$DIR/root-ca.crt" ||
		sign root-ca "$DIR/$name.key" "$DIR/$name.crt" "$subj" "$ext" "" ""
	ca_init "$name"
}

# anchor_of CA: sets ANCHOR (trusted file) and UNTRUSTED (intermediate) to verify CA's certs.
anchor_of() {
	ANCHOR=$DIR/root-ca.crt UNTRUSTED=
	case $1 in
	device-ca) UNTRUSTED=$DIR/device-ca.crt ;;
	root-ca) ;;
	*) ANCHOR=${CA_BASE[$1]}.crt ;;
	esac
}

# leaf CA BASE SUBJECT EXT: BASE.key + BASE.crt issued by CA (re-issued when stale).
leaf() {
	local ca=$1 base=$2 subj=$3 ext=$4
	anchor_of "$ca"
	genkey "$base.key"
	cert_ok "$base.key" "$base.crt" "$ANCHOR" "$UNTRUSTED" ||
		sign "$ca" "$base.key" "$base.crt" "$subj" "$ext"
}

# special CA BASE SUBJECT EXT START END: a deliberately invalid cert with fixed dates; issued
# when missing or no longer matching its key/CA (validity times not checked).
special() {
	local ca=$1 base=$2 subj=$3 ext=$4 start=$5 end=$6
	anchor_of "$ca"
	genkey "$base.key"
	if ! cert_ok "$base.key" "$base.crt" "$ANCHOR" "$UNTRUSTED" any; then
		sign "$ca" "$base.key" "$base.crt" "$subj" "$ext" "$start" "$end"
	fi
}

device() {
	local serial=$1 base=$DIR/devices/$1
	leaf device-ca "$base" "/O=CMS Dev Devices/CN=$serial" ext_client
	bundle "$base.chain.pem" "$base.crt" "$DIR/device-ca.crt"
}

operator() {
	local name=$1 role=$2
	leaf operator-ca "$DIR/operators/$name" "/O=CMS Dev Operators/OU=$role/CN=$name" ext_client
}

gencrl() {
	local crl=$DIR/crl.pem
	if [[ -s $crl && -z ${1:-} ]] &&
		openssl crl -in "$crl" -noout -CAfile "$DIR/device-ca-bundle.pem" >/dev/null 2>&1 &&
		[[ $(openssl crl -in "$crl" -noout -nextupdate 2>/dev/null | cut -d= -f2) ]]; then
		return 0
	fi
	run openssl ca -gencrl -config "$DIR/ca/device-ca/ca.cnf" -out "$crl.tmp"
	mv -f "$crl.tmp" "$crl"
	chmod 0644 "$crl"
}

# revoke CRT: mark CRT revoked in device-ca's database (once) and make sure crl.pem lists it.
revoke() {
	local crt=$1 serial out
	serial=$(openssl x509 -in "$crt" -noout -serial) || die "revoke: cannot read $crt"
	serial=${serial#serial=}
	if ! awk -F'\t' -v s="$serial" '$1 == "R" && $4 == s { f = 1 } END { exit !f }' \
		"$DIR/ca/device-ca/index.txt"; then
		run openssl ca -config "$DIR/ca/device-ca/ca.cnf" -revoke "$crt" -crl_reason keyCompromise
	fi
	out=$(openssl verify -crl_check -CRLfile "$DIR/crl.pem" -CAfile "$DIR/device-ca-bundle.pem" \
		"$crt" 2>&1 || true)
	[[ $out == *"certificate revoked"* ]] || gencrl force
}

bundle() { # bundle OUT FILE...: concatenation, rewritten only when it differs
	local out=$1
	shift
	cat "$@" >"$out.tmp"
	if cmp -s "$out.tmp" "$out"; then rm -f "$out.tmp"; else mv -f "$out.tmp" "$out"; fi
	chmod 0644 "$out"
}

write_readme() {
	{
		echo "CMS PKI generated by certs/mkpki.sh ($1). See the header of certs/mkpki.sh."
		echo "Key algorithm at creation: $KEY_ALG. Private keys (*.key) are mode 0600."
		echo
		sed -n '/^# Layout (DIR):/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
	} >"$DIR/README.txt"
}

# --- PKI recipes ------------------------------------------------------------------------------
make_dev() {
	selfsigned_ca root-ca "/O=CMS Dev/CN=CMS Dev Root CA"
	intermediate device-ca "/O=CMS Dev/CN=CMS Dev Device CA" ext_device_ca
	selfsigned_ca operator-ca "/O=CMS Dev/CN=CMS Dev Operator CA"
	bundle "$DIR/ca.pem" "$DIR/root-ca.crt"
	bundle "$DIR/device-ca-bundle.pem" "$DIR/device-ca.crt" "$DIR/root-ca.crt"
	bundle "$DIR/operator-ca-bundle.pem" "$DIR/operator-ca.crt"
	leaf root-ca "$DIR/server" "/O=CMS Dev/CN=localhost" ext_server
	local s
	for s in MON-0001 MON-0002 MON-0003; do device "$s"; done
	operator operator admin
	# A second person for the firmware two-person rule (importer != approver).
	operator operator2 operator
	# What a Prometheus presents to read GET /metrics (and nothing else).
	operator scraper scraper
	gencrl
	genkey "$DIR/publisher.key" -algorithm ED25519
	pubkey "$DIR/publisher.key" "$DIR/publisher.pub"
	# cmsd's firmware distribution key (signs per-device manifests).
	genkey "$DIR/fw-distribution.key" -algorithm ED25519
	pubkey "$DIR/fw-distribution.key" "$DIR/fw-distribution.pub"
}

make_test() {
	make_dev
	operator admin1 admin
	operator admin2 admin
	operator operator1 operator
	operator operator2 operator
	operator viewer1 viewer
	local b=$DIR/bad
	special device-ca "$b/expired" "/O=CMS Dev Devices/CN=MON-0001" ext_client \
		20200101000000Z 20210101000000Z
	special device-ca "$b/notyet" "/O=CMS Dev Devices/CN=MON-0001" ext_client \
		20900101000000Z 20910101000000Z
	leaf device-ca "$b/unknown" "/O=CMS Dev Devices/CN=MON-9999" ext_client
	# server-eku and revoked are time-valid: issue them as ordinary leaves.
	leaf device-ca "$b/server-eku" "/O=CMS Dev Devices/CN=MON-0001" ext_server
	leaf device-ca "$b/revoked" "/O=CMS Dev Devices/CN=MON-0001" ext_client
	revoke "$b/revoked.crt"
	# Rogue CA: same subject name as our device CA, different key.
	selfsigned_ca rogue-ca "/O=CMS Dev/CN=CMS Dev Device CA" "$b/rogue-ca"
	leaf rogue-ca "$b/rogue" "/O=CMS Dev Devices/CN=MON-0001" ext_client
	bundle "$b/rogue.chain.pem" "$b/rogue.crt" "$b/rogue-ca.crt"
	# Impersonation: MON-0002's genuine credentials (tests send MSH claiming MON-0001).
	if ! cmp -s "$DIR/devices/MON-0002.crt" "$b/impersonator.crt" ||
		! cmp -s "$DIR/devices/MON-0002.key" "$b/impersonator.key"; then
		(
			umask 077
			cp -f "$DIR/devices/MON-0002.key" "$b/impersonator.key"
		)
		chmod 0600 "$b/impersonator.key"
		cp -f "$DIR/devices/MON-0002.crt" "$b/impersonator.crt"
		chmod 0644 "$b/impersonator.crt"
	fi
	genkey "$DIR/rogue-publisher.key" -algorithm ED25519
	pubkey "$DIR/rogue-publisher.key" "$DIR/rogue-publisher.pub"
}

# mint PREFIX FIRST COUNT: fast bulk device certs. CSRs are made in parallel (xargs -P), then
# signed by ONE `openssl ca -infiles` run per xargs batch (a process per certificate would cost
# ~20 ms each; the batch signer ~1 ms). Existing DIR/devices/SERIAL.crt files are kept.
make_mint() {
	local prefix=$1 first=$2 count=$3 jobs=${MINT_JOBS:-$(nproc)} mode=${MINT_KEYS:-shared}
	[[ $prefix =~ ^[A-Za-z0-9._-]*$ ]] || die "mint: PREFIX may hold only [A-Za-z0-9._-]"
	[[ $first =~ ^[0-9]+$ && $count =~ ^[0-9]+$ ]] || die "mint: FIRST and COUNT must be numbers"
	[[ -s $DIR/device-ca.key && -s $DIR/device-ca.crt ]] || make_dev
	local mdir=$DIR/mint tmp
	mkdir -p "$mdir"
	tmp=$(mktemp -d "$mdir/tmp.XXXXXX")
	# shellcheck disable=SC2064 # expand now: tmp is local
	trap "rm -rf '$tmp'" EXIT
	local i serial todo=$tmp/todo
	: >"$todo"
	for ((i = first; i < first + count; i++)); do
		printf -v serial '%s%04d' "$prefix" "$i"
		[[ -s $DIR/devices/$serial.crt ]] || echo "$serial" >>"$todo"
	done
	local n t0
	n=$(wc -l <"$todo")
	t0=$(date +%s%N)
	if ((n > 0)); then
		mkdir -p "$tmp/csr" "$tmp/new"
		case $mode in
		shared)
			genkey "$mdir/$prefix.key"
			xargs -P "$jobs" -I{} openssl req -new -config "$REQ_CNF" -key "$mdir/$prefix.key" \
				-subj "/O=CMS Dev Devices/CN={}" -out "$tmp/csr/{}.csr" <"$todo" >>"$LOG" 2>&1 ||
				die "mint: CSR generation failed (see $LOG)"
			;;
		each)
			(
				umask 077
				xargs -P "$jobs" -I{} openssl req -new -config "$REQ_CNF" "${NEWKEY_ARGS[@]}" \
					-nodes -keyout "$DIR/devices/{}.key" -subj "/O=CMS Dev Devices/CN={}" \
					-out "$tmp/csr/{}.csr" <"$todo" >>"$LOG" 2>&1
			) || die "mint: key/CSR generation failed (see $LOG)"
			;;
		*) die "MINT_KEYS=$mode: use shared or each" ;;
		esac
		local before
		before=$(wc -l <"$DIR/ca/device-ca/index.txt")
		# Sequential on purpose: the openssl ca database is not safe for concurrent writers.
		sed "s|^|$tmp/csr/|; s|\$|.csr|" "$todo" |
			xargs openssl ca -batch -notext -config "$DIR/ca/device-ca/ca.cnf" \
				-extensions ext_client -outdir "$tmp/new" -infiles >>"$LOG" 2>&1 ||
			die "mint: signing failed (see $LOG)"
		# index.txt lines: status, expiry, revocation, serial (hex), file, subject. Copy each
		# new certificate (named SERIALHEX.pem) to devices/CN.crt in a single awk process.
		tail -n "+$((before + 1))" "$DIR/ca/device-ca/index.txt" |
			awk -F'\t' -v new="$tmp/new" -v out="$DIR/devices" '
				{ cn = $6; sub(/.*CN=/, "", cn); sub(/\/.*/, "", cn)
				  src = new "/" $4 ".pem"; dst = out "/" cn ".crt"; ok = 0
				  while ((getline line < src) > 0) { print line > dst; ok = 1 }
				  close(src); close(dst)
				  if (!ok) { print "missing " src > "/dev/stderr"; exit 1 } }'
		chmod 0644 "$DIR"/devices/*.crt
		if [[ $mode == shared ]]; then
			# devices/SERIAL.key -> ../mint/PREFIX.key, so that every cert has its .key beside it
			xargs -P "$jobs" -I{} ln -sfn "../mint/$prefix.key" "$DIR/devices/{}.key" <"$todo"
		else
			chmod 0600 "$DIR"/devices/*.key
		fi
	fi
	local ms=$((($(date +%s%N) - t0) / 1000000))
	printf '%s: minted %d device certs (%d already present) in %d.%03d s\n' "$PROG" "$n" \
		"$((count - n))" "$((ms / 1000))" "$((ms % 1000))"
	printf '%s: certs: %s/devices/%s%04d.crt ... ' "$PROG" "$DIR" "$prefix" "$first"
	printf '%s%04d.crt\n' "$prefix" "$((first + count - 1))"
	if [[ $mode == shared ]]; then
		echo "$PROG: shared key: $mdir/$prefix.key (devices/SERIAL.key link to it)"
	else
		echo "$PROG: keys: $DIR/devices/SERIAL.key"
	fi
}

# --- main -------------------------------------------------------------------------------------
(($# >= 2)) || usage
CMD=$1
DIR=$2
case $CMD in
dev | test) (($# == 2)) || usage ;;
mint) (($# == 5)) || usage ;;
revoke) (($# == 3)) || usage ;;
*) usage ;;
esac
command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"

umask 022
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
mkdir -p "$DIR/ca" "$DIR/devices" "$DIR/operators"
[[ $CMD == test ]] && mkdir -p "$DIR/bad"
exec 9>"$DIR/.lock"
flock 9
LOG=$DIR/ca/last-run.log
: >"$LOG"
CHANGED=0
write_req_cnf

case $CMD in
dev)
	make_dev
	write_readme dev
	;;
test)
	make_test
	write_readme test
	;;
mint)
	make_mint "$3" "$4" "$5"
	exit 0
	;;
revoke)
	[[ -s $3 ]] || die "revoke: $3: no such certificate"
	revoke "$3"
	echo "$PROG: revoked $(openssl x509 -in "$3" -noout -subject -serial | tr '\n' ' ')"
	echo "$PROG: CRL: $DIR/crl.pem"
	exit 0
	;;
esac

if ((CHANGED)); then
	echo "$PROG: $CMD PKI ready in $DIR ($KEY_ALG; layout in $DIR/README.txt)"
else
	echo "$PROG: $CMD PKI up to date in $DIR (reused)"
fi

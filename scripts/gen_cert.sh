#!/usr/bin/env bash
# gen_cert.sh - issue, re-issue, revoke and list mutual-TLS certificates for
# sqlflow-playground.
#
# Works on ./key_store (or $KEY_STORE), creating a private CA on first use:
#
#   key_store/ca/ca.crt, ca.key      the CA (10 years)
#   key_store/ca/crl.pem             the CRL to pass to the server with --crl
#   key_store/ca/openssl.cnf, index.txt, index.txt.attr, crlnumber, serial,
#   key_store/ca/newcerts/           the `openssl ca` database (for revocation)
#   key_store/NAME/NAME.crt, NAME.key
#   key_store/NAME/NAME.p12, NAME.p12.pass   with --p12: a PKCS#12 bundle for browsers
#   key_store/NAME/previous/SERIAL.crt, SERIAL.key   certificates replaced by a re-issue
#
# Requires bash 4+ and openssl (1.1.1+, tested with 3.x).
set -euo pipefail
export LC_ALL=C
umask 077

PROG=${0##*/}
NAME_RE='^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$'
SAN_RE='^(DNS:[A-Za-z0-9*]([A-Za-z0-9._-]*[A-Za-z0-9])?|IP:[0-9A-Fa-f.:]+)$'
ORG='sqlflow.tech'
CA_SUBJ="/O=${ORG}/CN=sqlflow-playground CA"
CA_DAYS=3650
CRL_DAYS=3650
DEFAULT_DAYS=825

synopsis() {
    cat <<EOF
Usage: $PROG [--force|--keep] [--rsa] [--frontend] [--days N] [--san DNS:x|IP:y ...] [--p12] NAME
       $PROG revoke NAME
       $PROG list
       $PROG crl
       $PROG -h|--help
EOF
}

usage() {
    synopsis
    cat <<EOF

Issue a certificate for NAME signed by the playground CA (created on first
use), revoke NAME's certificate, list the certificates, or regenerate the CRL
(ca/crl.pem).

Files are kept in ./key_store, or in \$KEY_STORE if set:
  ca/ca.crt ca/ca.key ca/crl.pem    CA certificate, key and CRL
  NAME/NAME.crt NAME/NAME.key       certificate and key for NAME
  NAME/NAME.p12 NAME/NAME.p12.pass  with --p12: PKCS#12 bundle and its password
  NAME/previous/SERIAL.{crt,key}    NAME's certificates replaced by a re-issue

Commands:
  NAME           issue a certificate for NAME. If NAME has a revoked or
                 expired certificate, it is moved to NAME/previous/ and a new
                 one issued. If NAME has a valid certificate, this fails
                 unless --force (or --keep) is given.
  revoke NAME    revoke NAME's certificate and rewrite ca/crl.pem. A running
                 server reads the CRL again on SIGHUP: kill -HUP <pid>
  list           each certificate's NAME, expiry date (UTC) and status:
                 valid, revoked, expired, or unknown (not in the CA database)
  crl            rewrite ca/crl.pem (it is valid for $CRL_DAYS days)

Options (when issuing):
  --force        re-issue NAME even though it has a valid certificate: the old
                 one is revoked in the CA database, moved to NAME/previous/,
                 and ca/crl.pem is rewritten (send the server SIGHUP)
  --keep         keep a valid certificate NAME already has and exit 0 (for
                 scripts that only need NAME to have one)
  --rsa          RSA-2048 key instead of ECDSA P-256
  --frontend     add OU=frontend to the subject
  --days N       validity in days (default $DEFAULT_DAYS)
  --san VALUE    extra subjectAltName (DNS:name or IP:addr); repeatable or
                 comma-separated. The cert named "server" always has
                 DNS:localhost and IP:127.0.0.1.
  --p12          also write NAME/NAME.p12: NAME's key, certificate and the CA
                 certificate in one password-protected PKCS#12 file, to import
                 into a browser (Chrome, Firefox) for the dashboard at /ui/.
                 A valid certificate NAME already has is kept and exported
                 (unless --force). The password is \$P12_PASSWORD if set, else
                 a random one written to NAME/NAME.p12.pass (mode 600).

The cert named "server" gets extendedKeyUsage serverAuth, every other cert
clientAuth only. NAME must match $NAME_RE;
"ca", "revoke", "list" and "crl" are reserved.
EOF
}

usage_error() {
    echo "$PROG: $*" >&2
    synopsis >&2
    echo "Run '$PROG --help' for details." >&2
    exit 2
}

die() {
    echo "$PROG: error: $*" >&2
    exit 1
}

# ---------------------------------------------------------------- arguments
cmd=issue
name=
rsa=0
force=0
keep=0
frontend=0
p12=0
days=$DEFAULT_DAYS
issue_opts=0
sans=()
positional=()

add_sans() {
    local item
    local -a items
    IFS=, read -r -a items <<<"$1"
    [[ ${#items[@]} -gt 0 ]] || usage_error "empty --san value"
    for item in "${items[@]}"; do
        item=${item//[[:space:]]/}
        [[ $item =~ $SAN_RE ]] || usage_error "invalid --san value '$item' (expected DNS:name or IP:addr)"
        sans+=("$item")
    done
}

while [[ $# -gt 0 ]]; do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --rsa) rsa=1; issue_opts=1 ;;
        --force) force=1; issue_opts=1 ;;
        --keep) keep=1; issue_opts=1 ;;
        --frontend) frontend=1; issue_opts=1 ;;
        --p12) p12=1; issue_opts=1 ;;
        --days | --san)
            [[ $# -ge 2 ]] || usage_error "option $1 needs a value"
            if [[ $1 == --days ]]; then days=$2; else add_sans "$2"; fi
            issue_opts=1
            shift ;;
        --days=*) days=${1#--days=}; issue_opts=1 ;;
        --san=*) add_sans "${1#--san=}"; issue_opts=1 ;;
        --) shift; positional+=("$@"); break ;;
        -*) usage_error "unknown option '$1'" ;;
        *) positional+=("$1") ;;
    esac
    shift
done

case ${positional[0]:-} in
    revoke)
        cmd=revoke
        [[ ${#positional[@]} -eq 2 ]] || usage_error "revoke needs exactly one NAME"
        name=${positional[1]} ;;
    crl | list)
        cmd=${positional[0]}
        [[ ${#positional[@]} -eq 1 ]] || usage_error "$cmd takes no arguments" ;;
    '') usage_error "missing NAME" ;;
    *)
        [[ ${#positional[@]} -eq 1 ]] || usage_error "too many arguments: ${positional[*]}"
        name=${positional[0]} ;;
esac

if [[ $cmd != issue && $issue_opts -eq 1 ]]; then
    usage_error "options --force/--keep/--rsa/--frontend/--days/--san/--p12 only apply when issuing a certificate"
fi
if [[ $force -eq 1 && $keep -eq 1 ]]; then
    usage_error "--force and --keep exclude each other"
fi
if [[ $cmd == issue || $cmd == revoke ]]; then
    [[ $name =~ $NAME_RE ]] || usage_error "invalid NAME '$name' (must match $NAME_RE)"
    case ${name,,} in
        ca | revoke | crl | list) usage_error "NAME '$name' is reserved" ;;
    esac
fi
[[ $days =~ ^[1-9][0-9]{0,5}$ ]] || usage_error "invalid --days '$days' (positive integer expected)"

# ---------------------------------------------------------------- paths
ks_arg=${KEY_STORE:-key_store}
[[ $ks_arg == / ]] || ks_arg=${ks_arg%/}   # used in messages, as the user gave it
mkdir -p -- "$ks_arg" || die "cannot create key store directory '$ks_arg'"
KS=$(cd -- "$ks_arg" && pwd -P) || die "cannot access key store directory '$ks_arg'"
CA_DIR=$KS/ca
CA_SHOW=$ks_arg/ca
# openssl.cnf refers to the CA directory through this variable, so the key
# store can be moved around.
export GEN_CERT_CA_DIR=$CA_DIR
CNF=$CA_DIR/openssl.cnf

TMP=$(mktemp -d "$KS/.gen_cert.XXXXXX") || die "cannot create a temporary directory in '$ks_arg'"
trap 'rm -rf -- "$TMP"' EXIT
LOG=$TMP/openssl.log

# Run openssl quietly; show its output only if it fails.
ossl() {
    if ! openssl "$@" >"$LOG" 2>&1 </dev/null; then
        echo "$PROG: error: 'openssl $1' failed:" >&2
        cat "$LOG" >&2
        exit 1
    fi
}

# ---------------------------------------------------------------- CA
write_config() {
    cat >"$1" <<'EOF'
# Generated by gen_cert.sh. Used as: GEN_CERT_CA_DIR=/path/to/key_store/ca \
#   openssl ca -config /path/to/key_store/ca/openssl.cnf ...
[ ca ]
default_ca = CA_default

[ CA_default ]
dir              = $ENV::GEN_CERT_CA_DIR
certificate      = $dir/ca.crt
private_key      = $dir/ca.key
database         = $dir/index.txt
new_certs_dir    = $dir/newcerts
serial           = $dir/serial
crlnumber        = $dir/crlnumber
default_md       = sha256
default_days     = 825
default_crl_days = 3650
policy           = policy_any
preserve         = yes
email_in_dn      = no
unique_subject   = no
copy_extensions  = none
crl_extensions   = crl_ext

[ policy_any ]
organizationName       = optional
organizationalUnitName = optional
commonName             = supplied

[ req ]
distinguished_name = req_dn
prompt             = no
string_mask        = utf8only

[ req_dn ]
CN = unused

[ v3_ca ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ crl_ext ]
authorityKeyIdentifier = keyid:always
EOF
}

gen_key() { # gen_key RSA|EC OUTFILE
    if [[ $1 == RSA ]]; then
        ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$2"
    else
        ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
            -pkeyopt ec_param_enc:named_curve -out "$2"
    fi
    chmod 600 "$2"
}

write_crl() {
    ossl ca -batch -config "$CNF" -gencrl -crldays "$CRL_DAYS" -out "$TMP/crl.pem"
    mv -f -- "$TMP/crl.pem" "$CA_DIR/crl.pem"
    echo "wrote $CA_SHOW/crl.pem"
}

have_ca() { [[ -f $CA_DIR/ca.crt && -f $CA_DIR/ca.key && -f $CNF ]]; }

ensure_ca() {
    local created=0
    mkdir -p -- "$CA_DIR/newcerts"
    [[ -f $CNF ]] || { write_config "$TMP/openssl.cnf"; mv -- "$TMP/openssl.cnf" "$CNF"; }
    [[ -f $CA_DIR/index.txt ]] || : >"$CA_DIR/index.txt"
    [[ -f $CA_DIR/index.txt.attr ]] || echo "unique_subject = no" >"$CA_DIR/index.txt.attr"
    [[ -f $CA_DIR/crlnumber ]] || echo 01 >"$CA_DIR/crlnumber"
    # Serials are random (openssl ca -rand_serial); this file only has to exist.
    [[ -f $CA_DIR/serial ]] || openssl rand -hex 16 >"$CA_DIR/serial"
    if [[ ! -f $CA_DIR/ca.crt ]]; then
        gen_key EC "$TMP/ca.key"
        ossl req -new -x509 -config "$CNF" -extensions v3_ca -key "$TMP/ca.key" \
            -subj "$CA_SUBJ" -days "$CA_DAYS" -sha256 -out "$TMP/ca.crt"
        mv -f -- "$TMP/ca.key" "$CA_DIR/ca.key"
        mv -f -- "$TMP/ca.crt" "$CA_DIR/ca.crt"   # last: ca.crt marks a complete CA
        created=1
        echo "wrote $CA_SHOW/ca.key"
        echo "wrote $CA_SHOW/ca.crt"
    fi
    [[ -f $CA_DIR/ca.key ]] || die "$CA_SHOW/ca.crt exists but $CA_SHOW/ca.key is missing"
    if [[ $created -eq 1 || ! -f $CA_DIR/crl.pem ]]; then
        write_crl
    fi
}

# ---------------------------------------------------------------- certificate state
cert_serial() { # cert_serial CRT SHOWN_NAME
    local serial
    serial=$(openssl x509 -in "$1" -noout -serial 2>/dev/null) || die "cannot read certificate $2"
    echo "${serial#serial=}"
}

# Prints the index.txt status letter (V, R, E) of a cert, or nothing.
db_status() {
    local serial
    serial=$(cert_serial "$1" "$2")
    [[ -f $CA_DIR/index.txt ]] || return 0
    awk -F'\t' -v s="$serial" '
        function norm(x) { x = toupper(x); sub(/^0+/, "", x); return x }
        norm($4) == norm(s) { st = $1 }
        END { if (st != "") print st }' "$CA_DIR/index.txt"
}

# The expiry date of a cert, in UTC (ISO 8601 where openssl can print it).
not_after() {
    local d
    d=$(openssl x509 -in "$1" -noout -enddate -dateopt iso_8601 2>/dev/null) ||
        d=$(openssl x509 -in "$1" -noout -enddate 2>/dev/null) || d="notAfter=?"
    echo "${d#notAfter=}"
}

# valid, revoked, expired, or unknown (not in this CA's database).
cert_state() { # cert_state CRT SHOWN_NAME
    local st
    st=$(db_status "$1" "$2")
    if [[ $st == R ]]; then
        echo revoked
    elif ! openssl x509 -in "$1" -noout -checkend 0 >/dev/null 2>&1; then
        echo expired
    elif [[ -n $st ]]; then
        echo valid
    else
        echo unknown
    fi
}

sighup_hint() {
    echo "A running server reads $CA_SHOW/crl.pem again on SIGHUP: kill -HUP <pid>"
}

# ---------------------------------------------------------------- commands
issue() {
    local dir=$KS/$name show=$ks_arg/$name subj="/O=$ORG" ku eku san="" s
    local crt=$KS/$name/$name.crt state=none revoked_old=0 serial
    local -a all_sans=()
    if [[ -f $crt ]]; then
        state=$(cert_state "$crt" "$show/$name.crt")
        if [[ $state == valid || $state == unknown ]]; then
            if [[ $keep -eq 1 || ($p12 -eq 1 && $force -eq 0) ]]; then
                echo "$show/$name.crt exists ($state, expires $(not_after "$crt")); keeping it" \
                    "($([[ $keep -eq 1 ]] && echo --keep || echo --p12))"
                return 0
            fi
            [[ $force -eq 1 ]] || die "$show/$name.crt exists ($state, expires" \
                "$(not_after "$crt")); add --force to revoke it and issue a new one" \
                "(or --keep to keep it)"
        fi
    fi
    ensure_ca
    if [[ $state == valid || $state == unknown ]]; then
        # --force. Revoke the old certificate in the CA database first, so index.txt and
        # the CRL written below both say it is no longer good. One this CA did not sign
        # (unknown, and failing verification) is only moved aside.
        if [[ $state == valid ]] ||
            openssl verify -CAfile "$CA_DIR/ca.crt" "$crt" >/dev/null 2>&1; then
            ossl ca -batch -config "$CNF" -revoke "$crt" -crl_reason superseded
            revoked_old=1
            echo "revoked $show/$name.crt"
        fi
    fi
    if [[ $frontend -eq 1 ]]; then subj+="/OU=frontend"; fi
    subj+="/CN=$name"
    ku="critical, digitalSignature"
    if [[ $rsa -eq 1 ]]; then ku+=", keyEncipherment"; fi
    if [[ $name == server ]]; then
        eku=serverAuth
        all_sans=(DNS:localhost IP:127.0.0.1)
    else
        eku=clientAuth
    fi
    for s in "${sans[@]+"${sans[@]}"}"; do
        [[ " ${all_sans[*]+"${all_sans[*]}"} " == *" $s "* ]] || all_sans+=("$s")
    done
    if [[ ${#all_sans[@]} -gt 0 ]]; then
        san=$(IFS=,; echo "subjectAltName = ${all_sans[*]}")
    fi
    cat >"$TMP/ext.cnf" <<EOF
[ leaf ]
basicConstraints       = critical, CA:FALSE
keyUsage               = $ku
extendedKeyUsage       = $eku
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
$san
EOF
    if [[ $rsa -eq 1 ]]; then gen_key RSA "$TMP/leaf.key"; else gen_key EC "$TMP/leaf.key"; fi
    ossl req -new -config "$CNF" -key "$TMP/leaf.key" -subj "$subj" -out "$TMP/leaf.csr"
    ossl ca -batch -config "$CNF" -rand_serial -notext -md sha256 -days "$days" \
        -extfile "$TMP/ext.cnf" -extensions leaf -in "$TMP/leaf.csr" -out "$TMP/leaf.crt"
    mkdir -p -- "$dir"
    if [[ $state != none ]]; then
        # Moved aside, not deleted: the old pair stays at hand (e.g. to check a log).
        serial=$(cert_serial "$crt" "$show/$name.crt")
        mkdir -p -- "$dir/previous"
        if [[ -f $dir/$name.key ]]; then mv -f -- "$dir/$name.key" "$dir/previous/$serial.key"; fi
        # A bundle of the old pair goes with it: it must not be imported by mistake.
        if [[ -f $dir/$name.p12 ]]; then mv -f -- "$dir/$name.p12" "$dir/previous/$serial.p12"; fi
        if [[ -f $dir/$name.p12.pass ]]; then
            mv -f -- "$dir/$name.p12.pass" "$dir/previous/$serial.p12.pass"
        fi
        mv -f -- "$crt" "$dir/previous/$serial.crt"
        echo "moved the $state certificate to $show/previous/$serial.crt"
    fi
    mv -f -- "$TMP/leaf.key" "$dir/$name.key"
    mv -f -- "$TMP/leaf.crt" "$dir/$name.crt"     # last: NAME.crt marks a complete cert
    echo "wrote $show/$name.key"
    echo "wrote $show/$name.crt"
    if [[ $revoked_old -eq 1 ]]; then
        write_crl
        sighup_hint
    fi
}

# NAME/NAME.p12: key, certificate and CA certificate, encrypted with a password (openssl
# 3 defaults: AES-256-CBC, PBKDF2, SHA-256 MAC), read by Chrome, Firefox and pk12util.
write_p12() {
    local dir=$KS/$name show=$ks_arg/$name pass where
    [[ -f $dir/$name.crt && -f $dir/$name.key ]] || die "no key and certificate for '$name' in $show"
    if [[ -n ${P12_PASSWORD:-} ]]; then
        pass=$P12_PASSWORD
        where="the password is \$P12_PASSWORD"
    else
        pass=$(openssl rand -base64 18) || die "openssl rand failed"
        printf '%s\n' "$pass" >"$TMP/p12.pass"
        where="password in $show/$name.p12.pass"
    fi
    GEN_CERT_P12_PASS=$pass ossl pkcs12 -export -in "$dir/$name.crt" -inkey "$dir/$name.key" \
        -certfile "$CA_DIR/ca.crt" -name "$name" -passout env:GEN_CERT_P12_PASS \
        -out "$TMP/leaf.p12"
    chmod 600 "$TMP/leaf.p12"
    if [[ -f $TMP/p12.pass ]]; then
        mv -f -- "$TMP/p12.pass" "$dir/$name.p12.pass"
    else
        rm -f -- "$dir/$name.p12.pass"   # an old random password no longer opens it
    fi
    mv -f -- "$TMP/leaf.p12" "$dir/$name.p12"
    echo "wrote $show/$name.p12 ($where)"
}

revoke() {
    local crt=$KS/$name/$name.crt show=$ks_arg/$name/$name.crt status
    have_ca || die "no CA in $CA_SHOW; nothing to revoke"
    [[ -f $crt ]] || die "no certificate for '$name' ($show not found)"
    status=$(db_status "$crt" "$show")
    if [[ $status == R ]]; then
        echo "$show is already revoked"
    else
        ossl ca -batch -config "$CNF" -revoke "$crt"
        echo "revoked $show"
    fi
    write_crl
    sighup_hint
}

list_certs() {
    local d n crt width=4
    local -a names=() expires=() states=()
    have_ca || die "no CA in $CA_SHOW; issue a certificate first"
    for d in "$KS"/*/; do
        n=${d%/}
        n=${n##*/}
        crt=$KS/$n/$n.crt
        [[ $n != ca && -f $crt ]] || continue
        names+=("$n")
        expires+=("$(not_after "$crt")")
        states+=("$(cert_state "$crt" "$ks_arg/$n/$n.crt")")
        [[ ${#n} -le $width ]] || width=${#n}
    done
    printf "%-${width}s  %-20s  %s\n" NAME EXPIRES STATUS
    for d in "${!names[@]}"; do
        printf "%-${width}s  %-20s  %s\n" "${names[d]}" "${expires[d]}" "${states[d]}"
    done
}

case $cmd in
    issue)
        issue
        if [[ $p12 -eq 1 ]]; then write_p12; fi ;;
    revoke) revoke ;;
    list) list_certs ;;
    crl)
        have_ca || die "no CA in $CA_SHOW; issue a certificate first"
        write_crl ;;
esac

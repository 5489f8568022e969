# shellcheck shell=bash
# Certificates, keys and kubeconfigs of the local cluster (sourced by hack/cluster.sh).
# Everything is generated once with openssl and kept across `down` (even `down --purge`), so a
# kubeconfig handed to a test stays valid for the life of $LORAPLANE_HOME.
#
# Three CAs, as kubeadm has them: the cluster CA also signs approved CSRs (kube-controller-manager
# --cluster-signing-*), so etcd trusts only its own CA and an approved CSR never reaches etcd; the
# front-proxy CA lets the API server vouch for users it proxies to aggregated APIs, and its
# presence in kube-system/extension-apiserver-authentication keeps the controller-manager and
# scheduler from logging a missing request-header CA at every start.

PKI_DAYS=3650
# The API server is reached as 127.0.0.1 (host tools), 10.244.0.1 (pods: the bridge address) and
# by the names an in-cluster client may build from the kubernetes Service.
APISERVER_SANS="IP:127.0.0.1,IP:10.244.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"

# pki_key FILE: an EC P-256 key (fast to generate, accepted by every component and client here).
pki_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  chmod 600 "$1"
}

# pki_ca DIR NAME CN: a self-signed CA as DIR/NAME.crt and DIR/NAME.key.
pki_ca() {
  local dir=$1 name=$2 cn=$3
  pki_key "$dir/$name.key"
  openssl req -x509 -new -key "$dir/$name.key" -subj "/CN=$cn" -days "$PKI_DAYS" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
    -out "$dir/$name.crt" 2>/dev/null
}

# pki_cert DIR CA NAME SUBJECT USAGE [SANS]: a leaf DIR/NAME.{crt,key} signed by DIR/CA.
# USAGE is serverAuth, clientAuth or both (comma-separated); SUBJECT like /O=x/CN=y.
pki_cert() {
  local dir=$1 ca=$2 name=$3 subject=$4 usage=$5 sans=${6:-}
  local ext
  ext=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    # Key identifiers: strict X.509 verifiers (Python 3.13's default among them) require them.
    echo "subjectKeyIdentifier=hash"
    echo "authorityKeyIdentifier=keyid:always"
    if [[ -n $sans ]]; then echo "subjectAltName=$sans"; fi
  } >"$ext"
  pki_key "$dir/$name.key"
  openssl req -new -key "$dir/$name.key" -subj "$subject" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca.crt" -CAkey "$dir/$ca.key" \
    -CAcreateserial -days "$PKI_DAYS" -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$ext"
}

# pki_ensure DIR: creates whatever is missing. A missing CA invalidates everything it signed.
pki_ensure() {
  local dir=$1
  mkdir -p "$dir"
  chmod 700 "$dir"
  if [[ ! -s $dir/ca.crt || ! -s $dir/ca.key ]]; then
    rm -f "$dir"/*.crt "$dir"/*.key "$dir"/*.srl "$dir"/*.pub
    pki_ca "$dir" ca loraplane-ca
  fi
  if [[ ! -s $dir/front-proxy-ca.crt || ! -s $dir/front-proxy-ca.key ]]; then
    rm -f "$dir"/front-proxy-client.*
    pki_ca "$dir" front-proxy-ca loraplane-front-proxy-ca
  fi
  if [[ ! -s $dir/etcd-ca.crt || ! -s $dir/etcd-ca.key ]]; then
    rm -f "$dir"/etcd-server.* "$dir"/apiserver-etcd-client.*
    pki_ca "$dir" etcd-ca loraplane-etcd-ca
  fi
  local spec name ca subject usage sans
  # name|ca|subject|usage|sans
  for spec in \
    "apiserver|ca|/CN=kube-apiserver|serverAuth|$APISERVER_SANS" \
    "admin|ca|/O=system:masters/CN=loraplane-admin|clientAuth|" \
    "controller-manager|ca|/CN=system:kube-controller-manager|clientAuth|" \
    "scheduler|ca|/CN=system:kube-scheduler|clientAuth|" \
    "front-proxy-client|front-proxy-ca|/CN=front-proxy-client|clientAuth|" \
    "etcd-server|etcd-ca|/CN=loraplane-etcd|serverAuth,clientAuth|IP:127.0.0.1,DNS:localhost" \
    "apiserver-etcd-client|etcd-ca|/CN=kube-apiserver-etcd-client|clientAuth|"; do
    IFS='|' read -r name ca subject usage sans <<<"$spec"
    if [[ ! -s $dir/$name.crt || ! -s $dir/$name.key ]]; then
      pki_cert "$dir" "$ca" "$name" "$subject" "$usage" "$sans"
    fi
  done
  # Service-account tokens: RSA (RS256), the algorithm every JWT consumer understands.
  if [[ ! -s $dir/sa.key || ! -s $dir/sa.pub ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/sa.key" 2>/dev/null
    chmod 600 "$dir/sa.key"
    openssl pkey -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  fi
}

# kubeconfig_write FILE SERVER CA_CRT CLIENT_CRT CLIENT_KEY USER: a self-contained kubeconfig
# (certificates embedded, so it can be copied anywhere on this machine).
kubeconfig_write() {
  local file=$1 server=$2 ca=$3 crt=$4 key=$5 user=$6
  local tmp
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: loraplane
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$ca")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$crt")
    client-key-data: $(base64 -w0 <"$key")
contexts:
- name: loraplane
  context:
    cluster: loraplane
    user: $user
current-context: loraplane
KC
  chmod 600 "$tmp"
  mv "$tmp" "$file"
}

# kubeconfigs_ensure PKI_DIR CLUSTER_DIR ADMIN_KUBECONFIG: rewritten only when missing or older
# than the certificate they embed.
kubeconfigs_ensure() {
  local pki=$1 cdir=$2 admin=$3
  local server=https://127.0.0.1:6443 spec file cert user
  for spec in "$admin|admin|loraplane-admin" \
    "$cdir/controller-manager.kubeconfig|controller-manager|system:kube-controller-manager" \
    "$cdir/scheduler.kubeconfig|scheduler|system:kube-scheduler"; do
    IFS='|' read -r file cert user <<<"$spec"
    if [[ ! -s $file || $pki/$cert.crt -nt $file || $pki/ca.crt -nt $file ]]; then
      mkdir -p "$(dirname "$file")"
      kubeconfig_write "$file" "$server" "$pki/ca.crt" "$pki/$cert.crt" "$pki/$cert.key" "$user"
    fi
  done
}

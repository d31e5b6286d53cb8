#!/usr/bin/env bash
# Validates deploy/kubernetes/: every manifest against the Kubernetes API schemas (kubernetes-validate --strict, from
# PyPI into a virtualenv under target/), the kustomization (rendered by kubectl, when installed, and validated the
# same way), and the limpet config its ConfigMap holds (limpet --check). Exits non-zero on any problem.
set -euo pipefail
cd "$(dirname "$0")/.."

k8s_version=1.30                 # the oldest Kubernetes the manifests target (preStop sleep is on from 1.30)
kv_version=1.37.0                # kubernetes-validate, which ships the schemas
dir=deploy/kubernetes
venv=target/kubernetes-validate

. scripts/lib/apt.sh
if [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$kv_version" ]; then
  ensure_apt_packages python3 python3-venv
  echo "==> kubernetes-validate $kv_version into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$kv_version"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# kubernetes-validate only warns (and exits 0) for a kind it has no schema for: a warning fails here too.
validate() {
  local out status=0
  out=$("$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$@") || status=$?
  [ -z "$out" ] || echo "$out"
  [ "$status" = 0 ] && ! grep -q '^WARN' <<<"$out"
}

manifests=()
for f in "$dir"/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
validate "${manifests[@]}"
echo "${#manifests[@]} manifests valid against Kubernetes $k8s_version"

# kustomization.yaml lists every manifest; rendered (with a stand-in admin.token) it still validates.
"$venv/bin/python" - "$dir" "${manifests[@]}" <<'EOF'
import os, sys, yaml
d, manifests = sys.argv[1], {os.path.basename(m) for m in sys.argv[2:]}
listed = set(yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))["resources"])
if listed != manifests:
    sys.exit(f"{d}/kustomization.yaml: resources {sorted(listed)} differ from the manifests {sorted(manifests)}")
EOF
if command -v kubectl >/dev/null 2>&1; then
  mkdir "$tmp/kustomize"
  cp "$dir"/*.yaml "$tmp/kustomize/"
  echo "kustomize-check-token-0123456789" > "$tmp/kustomize/admin.token"
  kubectl kustomize "$tmp/kustomize" > "$tmp/rendered.yaml"
  validate - < "$tmp/rendered.yaml"
  echo "kubectl kustomize output valid against Kubernetes $k8s_version"
else
  echo "kubectl not installed: kustomization.yaml not rendered"
fi

# The limpet.toml of the ConfigMap, with its token_file pointed at a stand-in token (the host names stay: --check
# does not resolve entries with resolve = true). First, the Deployment must mount that ConfigMap at /etc/limpet and
# the generated Secret where token_file points.
echo "k8s-config-check-token-0123456789" > "$tmp/admin.token"
"$venv/bin/python" - "$dir" "$tmp/admin.token" > "$tmp/limpet.toml" <<'EOF'
import os, re, sys, yaml
d, token = sys.argv[1:]
docs = [x for x in yaml.safe_load_all(open(os.path.join(d, "limpet.yaml"))) if x]
(cm,) = [x for x in docs if x["kind"] == "ConfigMap"]
(pod,) = [x["spec"]["template"]["spec"] for x in docs if x["kind"] == "Deployment"]
(secret,) = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))["secretGenerator"]
text = cm["data"]["limpet.toml"]
files = re.findall(r'^token_file\s*=\s*"([^"]*)"', text, flags=re.M)
if len(files) != 1:
    sys.exit(f"{d}/limpet.yaml: expected one token_file in limpet.toml, found {len(files)}")
source = {v["name"]: v.get("configMap", {}).get("name") or v.get("secret", {}).get("secretName") for v in pod["volumes"]}
mounts = {m["mountPath"]: source[m["name"]] for c in pod["containers"] for m in c.get("volumeMounts", [])}
want = {"/etc/limpet": cm["metadata"]["name"], os.path.dirname(files[0]): secret["name"]}
for path, name in want.items():
    if mounts.get(path) != name:
        sys.exit(f"{d}/limpet.yaml: the Deployment mounts {mounts.get(path)} at {path}, not {name}")
if os.path.basename(files[0]) not in [os.path.basename(f.split("=")[0]) for f in secret["files"]]:
    sys.exit(f"{d}/kustomization.yaml: secret {secret['name']} has no key {os.path.basename(files[0])}")
sys.stdout.write(text.replace(f'"{files[0]}"', f'"{token}"'))
EOF
cargo run --quiet --bin limpet -- --check -c "$tmp/limpet.toml"

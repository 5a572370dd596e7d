# Sourced by hack/rollout-test.sh and hack/fault-test.sh: a certificate directory laid out and updated as the
# kubelet does a Secret volume, so that the server's reload sees what it sees in a pod.

# publish_tls DIR SRC VERSION: VERSION's key pair (SRC/tls.crt, SRC/tls.key) becomes DIR's, atomically: new files in
# a directory of their own (DIR/..VERSION), then the `..data` symlink swapped; DIR/tls.crt and DIR/tls.key point
# through `..data`.
publish_tls() {
  local dir=$1 src=$2 version=$3 f
  mkdir -p "$dir/..$version" && cp "$src/tls.crt" "$src/tls.key" "$dir/..$version/"
  ln -sfn "..$version" "$dir/..data_tmp" && mv -T "$dir/..data_tmp" "$dir/..data"
  for f in tls.crt tls.key; do [ -e "$dir/$f" ] || ln -s "..data/$f" "$dir/$f"; done
}

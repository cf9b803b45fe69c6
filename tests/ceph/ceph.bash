# shellcheck shell=bash
# Shared by the Ceph tier's suites (tests/ceph/*.bats, after
# "load ../bats/helpers"): each file's own private single-node cluster
# (tests/ceph/cluster), and the rbd CLI on it.
#
#   CLUSTER         tests/ceph/cluster
#   CEPH_DIR        the file's cluster directory (ceph_setup_file)
#   CEPH_CONF_FILE  its ceph.conf

CLUSTER=$TOP/tests/ceph/cluster

# ceph_setup_file: start the file's cluster (in setup_file); skip the
# file when the Ceph daemons are not installed.
ceph_setup_file() {
	if ! command -v ceph-mon >/dev/null || ! command -v ceph-osd >/dev/null; then
		skip "the Ceph daemons are not installed (make deps-ceph)"
	fi
	CEPH_DIR=$(mktemp -d /var/tmp/blkstack-ceph.XXXXXX)
	export CEPH_DIR CEPH_CONF_FILE=$CEPH_DIR/ceph.conf
	"$CLUSTER" start "$CEPH_DIR" >&3 2>&3 || {
		"$CLUSTER" stop "$CEPH_DIR" || true
		return 1
	}
}

# ceph_teardown_file: stop it and remove its directory.
ceph_teardown_file() {
	[ -n "${CEPH_DIR:-}" ] || return 0
	"$CLUSTER" stop "$CEPH_DIR"
	case $CEPH_DIR in
	/var/tmp/blkstack-ceph.*) rm -rf -- "$CEPH_DIR" ;;
	esac
}

# rbdc ARGS...: the rbd CLI on the test cluster, bounded.
rbdc() {
	timeout 60 rbd -c "$CEPH_CONF_FILE" "$@"
}

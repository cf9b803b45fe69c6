# shellcheck shell=bash
# Shared setup for the bats suites: every test gets its own real xenstored
# in a private directory, and loses it in teardown.
#
#   load helpers            (in a .bats file)
#   xsd_setup / xsd_teardown are called from setup()/teardown().
#
# Variables for the tests:
#   TOP        the source tree
#   BIN        build/bin
#   SCRIPT     build/hotplug/block-stack, the hotplug script as libxl runs it
#   TOOLSTACK  build/tests/xs-toolstack, the toolstack driver
#   XSD_DIR    this test's xenstored directory (XENSTORED_PATH is exported)

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
BIN=$TOP/build/bin
SCRIPT=$TOP/build/hotplug/block-stack
TOOLSTACK=$TOP/build/tests/xs-toolstack
XSD=$TOP/tests/xenstored/xsd
export TOP BIN SCRIPT TOOLSTACK XSD

bats_require_minimum_version 1.5.0
bats_load_library bats-support
bats_load_library bats-assert
bats_load_library bats-file

# Start a private xenstored for this test.
xsd_setup() {
	XSD_DIR=$(mktemp -d "${BATS_TMPDIR:-/tmp}/blkstack-xsd.XXXXXX")
	"$XSD" start "$XSD_DIR" >/dev/null
	export XSD_DIR
	export XENSTORED_PATH="$XSD_DIR/socket"
}

xsd_teardown() {
	[ -n "${XSD_DIR:-}" ] || return 0
	"$XSD" stop "$XSD_DIR"
	rm -rf -- "$XSD_DIR"
}

# xs_read PATH: the value, or fail.
xs_read() {
	xenstore-read "$1"
}

# xs_absent PATH: succeed if the node does not exist.
xs_absent() {
	! xenstore-exists "$1" 2>/dev/null
}

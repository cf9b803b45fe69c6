# blkstack -- plain Makefile.  See README.md.
#
#   make            build everything into build/
#   make check      install test dependencies (make deps), then lint, unit
#                   tests, the xenstored self-check and the bats suites
#   make check-xen  Xen 4.17 in QEMU: xl with script=block-stack (.ci/run
#                   runs it after make check; tests/xen/README.md)
#   make bench      against the peers, side by side (bench/README.md)
#   make demo       version, end to end, against a private real xenstored
#   make install    DESTDIR and PREFIX honoured
#   make deps       check (and as root install) the Debian packages needed

PREFIX     ?= /usr/local
LIBEXECDIR ?= $(PREFIX)/libexec/blkstack
SBINDIR    ?= $(PREFIX)/sbin
XENSCRIPTS ?= /etc/xen/scripts
DESTDIR    ?=

CC         ?= cc
PKG_CONFIG ?= pkg-config
CFLAGS     ?= -O2 -g
# CI builds with -Werror; so does anyone who sets WERROR=1.
ifneq ($(filter true 1,$(CI) $(WERROR)),)
WERROR_FLAG := -Werror
endif
WARN       := -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes \
              -Wmissing-prototypes $(WERROR_FLAG)
CPPFLAGS   += -D_GNU_SOURCE -Ilibblkstack/include
ALL_CFLAGS  = $(WARN) -std=gnu11 $(CFLAGS)

# Evaluated when used (=), so 'make check' on a fresh machine can install
# the packages first.
XS_CFLAGS   = $(shell $(PKG_CONFIG) --cflags xenstore)
XS_LIBS     = $(shell $(PKG_CONFIG) --libs xenstore)
SHIM_CFLAGS = $(shell $(PKG_CONFIG) --cflags xencontrol xenevtchn xengnttab)
CMOCKA_CFLAGS = $(shell $(PKG_CONFIG) --cflags cmocka)
CMOCKA_LIBS = $(shell $(PKG_CONFIG) --libs cmocka)
# libaio ships no .pc file.
AIO_LIBS   := -laio

B := build

# ---- the library -----------------------------------------------------------
LIB_SRC := $(wildcard libblkstack/*.c libblkstack/drivers/*.c \
             libblkstack/export/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(B)/obj/%.o)
LIB     := $(B)/lib/libblkstack.a

# ---- helpers ---------------------------------------------------------------
# The control client library (helpers/common/): blkstack-ctl and the
# hotplug helper start, stop, list and talk to workers with it.
CTLLIB_SRC := helpers/common/ctl-client.c helpers/common/worker-live.c \
              helpers/common/worker-run.c helpers/common/worker-list.c \
              helpers/common/child.c helpers/common/lockfile.c \
              helpers/common/sibling.c helpers/common/json.c \
              helpers/common/worker-name.c
HP_SRC  := helpers/hotplug/hp-env.c helpers/hotplug/hp-xs.c \
           helpers/hotplug/hp-dev.c helpers/hotplug/hp-share.c \
           helpers/hotplug/hp-conf.c helpers/hotplug/hp-policy.c \
           helpers/common/worker-name.c $(CTLLIB_SRC)
HP_OBJ  := $(HP_SRC:%.c=$(B)/obj/%.o)
HOTPLUG := $(B)/bin/blkstack-hotplug
SCRIPT  := $(B)/hotplug/block-stack

# ---- tests -----------------------------------------------------------------
SHIM      := $(B)/tests/xsd-shim.so
TOOLSTACK := $(B)/tests/xs-toolstack
UNIT_SRC  := $(wildcard tests/unit/test-*.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/unit/%)

WORKER  := $(B)/bin/blkstack-worker
WORKER_SRC := helpers/worker/blkstack-worker.c helpers/worker/worker-ctl.c \
              helpers/common/json.c helpers/common/worker-name.c
PROGRAMS := $(HOTPLUG) $(WORKER)
FUZZ_CC   ?= clang
FUZZ_TIME ?= 60
FUZZ_BIN  := $(B)/fuzz/fuzz-chain-parse

TEST_BIN := $(SHIM) $(TOOLSTACK) $(UNIT_BIN) $(FUZZ_BIN)

# ---- blkstack-ctl (1/2: variables, before 'all') ---------------------------
# blkstack-ctl shares helpers/common/ with the worker.
CTL     := $(B)/bin/blkstack-ctl
CTL_OBJ := $(B)/obj/helpers/ctl/blkstack-ctl.o $(CTLLIB_SRC:%.c=$(B)/obj/%.o)
PROGRAMS += $(CTL)
# ---- end of blkstack-ctl (1/2) ---------------------------------------------

# ---- hp-dev (1/2: variables, before 'tests') --------------------------------
# helpers/hotplug/hp-dev.c uses libnl-genl-3 (the kernel NBD client's netlink).
# Everything that links hp-dev.o gets NL_LIBS: the hotplug helper and the
# unit tests (through HP_OBJ) by the target-specific appends below.
NL_CFLAGS   = $(shell $(PKG_CONFIG) --cflags libnl-genl-3.0)
NL_LIBS     = $(shell $(PKG_CONFIG) --libs libnl-genl-3.0)
$(B)/obj/helpers/hotplug/hp-dev.o: CPPFLAGS += $(NL_CFLAGS)
$(HOTPLUG): XS_LIBS += $(NL_LIBS)
$(B)/tests/unit/%: XS_LIBS += $(NL_LIBS)
# build/tests/hp-dev-tool drives helpers/hotplug/hp-dev.c for tests/bats/dev.bats.
HPDEV_TOOL := $(B)/tests/hp-dev-tool
TEST_BIN   += $(HPDEV_TOOL)
# ---- end of hp-dev (1/2) ----------------------------------------------------

.PHONY: all tests deps lint format check demo install uninstall clean
.DELETE_ON_ERROR:

all: $(LIB) $(PROGRAMS) $(SCRIPT)

tests: all $(TEST_BIN)

# A program's own folder and helpers/common/ are on its include path.
HELPER_INC := -Ihelpers/common -Ihelpers/hotplug
$(B)/obj/helpers/%.o: CPPFLAGS += -Ihelpers/common -I$(dir $<)
$(B)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $(XS_CFLAGS) -MMD -MP -c -o $@ $<

$(LIB): $(LIB_OBJ)
	@mkdir -p $(@D)
	rm -f $@
	$(AR) rcs $@ $^

HOTPLUG_OBJ := $(B)/obj/helpers/hotplug/blkstack-hotplug.o \
               $(B)/obj/helpers/hotplug/hp-actions.o
# The installed hotplug helper finds blkstack-ctl here (or beside itself).
$(B)/obj/helpers/hotplug/hp-actions.o: CPPFLAGS += -DBKS_SBINDIR='"$(SBINDIR)"'
$(HOTPLUG): $(HOTPLUG_OBJ) $(HP_OBJ) $(LIB)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(XS_LIBS) $(AIO_LIBS)

$(WORKER): $(WORKER_SRC:%.c=$(B)/obj/%.o) $(LIB)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(AIO_LIBS)

# ---- blkstack-ctl (2/2: the rule, after 'all', the default goal) ----------
$(CTL): $(CTL_OBJ) $(LIB)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(AIO_LIBS)

# The JSON unit test links the helper's json.o (added to the rule's $^).
$(B)/tests/unit/test-json: $(B)/obj/helpers/common/json.o
# ---- end of blkstack-ctl (2/2) ---------------------------------------------

# ---- hp-dev (2/2: the test tool's rule, after 'all') ------------------------
$(HPDEV_TOOL): tests/dev/hp-dev-tool.c $(B)/obj/helpers/hotplug/hp-dev.o \
               $(B)/obj/helpers/hotplug/hp-conf.o $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(HELPER_INC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(NL_LIBS)
# ---- end of hp-dev (2/2) ----------------------------------------------------

# The in-tree copy of the hotplug script points at build/bin.
$(SCRIPT): hotplug/block-stack
	@mkdir -p $(@D)
	sed 's|@HELPERDIR@|$(abspath $(B)/bin)|' $< >$@
	chmod 0755 $@

$(SHIM): tests/xenstored/xsd-shim.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $(SHIM_CFLAGS) -fPIC -shared -o $@ $< -ldl

$(TOOLSTACK): $(wildcard tests/toolstack/*.c tests/toolstack/*.h)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $(XS_CFLAGS) -o $@ $(filter %.c,$^) $(XS_LIBS)

# A unit test may add link flags with UNIT_LDFLAGS_<name> (e.g. --wrap).
UNIT_LDFLAGS_test-aioq := -Wl,--wrap=malloc -Wl,--wrap=calloc \
                          -Wl,--wrap=realloc -Wl,--wrap=free
$(B)/tests/unit/%: tests/unit/%.c $(HP_OBJ) $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(HELPER_INC) -Itests/unit $(ALL_CFLAGS) $(CMOCKA_CFLAGS) \
		$(XS_CFLAGS) -o $@ $^ $(UNIT_LDFLAGS_$(*F)) $(CMOCKA_LIBS) \
		$(XS_LIBS) $(AIO_LIBS)

# ---- fuzzing (clang, libFuzzer) ---------------------------------------------
$(FUZZ_BIN): tests/fuzz/fuzz-chain-parse.c $(LIB_SRC)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(CPPFLAGS) -g -O1 -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=undefined -o $@ $^ $(AIO_LIBS)

# make fuzz: FUZZ_TIME seconds on a scratch copy of the seed corpus.
.PHONY: fuzz
fuzz: $(FUZZ_BIN)
	rm -rf $(B)/fuzz/corpus && cp -r tests/fuzz/corpus-chain $(B)/fuzz/corpus
	$(FUZZ_BIN) -max_total_time=$(FUZZ_TIME) -max_len=8192 \
		$(B)/fuzz/corpus tests/fuzz/corpus-chain

# ---- dependencies ----------------------------------------------------------
# Debian packages: to build, to run, and to test.
DEB_BUILD := build-essential pkg-config libxen-dev libaio-dev libcmocka-dev \
             libnl-3-dev libnl-genl-3-dev
DEB_RUN   := xen-utils-4.17 xenstore-utils libnbd-bin e2fsprogs
DEB_TEST  := bats bats-assert bats-support bats-file shellcheck clang-format \
             valgrind clang libclang-rt-14-dev qemu-utils fio \
             python3 strace
DEB_PKGS  := $(DEB_BUILD) $(DEB_RUN) $(DEB_TEST)

deps:
	@DEB_PKGS="$(DEB_PKGS)" tests/deps

# ---- checks ----------------------------------------------------------------
SHELL_FILES := hotplug/block-stack tests/xenstored/xsd tests/deps tests/check \
               tests/demo .ci/run tests/bats/helpers.bash
C_FILES     := $(wildcard libblkstack/*.c libblkstack/*.h \
               libblkstack/drivers/*.c libblkstack/include/blkstack/*.h \
               libblkstack/export/*.c libblkstack/export/*.h \
               helpers/*/*.c helpers/*/*.h tests/unit/*.c tests/unit/*.h \
               tests/toolstack/*.c tests/toolstack/*.h tests/xenstored/*.c \
               tests/dev/*.c \
               tests/fuzz/*.c)

lint:
	shellcheck $(SHELL_FILES) $(XEN_SHELL_FILES) $(BENCH_SHELL_FILES)
	clang-format --dry-run -Werror $(C_FILES)

format:
	clang-format -i $(C_FILES)

check: deps
	$(MAKE) tests
	SHELL_FILES="$(SHELL_FILES) $(XEN_SHELL_FILES) $(BENCH_SHELL_FILES)" \
		C_FILES="$(C_FILES)" tests/check

demo: deps
	$(MAKE) tests
	tests/demo

# ---- Xen in QEMU (issue 6; tests/xen/README.md) -----------------------------
# Not part of 'make check' (.ci/run runs it second): boots Xen 4.17 under
# QEMU (TCG) and runs xl with script=block-stack.  Images are cached in build/xen/ (rebuilt by check-xen
# when a script or program they hold is newer).
DEB_XEN := xen-hypervisor-4.17-amd64 xen-utils-4.17 xenstore-utils \
           linux-image-amd64 busybox-static qemu-system-x86 libnbd-bin fuse3 \
           e2fsprogs cpio
XEN_IMG := $(B)/xen/dom0.cpio.gz
# For lint (shellcheck): the shell scripts, not README.md.
XEN_SHELL_FILES := tests/xen/build-images tests/xen/run tests/xen/dom0-init \
                   tests/xen/dom0-test.sh tests/xen/guest-init \
                   tests/xen/test-bootloader
# bks-records.c (the migration items' record writer) goes to clang-format.
C_FILES += $(wildcard tests/xen/*.c)
.PHONY: deps-xen check-xen

deps-xen:
	@DEB_PKGS="$(DEB_XEN)" tests/deps

$(XEN_IMG): $(wildcard tests/xen/*) $(PROGRAMS) $(SCRIPT) $(TOOLSTACK)
	tests/xen/build-images

check-xen: deps-xen
	$(MAKE) all $(TOOLSTACK)
	$(MAKE) $(XEN_IMG)
	tests/xen/run
# ---- end of Xen in QEMU ------------------------------------------------------

# ---- benchmark (issue 7; bench/README.md) ------------------------------------
# Not part of 'make check': the data path against direct I/O, qemu-nbd and
# nbdkit, v2 add against Xen's block add, and N disks at once.  As root.
# QUICK=1 for the short run.  Writes bench/results/latest.{md,json}.
BENCH_SHELL_FILES := bench/run
.PHONY: bench
bench: deps
	$(MAKE) all tests
	QUICK=$(QUICK) bench/run
# ---- end of benchmark --------------------------------------------------------

# ---- install ---------------------------------------------------------------
install: all
	install -d $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(XENSCRIPTS) \
		$(DESTDIR)$(SBINDIR)
	install -m 0755 $(HOTPLUG) $(DESTDIR)$(LIBEXECDIR)/blkstack-hotplug
	# blkstack-ctl starts the blkstack-worker that stands beside it.
	install -m 0755 $(WORKER) $(CTL) $(DESTDIR)$(SBINDIR)/
	sed 's|@HELPERDIR@|$(LIBEXECDIR)|' hotplug/block-stack \
		>$(DESTDIR)$(XENSCRIPTS)/block-stack
	chmod 0755 $(DESTDIR)$(XENSCRIPTS)/block-stack

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/blkstack-worker $(DESTDIR)$(SBINDIR)/blkstack-ctl
	rm -f $(DESTDIR)$(LIBEXECDIR)/blkstack-hotplug \
		$(DESTDIR)$(XENSCRIPTS)/block-stack
	-rmdir $(DESTDIR)$(LIBEXECDIR)

clean:
	rm -rf $(B)

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)

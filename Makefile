# blkstack -- plain Makefile.  See README.md.
#
#   make            build everything into build/
#   make check      install test dependencies (make deps), then lint, unit
#                   tests, the xenstored self-check and the bats suites
#   make check-ceph the rbd: sink against a private single-node Ceph
#                   cluster (.ci/run runs it after make check)
#   make check-xen  Xen 4.17 and 4.20 in QEMU: xl with script=block-stack (.ci/run
#                   runs it after make check-ceph; tests/xen/README.md)
#   make bench      against the peers, side by side (bench/README.md)
#   make demo       version, end to end, against a private real xenstored
#   make install    DESTDIR and PREFIX honoured
#   make man        the man pages (build/man/)
#   make deb        the Debian package (build/deb/blkstack.deb; check-deb)
#   make deps       check (and as root install) the Debian packages needed

PREFIX     ?= /usr/local
LIBEXECDIR ?= $(PREFIX)/libexec/blkstack
SBINDIR    ?= $(PREFIX)/sbin
# The driver modules (libblkstack/driver-module.h): PREFIX/lib/blkstack/
# modules, which is also SBINDIR/../lib/blkstack/modules.
MODULEDIR  ?= $(PREFIX)/lib/blkstack/modules
# blkstack-xenbus.service (systemd looks in /usr/local/lib/systemd/system
# too; the package puts it in /lib/systemd/system).
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
XENSCRIPTS ?= /etc/xen/scripts
MANDIR     ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
# The programs read /etc/blkstack.conf; SYSCONFDIR only moves where
# make install puts its copy (which never replaces an existing one).
SYSCONFDIR ?= /etc
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

B := build

# 'make' builds everything; rules may follow the variables they use.
.DEFAULT_GOAL := all
.PHONY: all tests deps lint format check demo install uninstall clean man
.DELETE_ON_ERROR:
.SECONDEXPANSION:

# ---- compiling: one rule, dependency tracking for everything ----------------
# Every C file compiles to $(B)/obj/<its path>.o with -MMD -MP; the .d files
# are included at the end, so touching a header rebuilds what includes it.
$(B)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

# A program's own folder and helpers/common/ are on its include path; tests
# of helper code get the helper folders (HELPER_INC).
$(B)/obj/helpers/%.o: CPPFLAGS += -Ihelpers/common -I$(dir $<)
HELPER_INC := -Ihelpers/common -Ihelpers/hotplug -Ihelpers/worker

# ---- linking: one recipe for every binary -----------------------------------
# $(call link,LIBS): the rule's objects and archives, in prerequisite order,
# then LIBS (the binary's own libraries, nothing else).
define link
@mkdir -p $(@D)
$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $(filter %.o %.ld %.a,$^) $(1)
endef

# $(call objs,SOURCES): their objects.
objs = $(patsubst %.c,$(B)/obj/%.o,$(1))

# Libraries, each only on what links the code that needs it.
# libaio (no .pc file): the aio driver, in libblkstack.a; LIB_LIBS is what
# linking $(LIB) needs.
AIO_LIBS   := -laio
# liburing: the file queue's io_uring engine (aioq-uring.c, io-engine.c).
URING_LIBS  = $(shell $(PKG_CONFIG) --libs liburing)
# zlib and zstd: the qcow2 driver's compressed clusters (read only).
ZLIB_LIBS   = $(shell $(PKG_CONFIG) --libs zlib libzstd)
# libnbd: the nbd: sink (drivers/nbd.c), a client of remote NBD servers:
# a module (below), the only thing that links it.
NBD_CFLAGS  = $(shell $(PKG_CONFIG) --cflags libnbd)
MODULE_LIBS_nbd = $(shell $(PKG_CONFIG) --libs libnbd)
$(B)/obj/libblkstack/drivers/nbd.o: CPPFLAGS += $(NBD_CFLAGS)
# librbd and librados (no .pc files in Debian 12's librbd-dev): the rbd:
# sink (drivers/rbd.c), Ceph RBD images: a module too.
MODULE_LIBS_rbd := -lrbd -lrados
LIB_LIBS    = $(AIO_LIBS) $(URING_LIBS) $(ZLIB_LIBS)
# libnl-genl-3: the kernel NBD client's netlink, helpers/common/
# nbd-kernel.c, and nothing else: what links it (the hotplug helper, the
# supervisor, blkstack-ctl reconnect) adds NL_LIBS.
NL_CFLAGS   = $(shell $(PKG_CONFIG) --cflags libnl-genl-3.0)
NL_LIBS     = $(shell $(PKG_CONFIG) --libs libnl-genl-3.0)
$(B)/obj/helpers/common/nbd-kernel.o: CPPFLAGS += $(NL_CFLAGS)
$(B)/obj/helpers/hotplug/%.o: CPPFLAGS += $(XS_CFLAGS)

# The hotplug helper's dom0 devices (hp-dev.h): hp-dev.c and its dev-*.c
# pieces (with helpers/common/, for the configuration file); they include
# the netlink code (NL_LIBS).
HP_DEV_OBJ := $(call objs,helpers/hotplug/hp-dev.c \
                $(sort $(wildcard helpers/hotplug/dev-*.c)))

# The blkif ring export's real grant ops (libblkstack/export/blkif/
# grant-xen.c) need libxengnttab and libxenevtchn: an object of their own,
# outside libblkstack.a, for what serves a ring (the unit test that links
# it now, the worker later) -- nothing else gets those libraries.
BLKIF_XEN_SRC    := libblkstack/export/blkif/grant-xen.c
BLKIF_XEN_OBJ    := $(call objs,$(BLKIF_XEN_SRC))
BLKIF_XEN_CFLAGS  = $(shell $(PKG_CONFIG) --cflags xengnttab xenevtchn)
BLKIF_XEN_LIBS    = $(shell $(PKG_CONFIG) --libs xengnttab xenevtchn)
$(BLKIF_XEN_OBJ): CPPFLAGS += $(BLKIF_XEN_CFLAGS)

# ---- driver modules (libblkstack/driver-module.h, drivers.def) ------------
# A sink whose client library is large is a shared object of its own,
# loaded only by a worker whose chain names it: linked into every worker,
# libnbd and librbd made each one 24 MiB resident instead of 2.5
# (bench/README.md, "Scale").  Each links its client library; it takes
# libblkstack's functions from the program that loads it, which links and
# exports exactly those (MODULE_IMPORTS: the modules' undefined symbols
# that libblkstack.a defines, as a linker script of EXTERN()s that pulls
# them in and a --dynamic-list that exports them).
MODULE_NAMES := nbd rbd
MODULE_SRC   := $(MODULE_NAMES:%=libblkstack/drivers/%.c)
MODULE_OBJ   := $(call objs,$(MODULE_SRC))
MODULES      := $(MODULE_NAMES:%=$(B)/lib/blkstack/modules/%.so)
MODULE_IMPORTS_LD   := $(B)/gen/module-imports.ld
MODULE_IMPORTS_LIST := $(B)/gen/module-imports.list
MODULE_LDFLAGS = -Wl,--dynamic-list=$(MODULE_IMPORTS_LIST)
$(MODULE_OBJ): ALL_CFLAGS += -fPIC
$(B)/lib/blkstack/modules/%.so: $(B)/obj/libblkstack/drivers/%.o
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -shared -o $@ $< $(MODULE_LIBS_$*)

# ---- the library: every .c under libblkstack/, sub-folders too --------------
LIB_SRC := $(sort $(filter-out $(BLKIF_XEN_SRC) $(MODULE_SRC),$(shell find libblkstack -name '*.c')))
LIB_OBJ := $(call objs,$(LIB_SRC))
LIB     := $(B)/lib/libblkstack.a

$(MODULE_IMPORTS_LD): $(MODULE_OBJ) $(LIB)
	@mkdir -p $(@D)
	nm -u --format=just-symbols $(MODULE_OBJ) | sort -u >$@.undef
	nm -g --defined-only --format=just-symbols $(LIB) | sort -u >$@.def
	comm -12 $@.undef $@.def >$@.syms
	@test -s $@.syms || { echo "$@: the modules import nothing?" >&2; exit 1; }
	{ echo '{'; sed 's/.*/  &;/' $@.syms; echo '};'; } >$(MODULE_IMPORTS_LIST)
	{ echo '/* Generated: libblkstack functions the driver modules call. */'; \
	  printf 'EXTERN(%s)\n' $$(cat $@.syms); } >$@
	rm -f $@.undef $@.def $@.syms
$(MODULE_IMPORTS_LIST): $(MODULE_IMPORTS_LD)

# A section per function and object, so that a program linking with
# --gc-sections (PARSE_ONLY_LDFLAGS) keeps only what it calls: blkstack-ctl
# and blkstack-hotplug only parse chains (the parse-only driver table,
# libblkstack/drivers-parse.c), keep none of the data path and link no
# libaio (tests/bats/parse-only.bats).
$(LIB_OBJ): ALL_CFLAGS += -ffunction-sections -fdata-sections
PARSE_ONLY_LDFLAGS := -Wl,--gc-sections

$(LIB): $(LIB_OBJ)
	@mkdir -p $(@D)
	rm -f $@
	$(AR) rcs $@ $^

# ---- the version: one place (tools/version: git describe, else VERSION) ----
# Written on every make, replaced only when it changed: a new commit
# rebuilds version.o alone and relinks the programs.
VERSION_H := $(B)/gen/blkstack-version.h
.PHONY: FORCE
$(VERSION_H): FORCE
	@mkdir -p $(@D)
	@v=$$(tools/version) && \
	printf '#define BKS_VERSION "%s"\n' "$$v" >$@.new && \
	if cmp -s $@.new $@; then rm -f $@.new; \
	else mv -f $@.new $@; echo "version: $$v"; fi
$(B)/obj/helpers/common/version.o: $(VERSION_H)
$(B)/obj/helpers/common/version.o: CPPFLAGS += -I$(B)/gen

# The install paths compiled or written into files (the hotplug helper's
# BKS_SBINDIR, the man pages): rewritten when they change, so that what
# uses them is rebuilt for another PREFIX.
PATHS_STAMP := $(B)/gen/paths
$(PATHS_STAMP): FORCE
	@mkdir -p $(@D)
	@printf 'LIBEXECDIR=%s\nSBINDIR=%s\nMODULEDIR=%s\n' '$(LIBEXECDIR)' '$(SBINDIR)' '$(MODULEDIR)' >$@.new && \
	if cmp -s $@.new $@; then rm -f $@.new; else mv -f $@.new $@; fi

# Where modules are looked for last (driver-module.c).
$(B)/obj/libblkstack/driver-module.o: CPPFLAGS += -DBKS_MODULEDIR='"$(MODULEDIR)"'
$(B)/obj/libblkstack/driver-module.o: $(PATHS_STAMP)

# ---- helpers/common/: what the programs share, as an archive ----------------
# A program links it whole; the linker takes only the members it uses.
COMMON_SRC := $(sort $(wildcard helpers/common/*.c))
COMMON     := $(B)/lib/libhelpers-common.a

$(COMMON): $(call objs,$(COMMON_SRC))
	@mkdir -p $(@D)
	rm -f $@
	$(AR) rcs $@ $^

# ---- the programs: an object list and a library list each -------------------
HOTPLUG      := $(B)/bin/blkstack-hotplug
HOTPLUG_OBJ  := $(call objs,$(sort $(wildcard helpers/hotplug/*.c))) \
                $(COMMON) $(LIB)
HOTPLUG_LIBS  = $(PARSE_ONLY_LDFLAGS) $(XS_LIBS) $(NL_LIBS)
# The installed hotplug helper finds blkstack-worker here (or beside itself).
$(B)/obj/helpers/hotplug/hp-actions.o: CPPFLAGS += -DBKS_SBINDIR='"$(SBINDIR)"'
# ... and blkstack-fuse (dev-fuse.c) the same way.
$(B)/obj/helpers/hotplug/dev-fuse.o: CPPFLAGS += -DBKS_SBINDIR='"$(SBINDIR)"'
$(B)/obj/helpers/hotplug/hp-actions.o $(B)/obj/helpers/hotplug/dev-fuse.o: \
	$(PATHS_STAMP)

WORKER       := $(B)/bin/blkstack-worker
# The worker serves the guest's blkif ring too (worker-blkif.c): the
# ring core's private headers, and its libxengnttab/libxenevtchn ops.
# It loads the driver modules: their imports come before the library.
WORKER_OBJ   := $(call objs,$(sort $(wildcard helpers/worker/*.c))) \
                $(BLKIF_XEN_OBJ) $(MODULE_IMPORTS_LD) $(COMMON) $(LIB)
WORKER_LIBS   = $(MODULE_LDFLAGS) $(LIB_LIBS) $(BLKIF_XEN_LIBS)
$(B)/obj/helpers/worker/%.o: CPPFLAGS += -Ilibblkstack/export/blkif

CTL          := $(B)/bin/blkstack-ctl
CTL_OBJ      := $(call objs,$(sort $(wildcard helpers/ctl/*.c))) \
                $(COMMON) $(LIB)
CTL_LIBS      = $(PARSE_ONLY_LDFLAGS) $(NL_LIBS)

# The worker's supervisor (docs/control-protocol.txt, "Supervision"):
# libxenstore for the hotplug-error it writes when it gives up, netlink
# for the kernel NBD devices it reconnects (helpers/common/nbd-kernel.c).
SUPERVISOR      := $(B)/bin/blkstack-supervisor
SUPERVISOR_OBJ  := $(call objs,$(sort $(wildcard helpers/supervisor/*.c))) \
                   $(COMMON) $(LIB)
SUPERVISOR_LIBS  = $(PARSE_ONLY_LDFLAGS) $(XS_LIBS) $(NL_LIBS)
$(B)/obj/helpers/supervisor/%.o: CPPFLAGS += $(XS_CFLAGS)

# blkstack-xenbus: the xenstore side of the vbd3 backend (libxenstore).
XENBUS          := $(B)/bin/blkstack-xenbus
XENBUS_OBJ      := $(call objs,$(sort $(wildcard helpers/xenbus/*.c))) \
                   $(COMMON) $(LIB)
XENBUS_LIBS      = $(PARSE_ONLY_LDFLAGS) $(XS_LIBS)
$(B)/obj/helpers/xenbus/%.o: CPPFLAGS += $(XS_CFLAGS)

# blkstack-fuse: the loop fallback's FUSE server (libfuse3).
FUSE_CFLAGS   = $(shell $(PKG_CONFIG) --cflags fuse3)
FUSE_LIBS     = $(shell $(PKG_CONFIG) --libs fuse3)
FUSE         := $(B)/bin/blkstack-fuse
FUSE_OBJ     := $(call objs,$(sort $(wildcard helpers/fuse/*.c))) \
                $(COMMON) $(LIB)
$(B)/obj/helpers/fuse/%.o: CPPFLAGS += $(FUSE_CFLAGS)
$(FUSE): $(FUSE_OBJ)
	$(call link,$(PARSE_ONLY_LDFLAGS) $(FUSE_LIBS))

# blkstack-img: create, info, check and map images (raw, qcow2, vhd); it
# opens chains through the library for map, so it links the data path.
IMG          := $(B)/bin/blkstack-img
IMG_OBJ      := $(call objs,$(sort $(wildcard helpers/img/*.c))) \
                $(MODULE_IMPORTS_LD) $(COMMON) $(LIB)
$(IMG): $(IMG_OBJ)
	$(call link,$(MODULE_LDFLAGS) $(LIB_LIBS))

# (blkstack-img once helpers/img/ has its sources.)
IMG_BUILT := $(if $(wildcard helpers/img/*.c),$(IMG))
PROGRAMS := $(HOTPLUG) $(WORKER) $(CTL) $(SUPERVISOR) $(XENBUS) $(FUSE) \
            $(IMG_BUILT)

$(HOTPLUG): $(HOTPLUG_OBJ)
	$(call link,$(HOTPLUG_LIBS))
$(WORKER): $(WORKER_OBJ)
	$(call link,$(WORKER_LIBS))
$(CTL): $(CTL_OBJ)
	$(call link,$(CTL_LIBS))
$(SUPERVISOR): $(SUPERVISOR_OBJ)
	$(call link,$(SUPERVISOR_LIBS))
$(XENBUS): $(XENBUS_OBJ)
	$(call link,$(XENBUS_LIBS))

# The in-tree copy of the hotplug script points at build/bin.
# blkstack-xenbus's systemd unit, for the install paths.
XENBUS_UNIT := $(B)/etc/blkstack-xenbus.service
$(XENBUS_UNIT): etc/blkstack-xenbus.service $(PATHS_STAMP)
	@mkdir -p $(@D)
	sed 's|@SBINDIR@|$(SBINDIR)|g' $< >$@

SCRIPT  := $(B)/hotplug/block-stack
$(SCRIPT): hotplug/block-stack
	@mkdir -p $(@D)
	sed 's|@HELPERDIR@|$(abspath $(B)/bin)|' $< >$@
	chmod 0755 $@

all: $(LIB) $(PROGRAMS) $(MODULES) $(SCRIPT) $(XENBUS_UNIT)

# ---- man pages: one source format, scdoc ------------------------------------
# docs/man/NAME.N.scd, written as man pages; blkstack-chains(7) and
# blkstack-img(1) are docs/chains.txt and docs/blkstack-img.txt themselves,
# turned into scdoc by tools/txt2scd, so text and page cannot disagree.
# @LIBEXECDIR@ and @SBINDIR@ become the install paths.
SCDOC      ?= scdoc
MAN_SRC    := $(sort $(wildcard docs/man/*.scd))
MAN_TXT    := blkstack-chains.7 blkstack-img.1
MAN_PAGES  := $(MAN_SRC:docs/man/%.scd=$(B)/man/%) $(addprefix $(B)/man/,$(MAN_TXT))
MAN_SED     = sed -e 's|@LIBEXECDIR@|$(LIBEXECDIR)|g' -e 's|@SBINDIR@|$(SBINDIR)|g'

$(B)/man/%: docs/man/%.scd $(PATHS_STAMP)
	@mkdir -p $(@D)
	$(MAN_SED) $< | $(SCDOC) >$@

$(B)/man/%.scd: tools/txt2scd
	@mkdir -p $(@D)
	awk -f tools/txt2scd -v page=$(basename $*) -v section=$(subst .,,$(suffix $*)) \
		-v what='$(MAN_WHAT_$*)' -v also='$(MAN_ALSO_$*)' $(MAN_FROM_$*) >$@
$(B)/man/blkstack-chains.7.scd: docs/chains.txt
MAN_FROM_blkstack-chains.7 := docs/chains.txt
MAN_WHAT_blkstack-chains.7 := chains of layered drivers, and every driver
MAN_ALSO_blkstack-chains.7 := blkstack-worker(8), blkstack-ctl(8), block-stack(8), blkstack-img(1)
$(B)/man/blkstack-img.1.scd: docs/blkstack-img.txt
MAN_FROM_blkstack-img.1 := docs/blkstack-img.txt
MAN_WHAT_blkstack-img.1 := create, inspect, check and map disk images
MAN_ALSO_blkstack-img.1 := blkstack-chains(7), blkstack-ctl(8), qemu-img(1)
$(addprefix $(B)/man/,$(MAN_TXT)): $(B)/man/%: $(B)/man/%.scd
	$(SCDOC) <$< >$@

man: $(MAN_PAGES)

# ---- tests -----------------------------------------------------------------
# The harness xenstored's shim (LD_PRELOADed into xenstored).
SHIM      := $(B)/tests/xsd-shim.so
SHIM_OBJ  := $(B)/obj/tests/xenstored/xsd-shim.o
$(SHIM_OBJ): CPPFLAGS += $(SHIM_CFLAGS)
$(SHIM_OBJ): ALL_CFLAGS += -fPIC
$(SHIM): $(SHIM_OBJ)
	$(call link,-shared -ldl)

# The toolstack driver: every .c in tests/toolstack/.
TOOLSTACK     := $(B)/tests/xs-toolstack
TOOLSTACK_OBJ := $(call objs,$(sort $(wildcard tests/toolstack/*.c)))
$(B)/obj/tests/toolstack/%.o: CPPFLAGS += $(XS_CFLAGS)
$(TOOLSTACK): $(TOOLSTACK_OBJ)
	$(call link,$(XS_LIBS))

# build/tests/hp-dev-tool drives helpers/hotplug/hp-dev.h for tests/bats/dev.bats.
HPDEV_TOOL     := $(B)/tests/hp-dev-tool
HPDEV_TOOL_OBJ := $(B)/obj/tests/dev/hp-dev-tool.o $(HP_DEV_OBJ) $(COMMON) $(LIB)
$(B)/obj/tests/dev/%.o: CPPFLAGS += $(HELPER_INC)
$(HPDEV_TOOL): $(HPDEV_TOOL_OBJ) | $(B)/tests/blkstack-fuse
	$(call link,$(NL_LIBS) $(LIB_LIBS))
# hp-dev-tool finds blkstack-fuse beside itself (sibling_path).
$(B)/tests/blkstack-fuse: | $(FUSE)
	@mkdir -p $(@D)
	ln -sfn ../bin/blkstack-fuse $@

# Unit tests: tests/unit/test-NAME.c links libblkstack.a and, if it tests
# helper code, the helper objects in UNIT_OBJ_test-NAME (default none) and
# their libraries in UNIT_LIBS_test-NAME; UNIT_LDFLAGS_test-NAME adds link
# flags (e.g. --wrap).  A new test of the library needs no line here.
UNIT_SRC  := $(sort $(wildcard tests/unit/test-*.c))
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/unit/%)
# Made by a pattern chain, so make would delete them as intermediates and
# rebuild every test on the next run: keep them.
.SECONDARY: $(UNIT_SRC:tests/unit/%.c=$(B)/obj/tests/unit/%.o)
$(B)/obj/tests/unit/%.o: CPPFLAGS += $(HELPER_INC) -Itests/unit $(CMOCKA_CFLAGS)

# test-hp-dev: the record and the choice, no devices (no netlink).
UNIT_OBJ_test-hp-dev    := $(addprefix $(B)/obj/helpers/hotplug/, \
                             dev-record.o dev-choose.o) $(COMMON)
UNIT_OBJ_test-hp-env    := $(B)/obj/helpers/hotplug/hp-env.o
# test-hp-vbd3: a vbd3 disk's chain from its params.
UNIT_OBJ_test-hp-vbd3   := $(B)/obj/helpers/hotplug/hp-vbd3.o
UNIT_OBJ_test-hp-share  := $(addprefix $(B)/obj/helpers/hotplug/, \
                             hp-share.o hp-policy.o) $(COMMON)
UNIT_OBJ_test-json      := $(COMMON)
UNIT_OBJ_test-rundir    := $(COMMON)
UNIT_OBJ_test-small-file := $(COMMON)
# test-dec: the strict decimal parser (helpers/common/dec.c).
UNIT_OBJ_test-dec       := $(COMMON)
# test-ctl-client: the control client library, against real workers.
UNIT_OBJ_test-ctl-client := $(COMMON)
UNIT_OBJ_test-worker-ctl := $(addprefix $(B)/obj/helpers/worker/, \
                              worker-ctl.o worker-live.o worker-job.o \
                              worker-state.o worker-blkif.o) \
                            $(BLKIF_XEN_OBJ) $(COMMON)
UNIT_LIBS_test-worker-ctl  = $(BLKIF_XEN_LIBS)
# test-worker-blkif: blkif-connect's arguments (worker-blkif.c).
UNIT_OBJ_test-worker-blkif := $(addprefix $(B)/obj/helpers/worker/, \
                                worker-blkif.o worker-state.o) \
                              $(BLKIF_XEN_OBJ) $(COMMON)
UNIT_LIBS_test-worker-blkif  = $(BLKIF_XEN_LIBS)
$(B)/obj/tests/unit/test-worker-blkif.o: \
	CPPFLAGS += -Ihelpers/worker -Ilibblkstack/export/blkif
# test-sup: the supervisor's restart policy, keys and channel messages.
UNIT_OBJ_test-sup := $(addprefix $(B)/obj/helpers/supervisor/, \
                       sup-policy.o sup-hang.o) $(COMMON)
$(B)/obj/tests/unit/test-sup.o: CPPFLAGS += -Ihelpers/supervisor
# test-xb-state: the vbd3 backend's state model and id parser.
UNIT_OBJ_test-xb-state := $(addprefix $(B)/obj/helpers/xenbus/, \
                            xb-state.o xb-dev.o xb-ring.o) $(COMMON)
UNIT_LIBS_test-xb-state = $(XS_LIBS)
$(B)/obj/tests/unit/test-xb-state.o: CPPFLAGS += -Ihelpers/xenbus $(XS_CFLAGS)
# test-xb-ring: the connect step's checks of the frontend's ring nodes.
UNIT_OBJ_test-xb-ring := $(addprefix $(B)/obj/helpers/xenbus/, \
                           xb-ring.o xb-dev.o xb-state.o) $(COMMON)
UNIT_LIBS_test-xb-ring = $(XS_LIBS)
$(B)/obj/tests/unit/test-xb-ring.o: CPPFLAGS += -Ihelpers/xenbus $(XS_CFLAGS)
# test-nbd-kernel: the kernel NBD keys; reconnect finding no device.
UNIT_OBJ_test-nbd-kernel := $(COMMON)
UNIT_LIBS_test-nbd-kernel = $(NL_LIBS)
# test-img-vhd: blkstack-img's vhd format (create, info, check).
UNIT_OBJ_test-img-vhd := $(B)/obj/helpers/img/img-vhd.o $(COMMON)
# test-fuse-transport checks the export's own uring-abi.h.
$(B)/obj/tests/unit/test-fuse-transport.o: CPPFLAGS += -Ilibblkstack/export/fuse
$(B)/obj/tests/unit/test-img-vhd.o: CPPFLAGS += -Ihelpers/img
# test-blkif, test-blkif-xen: the ring export's core (its headers are in
# its folder); -xen links the real grant ops, which fail to open here.
$(B)/obj/tests/unit/test-blkif.o $(B)/obj/tests/unit/test-blkif-xen.o: \
	CPPFLAGS += -Ilibblkstack/export/blkif
UNIT_OBJ_test-blkif-xen  := $(BLKIF_XEN_OBJ)
UNIT_LIBS_test-blkif-xen  = $(BLKIF_XEN_LIBS)
# test-driver-module: the loader, on this build's modules and on bad ones
# (tests/unit/module-bad.c, as build/tests/modules/KIND/nbd.so); it loads
# modules, so it exports their imports as the worker does.
TEST_MODULE_KINDS := abi desc nosym
TEST_MODULES := $(TEST_MODULE_KINDS:%=$(B)/tests/modules/%/nbd.so)
$(B)/tests/modules/%/nbd.so: tests/unit/module-bad.c
	@mkdir -p $(@D) $(B)/obj/tests/modules
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -DBAD_KIND_$* -fPIC -shared -MMD -MP \
		-MF $(B)/obj/tests/modules/$*.d -MT $@ -o $@ $<
# Built by a pattern rule for a prerequisite only: make would delete them
# as intermediates (a fresh clone's make check did) unless kept.
.SECONDARY: $(TEST_MODULES)
UNIT_OBJ_test-driver-module := $(MODULE_IMPORTS_LD) $(MODULES) $(TEST_MODULES)
UNIT_LDFLAGS_test-driver-module = $(MODULE_LDFLAGS)
UNIT_LDFLAGS_test-aioq  := -Wl,--wrap=malloc -Wl,--wrap=calloc \
                           -Wl,--wrap=realloc -Wl,--wrap=free

$(B)/tests/unit/%: $(B)/obj/tests/unit/%.o $$(UNIT_OBJ_$$*) $(LIB)
	$(call link,$(UNIT_LDFLAGS_$*) $(UNIT_LIBS_$*) $(CMOCKA_LIBS) $(LIB_LIBS))

# ---- fuzzing (clang, libFuzzer) ---------------------------------------------
# One target per tests/fuzz/fuzz-NAME.c, each with its seed corpus in
# tests/fuzz/corpus-NAME/, linked with the whole library (and the helper
# objects in FUZZ_OBJ_fuzz-NAME, default none), instrumented: objects in
# $(B)/fuzz/obj/, tracked like the others.
FUZZ_CC     ?= clang
FUZZ_TIME   ?= 60
FUZZ_SRC    := $(sort $(wildcard tests/fuzz/fuzz-*.c))
FUZZ_BINS   := $(FUZZ_SRC:tests/fuzz/%.c=$(B)/fuzz/%)
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_LIB_OBJ := $(patsubst %.c,$(B)/fuzz/obj/%.o,$(LIB_SRC))
fuzzobjs     = $(patsubst %.c,$(B)/fuzz/obj/%.o,$(1))

$(B)/fuzz/obj/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(CPPFLAGS) -g -O1 -fsanitize=fuzzer-no-link $(FUZZ_SAN) \
		-MMD -MP -c -o $@ $<
$(B)/fuzz/obj/helpers/%.o: CPPFLAGS += -Ihelpers/common -I$(dir $<)
$(B)/fuzz/obj/tests/fuzz/%.o: CPPFLAGS += -Ihelpers/common -Ihelpers/img

# fuzz-qcow2: blkstack-img's qcow2 reader (info, check, repair).
FUZZ_OBJ_fuzz-qcow2 := $(call fuzzobjs,helpers/img/img-qcow2.c \
                       helpers/common/json.c)

# fuzz-vhd: check of blkstack-img's vhd format on the input as a file.
FUZZ_OBJ_fuzz-vhd := $(call fuzzobjs,helpers/img/img-vhd.c helpers/common/json.c)

$(B)/fuzz/%: $(B)/fuzz/obj/tests/fuzz/%.o $$(FUZZ_OBJ_$$*) $(FUZZ_LIB_OBJ)
	@mkdir -p $(@D)
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(LIB_LIBS)

# make fuzz: FUZZ_TIME seconds per target on a scratch copy of its corpus.
.PHONY: fuzz
fuzz: $(FUZZ_BINS)
	set -e; for f in $(FUZZ_BINS); do n=$${f##*/fuzz-}; \
		rm -rf $(B)/fuzz/corpus-$$n; \
		cp -r tests/fuzz/corpus-$$n $(B)/fuzz/corpus-$$n; \
		$$f -max_total_time=$(FUZZ_TIME) -max_len=$${FUZZ_MAX_LEN:-1048576} \
			$(B)/fuzz/corpus-$$n tests/fuzz/corpus-$$n; done

TEST_BIN := $(SHIM) $(TOOLSTACK) $(UNIT_BIN) $(FUZZ_BINS) $(HPDEV_TOOL)

tests: all $(TEST_BIN)

# ---- dependencies ----------------------------------------------------------
# Debian packages: to build, to run, and to test.
DEB_BUILD := build-essential pkg-config debhelper dpkg-dev fakeroot libxen-dev libaio-dev liburing-dev \
             libcmocka-dev \
             libnl-3-dev libnl-genl-3-dev libfuse3-dev zlib1g-dev libzstd-dev \
             libnbd-dev librbd-dev scdoc
DEB_RUN   := xen-utils-4.17 xenstore-utils libnbd-bin e2fsprogs fuse3
DEB_TEST  := bats bats-assert bats-support bats-file shellcheck clang-format \
             valgrind clang libclang-rt-14-dev qemu-utils fio \
             python3 strace libvhdi-utils nbdkit groff-base man-db \
             bsdextrautils bash-completion lintian openssl
DEB_PKGS  := $(DEB_BUILD) $(DEB_RUN) $(DEB_TEST)

deps:
	@DEB_PKGS="$(DEB_PKGS)" tests/deps

# ---- checks ----------------------------------------------------------------
SHELL_FILES := hotplug/block-stack tools/version tools/make-deb tests/xenstored/xsd tests/deps tests/check \
               tests/demo .ci/run tests/bats/helpers.bash
# blkstack-img's fuzz seeds are rebuilt by a script of their own.
SHELL_FILES += tests/fuzz/corpus-qcow2.sh
# The bash completions (sourced, bash).
SHELL_FILES += completion/blkstack-ctl completion/blkstack-img
# Every C source and header of the tree (tests/xen/bks-records.c too).
C_FILES     := $(sort $(shell find libblkstack helpers tests -name '*.[ch]'))

lint:
	shellcheck $(SHELL_FILES) $(XEN_SHELL_FILES) $(BENCH_SHELL_FILES) \
		$(CEPH_SHELL_FILES)
	clang-format --dry-run -Werror $(C_FILES)

format:
	clang-format -i $(C_FILES)

check: deps
	$(MAKE) tests
	SHELL_FILES="$(SHELL_FILES) $(XEN_SHELL_FILES) $(BENCH_SHELL_FILES) $(CEPH_SHELL_FILES)" \
		C_FILES="$(C_FILES)" tests/check

demo: deps
	$(MAKE) tests
	tests/demo

# ---- Xen in QEMU (issue 6; tests/xen/README.md) -----------------------------
# Not part of 'make check' (.ci/run runs it last): boots Xen under QEMU (TCG)
# and runs xl with script=block-stack, once per tier: Xen 4.17 with Debian
# 12's dom0 kernel (this machine's packages) and Xen 4.20 with Debian 13's
# (a root tests/xen/build-root makes with mmdebstrap).  XEN_VERSIONS picks
# the tiers.  Images are cached in build/xen/ and build/xen-4.20/ (rebuilt
# by check-xen when a script or program they hold is newer).
XEN_VERSIONS ?= 4.17 4.20
DEB_XEN := xen-hypervisor-4.17-amd64 xen-utils-4.17 xenstore-utils \
           linux-image-amd64 busybox-static qemu-system-x86 libnbd-bin fuse3 \
           e2fsprogs cpio qemu-utils nbdkit mmdebstrap xz-utils \
           debhelper dpkg-dev fakeroot scdoc
XEN_IMG_4.17 := $(B)/xen/dom0.cpio.gz
XEN_IMG_4.20 := $(B)/xen-4.20/dom0.cpio.gz
# For lint (shellcheck): the shell scripts, not README.md.
XEN_SHELL_FILES := tests/xen/build-images tests/xen/build-root tests/xen/run \
                   tests/xen/check tests/xen/dom0-init \
                   tests/xen/dom0-test.sh tests/xen/guest-init \
                   tests/xen/test-bootloader
.PHONY: deps-xen check-xen

deps-xen:
	@DEB_PKGS="$(DEB_XEN)" tests/deps

# The package the dom0 gets blkstack from (make deb, below); defined here,
# before the rule that needs it (a prerequisite list is expanded when read).
DEB_DIR := $(B)/deb
DEB     := $(DEB_DIR)/blkstack.deb
XEN_IMG_DEPS := $(wildcard tests/xen/*) $(PROGRAMS) $(SCRIPT) $(TOOLSTACK) $(DEB)
$(XEN_IMG_4.17): $(XEN_IMG_DEPS)
	XEN_VERSION=4.17 tests/xen/build-images
$(XEN_IMG_4.20): $(XEN_IMG_DEPS)
	XEN_VERSION=4.20 tests/xen/build-images

check-xen: deps-xen
	$(MAKE) all $(TOOLSTACK)
	$(MAKE) $(foreach v,$(XEN_VERSIONS),$(XEN_IMG_$(v)))
	XEN_VERSIONS="$(XEN_VERSIONS)" tests/xen/check
# ---- end of Xen in QEMU ------------------------------------------------------

# ---- Ceph RBD (issue 18; README.md, "Ceph") ---------------------------------
# Not part of 'make check' (.ci/run runs it after check, before check-xen):
# the rbd: sink against a real single-node Ceph cluster (one mon, one
# bluestore OSD on a file) that tests/ceph/cluster starts in a private
# directory.  Ends with "N passed, N failed, N skipped".
DEB_CEPH := ceph-mon ceph-osd ceph-common librbd-dev fio libnbd-bin \
            qemu-utils bats bats-assert bats-support bats-file python3
CEPH_SHELL_FILES := tests/ceph/cluster tests/ceph/check tests/ceph/ceph.bash
.PHONY: deps-ceph check-ceph

deps-ceph:
	@DEB_PKGS="$(DEB_CEPH)" tests/deps

check-ceph: deps-ceph
	$(MAKE) all $(SHIM) $(TOOLSTACK)
	tests/ceph/check
# ---- end of Ceph RBD ---------------------------------------------------------

# ---- benchmark (issue 7; bench/README.md) ------------------------------------
# Not part of 'make check': the data path against direct I/O, qemu-nbd and
# nbdkit, v2 add against Xen's block add, and N disks at once.  As root.
# QUICK=1 for the short run.  Writes bench/results/latest.{md,json}.
BENCH_SHELL_FILES := bench/run bench/fuse-vs-nbdfuse
.PHONY: bench
bench: deps
	$(MAKE) all tests
	QUICK=$(QUICK) bench/run
# ---- end of benchmark --------------------------------------------------------

# ---- the Debian package (debian/, tools/make-deb) ------------------------------
# make deb: dpkg-buildpackage in a copy of the tree (build/deb/src), the
# results in build/deb/, build/deb/blkstack.deb the package.  Rebuilt when
# a file of the tree or the version changes (the file list, git's, is
# only computed when the package is wanted).
DEB_SRC  = $(wildcard $(shell git ls-files -co --exclude-standard 2>/dev/null || \
		find . -path ./build -prune -o -path ./.git -prune -o -type f -print))
.PHONY: deb check-deb
deb: $(DEB)
$(DEB): $$(DEB_SRC) $(VERSION_H)
	tools/make-deb $(DEB_DIR)
# Its tests alone (make check runs them too): lintian, contents, upgrade.
check-deb: deb
	bats tests/bats/deb.bats

# ---- install ---------------------------------------------------------------
MAN_INSTALL = for p in $(MAN_PAGES); do n=$${p\#\#*/}; \
		install -d $(DESTDIR)$(MANDIR)/man$${n\#\#*.} && \
		install -m 0644 $$p $(DESTDIR)$(MANDIR)/man$${n\#\#*.}/ || exit 1; done

install: all man
	install -d $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(XENSCRIPTS) \
		$(DESTDIR)$(SBINDIR) $(DESTDIR)$(SYSCONFDIR)
	$(MAN_INSTALL)
	install -d $(DESTDIR)$(BASHCOMPDIR)
	install -m 0644 completion/blkstack-ctl completion/blkstack-img \
		$(DESTDIR)$(BASHCOMPDIR)/
	# The configuration, all defaults commented out; never over an
	# existing one (the package makes it a conffile instead).
	[ -e $(DESTDIR)$(SYSCONFDIR)/blkstack.conf ] || \
		install -m 0644 etc/blkstack.conf $(DESTDIR)$(SYSCONFDIR)/blkstack.conf
	install -m 0755 $(HOTPLUG) $(DESTDIR)$(LIBEXECDIR)/blkstack-hotplug
	# blkstack-ctl starts the blkstack-worker (and its
	# blkstack-supervisor) that stand beside it; the hotplug helper falls
	# back to sbin for them and blkstack-fuse.
	install -m 0755 $(WORKER) $(CTL) $(SUPERVISOR) $(XENBUS) $(FUSE) $(IMG_BUILT) \
		$(DESTDIR)$(SBINDIR)/
	install -d $(DESTDIR)$(MODULEDIR)
	install -m 0644 $(MODULES) $(DESTDIR)$(MODULEDIR)/
	install -d $(DESTDIR)$(SYSTEMDUNITDIR)
	install -m 0644 $(XENBUS_UNIT) $(DESTDIR)$(SYSTEMDUNITDIR)/
	sed 's|@HELPERDIR@|$(LIBEXECDIR)|' hotplug/block-stack \
		>$(DESTDIR)$(XENSCRIPTS)/block-stack
	chmod 0755 $(DESTDIR)$(XENSCRIPTS)/block-stack

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/blkstack-worker $(DESTDIR)$(SBINDIR)/blkstack-ctl \
		$(DESTDIR)$(SBINDIR)/blkstack-supervisor $(DESTDIR)$(SBINDIR)/blkstack-xenbus \
		$(DESTDIR)$(SBINDIR)/blkstack-fuse $(DESTDIR)$(SBINDIR)/blkstack-img
	rm -f $(DESTDIR)$(LIBEXECDIR)/blkstack-hotplug \
		$(DESTDIR)$(XENSCRIPTS)/block-stack
	rm -f $(DESTDIR)$(BASHCOMPDIR)/blkstack-ctl $(DESTDIR)$(BASHCOMPDIR)/blkstack-img
	rm -f $(MODULE_NAMES:%=$(DESTDIR)$(MODULEDIR)/%.so)
	rm -f $(DESTDIR)$(SYSTEMDUNITDIR)/blkstack-xenbus.service
	-rmdir $(DESTDIR)$(MODULEDIR)
	for p in $(MAN_PAGES); do n=$${p##*/}; \
		rm -f $(DESTDIR)$(MANDIR)/man$${n##*.}/$$n; done
	-rmdir $(DESTDIR)$(LIBEXECDIR)

clean:
	rm -rf $(B)

-include $(shell find $(B)/obj $(B)/fuzz/obj -name '*.d' 2>/dev/null)

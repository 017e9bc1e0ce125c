# CMS server - build, run, test.
#   make            build/cmsd, build/cmsctl, build/cms-monitor, build/hsbench
#   make asan       the same under build/asan/ with ASan+UBSan
#   make run        dev PKI + private PostgreSQL + migrations + cmsd (foreground)
#   make test       the whole suite (unit, black box, short fuzz)
#   make bench      benchmarks (see docs/benchmarks.md)
#   make fuzz       libFuzzer targets under build/fuzz/

BUILD   ?= build
CC      ?= cc
PKGS     = libuv openssl libpq jansson
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CURL_LIBS  := $(shell pkg-config --libs libcurl 2>/dev/null)
WARN     = -Wall -Wextra -Wstrict-prototypes -Wshadow -Wconversion -Wno-sign-conversion \
           -Wformat=2 -Wmissing-prototypes
OPT     ?= -O2 -g
SANITIZE ?=
DEFS     ?=
CFLAGS  ?=
override CFLAGS += $(OPT) $(SANITIZE) $(DEFS) -std=gnu11 $(WARN) -Iinclude $(PKG_CFLAGS) -D_GNU_SOURCE \
           -fno-strict-aliasing
override LDFLAGS += $(SANITIZE)
ifdef WERROR
override CFLAGS += -Werror
endif
# The newest migration (sql/NNN_name.sql) this build expects applied (GET /readyz).
SQL_FILES := $(sort $(wildcard sql/[0-9]*_*.sql))
SCHEMA_VERSION := $(shell ls sql | sed -n 's/^0*\([0-9][0-9]*\)_.*\.sql$$/\1/p' | sort -n | tail -1)
override CFLAGS += -DCMS_SCHEMA_VERSION=$(SCHEMA_VERSION)
LDLIBS   = $(PKG_LIBS) -lhttp_parser -lpthread -lm

LIB_SRCS := $(sort $(wildcard server/base/*.c server/proto/*.c server/tls/*.c \
              server/store/*.c server/pki/*.c server/svc/*.c server/svc/*/*.c server/net/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
CMSD_SRCS    := server/cmsd.c server/cmsd_ops.c
CMSCTL_SRCS  := $(sort $(wildcard tools/cmsctl/*.c))
MONITOR_SRCS := $(sort $(wildcard tools/cms-monitor/*.c))
FWVERIFY_SRCS := $(sort $(wildcard tools/cms-fwverify/*.c))
UNIT_SRCS    := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BINS    := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

# hsbench: the handshake load generator of `make bench` (P4); tested in `make test`.
BINS = $(BUILD)/cmsd $(BUILD)/cmsctl $(BUILD)/cms-monitor $(BUILD)/hsbench
ifneq ($(FWVERIFY_SRCS),)
BINS += $(BUILD)/cms-fwverify
endif

.PHONY: all asan run test unit fuzz bench clean deps format
all: $(BINS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# A new migration changes what ops.c expects.
$(BUILD)/obj/server/svc/ops.o build/fuzz/obj/server/svc/ops.o: $(SQL_FILES)

$(BUILD)/libcms.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/cmsd: $(CMSD_SRCS:%.c=$(BUILD)/obj/%.o) $(BUILD)/libcms.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)
$(BUILD)/cmsctl: $(CMSCTL_SRCS:%.c=$(BUILD)/obj/%.o) $(BUILD)/libcms.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS) $(CURL_LIBS)
$(BUILD)/cms-monitor: $(MONITOR_SRCS:%.c=$(BUILD)/obj/%.o) $(BUILD)/libcms.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)
$(BUILD)/hsbench: $(BUILD)/obj/tools/bench/hsbench.o
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)
$(BUILD)/cms-fwverify: $(FWVERIFY_SRCS:%.c=$(BUILD)/obj/%.o) $(BUILD)/libcms.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libcms.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS) -lcmocka

asan:
	$(MAKE) BUILD=build/asan CC=clang OPT="-O1 -g -fno-omit-frame-pointer" \
	  SANITIZE="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	  DEFS=-DCMSD_FAULT_INJECTION \
	  all $(addprefix build/asan/tests/,$(notdir $(UNIT_BINS)))

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=build/fuzz/%)
FUZZ_CFLAGS = -std=gnu11 -g -O1 -Iinclude $(PKG_CFLAGS) -D_GNU_SOURCE -fsanitize=fuzzer-no-link,address,undefined \
              -DCMS_SCHEMA_VERSION=$(SCHEMA_VERSION)
build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -c $< -o $@
# A static library, so that a target pulls in only the modules it uses.
build/fuzz/libcms.a: $(LIB_SRCS:%.c=build/fuzz/obj/%.o)
	@rm -f $@
	ar rcs $@ $^
build/fuzz/%: tests/fuzz/%.c build/fuzz/libcms.a
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(PKG_LIBS) -lhttp_parser -lpthread -lm
fuzz: $(FUZZ_BINS)

run:
	@tools/run.sh

test:
	@tools/test.sh

bench:
	@tools/bench.sh

deps:
	@tools/deps.sh

format:
	clang-format -i $(LIB_SRCS) $(CMSD_SRCS) $(CMSCTL_SRCS) $(MONITOR_SRCS) include/*.h tests/unit/*.c tests/fuzz/*.c

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

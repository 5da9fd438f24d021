# config.mk -- the version, the compilers and flags every build shares, the dependencies'
# flags, and the package checks.

VERSION_MAJOR := $(shell sed -n 's/^\#define ULPT_VERSION_MAJOR \([0-9]*\)/\1/p' include/ulpt.h)
VERSION_MINOR := $(shell sed -n 's/^\#define ULPT_VERSION_MINOR \([0-9]*\)/\1/p' include/ulpt.h)
VERSION_PATCH := $(shell sed -n 's/^\#define ULPT_VERSION_PATCH \([0-9]*\)/\1/p' include/ulpt.h)
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

CC ?= cc
CFLAGS ?= -O3 -g
PKG_CONFIG ?= pkg-config
PYTHON ?= /usr/bin/python3
WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes

# A dependency's flags, asked of pkg-config the first time a recipe needs them (so after
# `deps` has installed it) and then remembered.
lazy = $(eval $1 := $$(shell $(PKG_CONFIG) $2))$($1)
BLAS_CFLAGS = $(call lazy,BLAS_CFLAGS,--cflags openblas)
BLAS_LIBS = $(call lazy,BLAS_LIBS,--libs openblas)
ZLIB_CFLAGS = $(call lazy,ZLIB_CFLAGS,--cflags zlib)
ZLIB_LIBS = $(call lazy,ZLIB_LIBS,--libs zlib)
CHECK_CFLAGS = $(call lazy,CHECK_CFLAGS,--cflags check)
CHECK_LIBS = $(call lazy,CHECK_LIBS,--libs check)
DEP_CFLAGS = $(BLAS_CFLAGS) $(ZLIB_CFLAGS)
DEP_LIBS = $(BLAS_LIBS) $(ZLIB_LIBS) -lm -pthread

SRCS := $(wildcard lib/*.c)
LIB_HDRS := $(wildcard lib/*.h) include/ulpt.h

# ---- packages ---------------------------------------------------------------------------
# .ci/install-deps knows which Debian packages each purpose needs (build, demo, test,
# results, all).  `deps`, `demo` and `check` install what is missing (as root; otherwise
# they print the apt-get line); every other target depends on need-PURPOSE, which names
# what is missing and stops.
.PHONY: deps need-build need-demo need-test need-results
deps:
	@sh .ci/install-deps all
need-build need-demo need-test need-results: need-%:
	@sh .ci/install-deps --check $*

# lib.mk -- the shared and static library and the ulpt command-line tool.

SONAME := libulpt.so.$(VERSION_MAJOR)
SHARED := lib/libulpt.so.$(VERSION)
STATIC := lib/libulpt.a
OBJS := $(patsubst lib/%.c,lib/obj/%.o,$(SRCS))
# -fno-math-errno: the library never reads errno after a math call, and without it
# sqrtf keeps the optimizer's update loop from vectorising.
LIB_CFLAGS = -std=c11 -g $(WARN) -fPIC -fvisibility=hidden -fno-math-errno -Iinclude $(DEP_CFLAGS)

.PHONY: all
all: need-build $(SHARED) $(STATIC) tools/ulpt

lib/obj/%.o: lib/%.c $(LIB_HDRS)
	@mkdir -p lib/obj
	$(CC) $(CFLAGS) $(LIB_CFLAGS) -c $< -o $@

$(SHARED): $(OBJS) lib/libulpt.map
	$(CC) $(CFLAGS) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=lib/libulpt.map \
	    -Wl,--no-undefined -o $@ $(OBJS) $(DEP_LIBS) $(LDFLAGS)
	ln -sf libulpt.so.$(VERSION) lib/$(SONAME)
	ln -sf $(SONAME) lib/libulpt.so

$(STATIC): $(OBJS)
	rm -f $@
	$(AR) rcs $@ $(OBJS)

# A program linked to the shared library next to it (build tree) or in PREFIX/lib
# (installed): $(call link_shared,RPATH-FROM-THE-PROGRAM)
link_shared = -Llib -lulpt -Wl,-rpath,'$$ORIGIN/$1'

tools/ulpt: tools/ulpt.c $(SHARED) include/ulpt.h
	$(CC) $(CFLAGS) -std=c11 $(WARN) -Iinclude -o $@ $< $(call link_shared,../lib) -lm

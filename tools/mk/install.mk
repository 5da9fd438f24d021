# install.mk -- install, uninstall, clean.

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
DESTDIR ?=

.PHONY: install uninstall clean
install: all
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR) \
	    $(DESTDIR)$(MANDIR)/man1
	install -m 755 tools/ulpt $(DESTDIR)$(BINDIR)/ulpt
	install -m 644 tools/ulpt.1 $(DESTDIR)$(MANDIR)/man1/ulpt.1
	install -m 644 include/ulpt.h $(DESTDIR)$(INCLUDEDIR)/ulpt.h
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf libulpt.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libulpt.so
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    pkgconfig/ulpt.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/ulpt.pc
	sh bindings/python/install.sh $(PYTHON) $(DESTDIR)$(PYTHONDIR)

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/ulpt.h $(DESTDIR)$(LIBDIR)/libulpt.so* \
	    $(DESTDIR)$(LIBDIR)/libulpt.a $(DESTDIR)$(LIBDIR)/pkgconfig/ulpt.pc \
	    $(DESTDIR)$(BINDIR)/ulpt $(DESTDIR)$(MANDIR)/man1/ulpt.1
	rm -rf $(DESTDIR)$(PYTHONDIR)/ulpt $(DESTDIR)$(PYTHONDIR)/ulpt-*.dist-info

clean:
	rm -rf lib/obj tests/obj tests/build lib/libulpt.so* $(STATIC) tests/fuzz/work \
	    tests/test_ulpt tests/bench_step tests/bench_bank tests/tinylm/test_tinylm tests/abi/out bindings/rust/target \
	    examples/quickstart examples/tinylm/tune examples/tinylm/tlm \
	    examples/mpi/tune_mpi tests/mpi/param_diff tests/mpi/nan_model \
	    tools/ulpt bindings/python/build bindings/python/ulpt.egg-info examples/llama/ulpt-llama \
	    tests/llama/llama_grad tests/llama/ggml_out_prod

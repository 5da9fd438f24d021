# rust.mk -- the Rust bindings (bindings/rust, docs/RUST.md), built offline from the crates
# Debian packages (bindings/rust/.cargo/config.toml) with Debian's cargo, named
# explicitly: another cargo may come first on PATH.  The crates link this tree's library.
#   check-rust           every test of both crates (unit, bindgen layout, integration, doc),
#                        the count, the example host, and cargo doc with warnings as errors
#   check-rust-valgrind  every Rust test binary under valgrind's memcheck (the state
#                        machine with STATE_MACHINE_VALGRIND_OPS operations per thread)
#   check-rust-state-machine  the randomized state-machine test alone, long:
#                        STATE_MACHINE_OPS per thread (default 5000), STATE_MACHINE_SEED

CARGO := /usr/bin/cargo
RUST_ENV = ULPT_LIB_DIR=$(CURDIR)/lib ULPT_INCLUDE_DIR=$(CURDIR)/include
RUST_LOG := bindings/rust/target/check-rust.log
STATE_MACHINE_OPS ?= 5000
STATE_MACHINE_VALGRIND_OPS ?= 40
STATE_MACHINE_SEED ?= 0x5EED2026
# A step of `make check`, after those of check.mk.
CHECK_STEPS += check-rust

.PHONY: check-rust check-rust-valgrind check-rust-state-machine
check-rust: need-test all
	@mkdir -p bindings/rust/target
	@cd bindings/rust && $(RUST_ENV) nice $(CARGO) test -q --workspace -- --nocapture > ../../$(RUST_LOG) 2>&1 || \
	    { cat ../../$(RUST_LOG); echo "check-rust: cargo test failed"; exit 1; }
	@awk '/^test result:/ { n += $$4; f += $$6 } END { printf "check-rust: %d Rust tests passed (unit, bindgen layout, integration, doc), %d failed\n", n, f }' $(RUST_LOG)
	@sed -n 's/^state machine: /check-rust: state machine: /p' $(RUST_LOG)
	@cd bindings/rust && $(RUST_ENV) $(CARGO) run -q --example tune
	@cd bindings/rust && $(RUST_ENV) RUSTDOCFLAGS="-D warnings" $(CARGO) doc -q --workspace --no-deps && \
	    echo "check-rust: cargo doc: no warnings"

check-rust-valgrind: need-test all
	@mkdir -p bindings/rust/target
	@cd bindings/rust && $(RUST_ENV) $(CARGO) test --workspace --no-run 2> ../../$(RUST_LOG) || \
	    { cat ../../$(RUST_LOG); exit 1; }
	@for t in $$(sed -n 's/.*Executable .*(\(.*\))$$/\1/p' $(RUST_LOG)); do \
	    echo "valgrind bindings/rust/$$t"; \
	    (cd bindings/rust && valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect \
	        --errors-for-leak-kinds=definite,indirect --error-exitcode=1 ./$$t -q) || exit 1; \
	done

check-rust-state-machine: need-test all
	@cd bindings/rust && $(RUST_ENV) ULPT_STATE_MACHINE_OPS=$(STATE_MACHINE_OPS) \
	    ULPT_STATE_MACHINE_SEED=$$(printf %d $(STATE_MACHINE_SEED)) \
	    nice $(CARGO) test -q --test state_machine -- --nocapture

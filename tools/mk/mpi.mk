# mpi.mk -- data-parallel training over MPI: examples/mpi/tune_mpi (tinylm on every rank,
# one MPI_Allreduce of the prompt's gradients a step; docs/DESIGN.md, "Data parallelism")
# and its test, the check-mpi step of `make check`.  Built with mpicc from Debian's OpenMPI.

MPICC ?= mpicc
# A step of `make check`, after those of check.mk.
CHECK_STEPS += check-mpi
.PHONY: check-mpi

examples/mpi/tune_mpi: examples/mpi/tune_mpi.c $(TLM_DEPS) $(TASK_DEPS) $(CLI_DEPS) $(SHARED) \
    include/ulpt.h
	@command -v $(MPICC) >/dev/null 2>&1 || { echo "$@: $(MPICC) is missing; install \
	Debian's OpenMPI: apt-get install libopenmpi-dev openmpi-bin (or run make deps as root)" >&2; \
	exit 1; }
	$(MPICC) $(CFLAGS) $(TLM_CFLAGS) -Iinclude -o $@ $< $(TLM_SRCS) $(TASK_SRCS) $(CLI_SRCS) \
	    $(call link_shared,../../lib) $(DEP_LIBS) -pthread

tests/mpi/param_diff: tests/mpi/param_diff.c $(SHARED) include/ulpt.h
	$(CC) $(CFLAGS) -std=c11 $(WARN) -Iinclude -o $@ $< $(call link_shared,../../lib) -lm

tests/mpi/nan_model: tests/mpi/nan_model.c $(TLM_DEPS)
	$(CC) $(CFLAGS) $(TLM_CFLAGS) -o $@ $< $(TLM_SRCS) $(DEP_LIBS) -pthread

# 1, 2 and 4 ranks of tune_mpi on the names fixture, oversubscribed: about 20 s.
check-mpi: need-test examples/mpi/tune_mpi tests/mpi/param_diff tests/mpi/nan_model
	nice sh tests/mpi/check-mpi.sh

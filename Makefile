# Builds priv/libemlx.so: the C11 NIF (c_src/nif) plus the C++ shim over MLX
# (c_src/shim). Called by `mix compile` (see mix.exs), which sets
# MLX_INCLUDE_DIR, MLX_LIB_DIR and ERTS_INCLUDE_DIR.

PRIV_DIR ?= priv
BUILD_DIR ?= _build/c
TARGET = $(PRIV_DIR)/libemlx.so

CC ?= cc
CXX ?= g++
OPT ?= -O2
# -MMD -MP: each object also gets a .d file naming the project headers it
# includes, so a changed header rebuilds exactly the objects that use it.
DEPFLAGS = -MMD -MP
CFLAGS_EMLX = -std=c11 -Wall -Wextra -Werror -fPIC -fvisibility=hidden $(OPT) -D_GNU_SOURCE -I$(ERTS_INCLUDE_DIR) -Ic_src/shim
CXXFLAGS_EMLX = -std=c++20 -Wall -Wextra -Werror -fPIC -fvisibility=hidden $(OPT) -isystem $(MLX_INCLUDE_DIR)
# libmlx is found relative to the NIF: mix copies it (with the wheel's bundled
# libraries, in the wheel's layout) into priv/libmlx/, so a release carries it.
# BLAS/LAPACK: the wheel's libmlx links the reference (netlib) BLAS it
# bundles, about 4 GFLOP/s. Where OpenBLAS is installed (Debian's
# libopenblas0-pthread, set up by scripts/setup.sh) the NIF lists it as a
# dependency ahead of libmlx, so the dynamic linker binds MLX's cblas_* and
# LAPACK calls to OpenBLAS first. EMLX_BLAS=bundled keeps MLX's own.
# OpenBLAS and its Fortran runtime are copied beside libmlx
# (priv/libmlx/openblas/), so that a release runs on a host without them;
# the NIF lists the runtime too, so the loader takes these copies for
# OpenBLAS's own dependencies (it matches loaded libraries by soname).
OPENBLAS ?= $(firstword $(wildcard /usr/lib/$(shell $(CC) -dumpmachine)/libopenblas.so.0 /usr/lib64/libopenblas.so.0))
ifneq ($(EMLX_BLAS),bundled)
ifneq ($(OPENBLAS),)
BLAS_DIR = $(PRIV_DIR)/libmlx/openblas
BLAS_RUNTIME := $(shell ldd $(OPENBLAS) | awk '/lib(gfortran|quadmath)/ {print $$3}')
BLAS_COPIES := $(BLAS_DIR)/libopenblas.so.0 $(addprefix $(BLAS_DIR)/,$(notdir $(BLAS_RUNTIME)))
BLAS_LDFLAGS = -Wl,-rpath,'$$ORIGIN/libmlx/openblas' -Wl,--no-as-needed $(BLAS_COPIES) -Wl,--as-needed
endif
endif
# The search path is written as DT_RPATH (--disable-new-dtags), which the
# dynamic loader reads before LD_LIBRARY_PATH: a folder there that holds
# another libmlx.so or libquadmath.so.0 (a host's /lib, say) cannot take
# the place of the copies in priv/. DT_RUNPATH comes after LD_LIBRARY_PATH.
# NVIDIA's libraries, which priv/ does not hold, are still found on
# LD_LIBRARY_PATH.
LDFLAGS_EMLX = -shared -L$(MLX_LIB_DIR) -Wl,--disable-new-dtags -Wl,-rpath,'$$ORIGIN/libmlx/mlx/lib' $(BLAS_LDFLAGS) -lmlx -lpthread

# The NIF: plain C11, sees MLX only through c_src/shim/emlx_shim.h.
NIF_SRCS = $(addprefix c_src/nif/,emlx_nif.c emlx_poll.c emlx_resources.c emlx_array.c emlx_job.c emlx_arena.c emlx_codec.c \
  emlx_worker.c emlx_io.c emlx_pointer.c emlx_programs.c)
# The shim: the only C++, every entry point extern "C".
SHIM_SRCS = $(addprefix c_src/shim/,emlx_shim.cpp emlx_ops.cpp emlx_program.cpp \
  kernels_elementwise.cpp kernels_f64.cpp kernels_shape.cpp kernels_conv.cpp kernels_linalg.cpp kernels_nx_linalg.cpp \
  kernels_fast.cpp kernels_distributed.cpp kernels_dist_check.cpp kernels_quant.cpp kernels_gpu_math.cpp emlx_io.cpp cpu_inline.cpp gpu_wait.cpp)
OBJS = $(NIF_SRCS:c_src/%.c=$(BUILD_DIR)/%.o) $(SHIM_SRCS:c_src/%.cpp=$(BUILD_DIR)/%.o)

all: $(TARGET)

$(BUILD_DIR)/nif/%.o: c_src/nif/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_EMLX) $(DEPFLAGS) $(EXTRA_CFLAGS) -c $< -o $@

$(BUILD_DIR)/shim/%.o: c_src/shim/%.cpp
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS_EMLX) $(DEPFLAGS) $(EXTRA_CFLAGS) -c $< -o $@

# (copied under a temporary name and renamed: a process loading the NIF
# meanwhile sees the old file or the new one, never a part of one)
$(BLAS_DIR)/libopenblas.so.0: $(OPENBLAS)
	@mkdir -p $(@D)
	cp -L $< $@.tmp$$$$ && mv -f $@.tmp$$$$ $@

$(BLAS_DIR)/%: $(BLAS_RUNTIME)
	@mkdir -p $(@D)
	cp -L $(filter %/$*,$(BLAS_RUNTIME)) $@.tmp$$$$ && mv -f $@.tmp$$$$ $@

$(TARGET): $(OBJS) $(BLAS_COPIES) Makefile
	@mkdir -p $(PRIV_DIR)
	$(CXX) $(OBJS) $(LDFLAGS_EMLX) $(EXTRA_LDFLAGS) -o $@

-include $(OBJS:.o=.d)

clean:
	rm -rf $(BUILD_DIR) $(TARGET)

.PHONY: all clean

# ---- AddressSanitizer build (development only; the default build above is unchanged) ----
#
#   make asan       the same sources built with -fsanitize=address into
#                   $(ASAN_PRIV_DIR)/libemlx.so (objects in $(ASAN_BUILD_DIR))
#   make asan-test  compiles the project into ASAN_MIX_BUILD_PATH, swaps the
#                   instrumented library into its priv dir, and runs ASAN_TESTS
#                   on a BEAM started with libasan preloaded; with
#                   ASAN_KERNELS=1 the kernels MLX compiles for fused CPU
#                   graphs are instrumented too (scripts/asan-bin/g++, in a
#                   kernel cache of their own)
#
# MLX_INCLUDE_DIR, MLX_LIB_DIR and ERTS_INCLUDE_DIR (set by mix for the normal
# build) default here to the cached MLX wheel and the Erlang on PATH.

ASAN_DIR ?= _build/asan
ASAN_PRIV_DIR ?= $(ASAN_DIR)/priv
ASAN_BUILD_DIR ?= $(ASAN_DIR)/obj
ASAN_MIX_BUILD_PATH ?= $(abspath $(ASAN_DIR)/mix)
ASAN_TESTS ?= test/emlx/nif_test.exs test/emlx/fuzz_test.exs
ASAN_LIB ?= $(shell $(CC) -print-file-name=libasan.so)
ASAN_RUN_OPTIONS ?= detect_leaks=0:abort_on_error=1:halt_on_error=1:handle_segv=1:allow_user_segv_handler=1
ASAN_MLX_DIR ?= $(HOME)/.cache/emlx/libmlx-$(or $(LIBMLX_VERSION),0.32.4)-$(or $(LIBMLX_VARIANT),cpu)/site-packages/mlx
ASAN_ERTS_INCLUDE ?= $(shell erl -noshell -eval 'io:put_chars(filename:join([code:root_dir(), "erts-" ++ erlang:system_info(version), "include"])), halt().')

asan:
	$(MAKE) --no-print-directory all PRIV_DIR=$(ASAN_PRIV_DIR) BUILD_DIR=$(ASAN_BUILD_DIR) OPT="-O1 -g" \
	  EXTRA_CFLAGS="-fsanitize=address -fno-omit-frame-pointer" EXTRA_LDFLAGS="-fsanitize=address -Wl,-rpath,$(or $(MLX_LIB_DIR),$(ASAN_MLX_DIR)/lib)" \
	  MLX_INCLUDE_DIR="$(or $(MLX_INCLUDE_DIR),$(ASAN_MLX_DIR)/include)" \
	  MLX_LIB_DIR="$(or $(MLX_LIB_DIR),$(ASAN_MLX_DIR)/lib)" \
	  ERTS_INCLUDE_DIR="$(or $(ERTS_INCLUDE_DIR),$(ASAN_ERTS_INCLUDE))"

asan-test:
	MIX_ENV=test MIX_BUILD_PATH="$(ASAN_MIX_BUILD_PATH)" mix compile
	$(MAKE) --no-print-directory asan ASAN_PRIV_DIR="$(ASAN_MIX_BUILD_PATH)/lib/emlx/priv" \
	  ASAN_BUILD_DIR="$(ASAN_MIX_BUILD_PATH)/asan_obj"
	$(if $(ASAN_KERNELS),mkdir -p "$(abspath $(ASAN_DIR))/kernels" &&) \
	MIX_ENV=test MIX_BUILD_PATH="$(ASAN_MIX_BUILD_PATH)" LD_PRELOAD="$(ASAN_LIB)" \
	  $(if $(ASAN_KERNELS),PATH="$(CURDIR)/scripts/asan-bin:$$PATH" TMPDIR="$(abspath $(ASAN_DIR))/kernels") \
	  ASAN_OPTIONS="$(ASAN_RUN_OPTIONS)" mix test --no-compile $(ASAN_TESTS)

.PHONY: asan asan-test

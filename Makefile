# Builds priv/libemlx.so: the C11 NIF plus the one C++ file that shims MLX.
# Called by `mix compile` (see mix.exs), which sets MLX_INCLUDE_DIR,
# MLX_LIB_DIR and ERTS_INCLUDE_DIR.

PRIV_DIR ?= priv
BUILD_DIR ?= _build/c
TARGET = $(PRIV_DIR)/libemlx.so

CC ?= cc
CXX ?= g++
OPT ?= -O2
CFLAGS_EMLX = -std=c11 -Wall -Wextra -Werror -fPIC -fvisibility=hidden $(OPT) -D_GNU_SOURCE -I$(ERTS_INCLUDE_DIR)
CXXFLAGS_EMLX = -std=c++20 -Wall -Wextra -Werror -fPIC -fvisibility=hidden $(OPT) -isystem $(MLX_INCLUDE_DIR)
LDFLAGS_EMLX = -shared -L$(MLX_LIB_DIR) -Wl,-rpath,$(MLX_LIB_DIR) -lmlx -lpthread

C_SRCS = c_src/emlx_nif.c c_src/emlx_codec.c c_src/emlx_worker.c
CXX_SRCS = c_src/emlx_shim.cpp
HEADERS = c_src/emlx_nif.h c_src/emlx_shim.h c_src/emlx_ops.def
OBJS = $(C_SRCS:c_src/%.c=$(BUILD_DIR)/%.o) $(CXX_SRCS:c_src/%.cpp=$(BUILD_DIR)/%.o)

all: $(TARGET)

$(BUILD_DIR)/%.o: c_src/%.c $(HEADERS)
	@mkdir -p $(BUILD_DIR)
	$(CC) $(CFLAGS_EMLX) $(EXTRA_CFLAGS) -c $< -o $@

$(BUILD_DIR)/%.o: c_src/%.cpp $(HEADERS)
	@mkdir -p $(BUILD_DIR)
	$(CXX) $(CXXFLAGS_EMLX) $(EXTRA_CFLAGS) -c $< -o $@

$(TARGET): $(OBJS)
	@mkdir -p $(PRIV_DIR)
	$(CXX) $(OBJS) $(LDFLAGS_EMLX) $(EXTRA_LDFLAGS) -o $@

clean:
	rm -rf $(BUILD_DIR) $(TARGET)

.PHONY: all clean

# ---- AddressSanitizer build (development only; the default build above is unchanged) ----
#
#   make asan       the same sources built with -fsanitize=address into
#                   $(ASAN_PRIV_DIR)/libemlx.so (objects in $(ASAN_BUILD_DIR))
#   make asan-test  compiles the project into ASAN_MIX_BUILD_PATH, swaps the
#                   instrumented library into its priv dir, and runs ASAN_TESTS
#                   on a BEAM started with libasan preloaded
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
	  EXTRA_CFLAGS="-fsanitize=address -fno-omit-frame-pointer" EXTRA_LDFLAGS="-fsanitize=address" \
	  MLX_INCLUDE_DIR="$(or $(MLX_INCLUDE_DIR),$(ASAN_MLX_DIR)/include)" \
	  MLX_LIB_DIR="$(or $(MLX_LIB_DIR),$(ASAN_MLX_DIR)/lib)" \
	  ERTS_INCLUDE_DIR="$(or $(ERTS_INCLUDE_DIR),$(ASAN_ERTS_INCLUDE))"

asan-test:
	MIX_ENV=test MIX_BUILD_PATH="$(ASAN_MIX_BUILD_PATH)" mix compile
	$(MAKE) --no-print-directory asan ASAN_PRIV_DIR="$(ASAN_MIX_BUILD_PATH)/lib/emlx/priv" \
	  ASAN_BUILD_DIR="$(ASAN_MIX_BUILD_PATH)/asan_obj"
	MIX_ENV=test MIX_BUILD_PATH="$(ASAN_MIX_BUILD_PATH)" LD_PRELOAD="$(ASAN_LIB)" \
	  ASAN_OPTIONS="$(ASAN_RUN_OPTIONS)" mix test --no-compile $(ASAN_TESTS)

.PHONY: asan asan-test

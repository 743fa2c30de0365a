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

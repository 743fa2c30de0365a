// Files: safetensors in and out through MLX's own reader and writer
// (mlx::core::load_safetensors and save_safetensors).

#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "emlx_internal.hpp"

struct emlx_tensor_file {
  std::vector<std::pair<std::string, mx::array>> arrays;
  std::vector<std::pair<std::string, std::string>> metadata;
};

using namespace emlx;  // the C entry points below use the shim's internals

extern "C" {

emlx_status emlx_load_safetensors(emlx_stream *s, const char *path, emlx_tensor_file **out) {
  *out = nullptr;
  return guard([&] {
    // Read on the worker's own stream. On the GPU, MLX then copies each
    // tensor into device memory, as Python's mx.load does; read on a CPU
    // stream they would stay in managed memory.
    auto [arrays, metadata] = mx::load_safetensors(std::string(path), s->s);
    auto file = std::make_unique<emlx_tensor_file>();
    std::vector<mx::array> all;
    for (auto &[name, a] : arrays) {
      if (from_dtype(a.dtype()) < 0)
        throw std::runtime_error("safetensors: tensor \"" + name + "\" has an element type EMLX does not support");
      if (a.ndim() > EMLX_MAX_DIMS)
        throw std::runtime_error("safetensors: tensor \"" + name + "\" has more than 32 dimensions");
      all.push_back(a);
      file->arrays.emplace_back(name, a);
    }
    // Read now, on this worker: a bad file fails here, not at a later use.
    eval_here(all);
    for (auto &[k, v] : metadata) file->metadata.emplace_back(k, v);
    *out = file.release();
  });
}

int emlx_tensor_file_count(const emlx_tensor_file *f) { return static_cast<int>(f->arrays.size()); }
const char *emlx_tensor_file_name(const emlx_tensor_file *f, int i) { return f->arrays[i].first.c_str(); }

emlx_arr *emlx_tensor_file_array(const emlx_tensor_file *f, int i) {
  try {
    return new emlx_arr(f->arrays[i].second);
  } catch (...) {
    return nullptr;
  }
}

int emlx_tensor_file_meta_count(const emlx_tensor_file *f) { return static_cast<int>(f->metadata.size()); }
const char *emlx_tensor_file_meta_key(const emlx_tensor_file *f, int i) { return f->metadata[i].first.c_str(); }
const char *emlx_tensor_file_meta_value(const emlx_tensor_file *f, int i) { return f->metadata[i].second.c_str(); }

void emlx_tensor_file_free(emlx_tensor_file *f) {
  try {
    delete f;
  } catch (...) {
  }
}

emlx_status emlx_save_safetensors(emlx_stream *s, const char *path, const char *const *names, emlx_arr *const *arrs,
                                  int n, const char *const *meta_keys, const char *const *meta_values, int nmeta) {
  return guard([&] {
    std::unordered_map<std::string, mx::array> arrays;
    std::vector<mx::array> all;
    for (int i = 0; i < n; i++) {
      mx::array a = arrs[i]->a;
      if (a.dtype() == mx::float64)
        throw arg_error(std::string("safetensors: \"") + names[i] +
                        "\" is f64, which MLX's safetensors writer does not support; cast it to f32 first");
      if (!arrays.emplace(names[i], a).second)
        throw arg_error(std::string("safetensors: the name \"") + names[i] + "\" is given twice");
      all.push_back(a);
    }
    // Computed on this worker's own stream(s) before MLX's writer reads them.
    eval_here(all);
    synchronize_here(s->s);
    std::unordered_map<std::string, std::string> metadata;
    for (int i = 0; i < nmeta; i++) metadata[meta_keys[i]] = meta_values[i];
    mx::save_safetensors(std::string(path), std::move(arrays), std::move(metadata));
  });
}

}  // extern "C"

// Programs: replay of a flat list of op-table instructions over slots,
// optionally under mx::compile, made once per program and kept in its cache.

#include <functional>

#include "emlx_internal.hpp"

struct emlx_compiled {
  std::function<std::vector<mx::array>(const std::vector<mx::array> &)> fn;
  bool traceable;  // false once tracing failed: the program replays plainly from then on
};

namespace emlx {
namespace {

// Runs the instructions over slots (the inputs first, then every
// instruction's results in turn) and returns the arrays of out_slots.
std::vector<mx::array> replay(const emlx_stream &stream, const emlx_instr *instrs, int ninstrs,
                              const std::vector<mx::array> &inputs, const std::vector<int> &out_slots) {
  std::vector<emlx_arr> slots;
  slots.reserve(inputs.size() + static_cast<size_t>(ninstrs) * 2);
  for (auto &a : inputs) slots.emplace_back(a);
  for (int i = 0; i < ninstrs; i++) {
    const emlx_instr &in = instrs[i];
    emlx_arg args[EMLX_MAX_ARGS];
    std::vector<std::vector<emlx_arr *>> arr_lists;
    for (int k = 0; k < in.nargs; k++) {
      args[k] = in.args[k];
      if (in.args[k].kind == EMLX_ARG_ARR) {
        int64_t slot = in.args[k].u.i;
        if (slot < 0 || slot >= static_cast<int64_t>(slots.size())) throw arg_error("program slot out of range");
        args[k].u.arr = &slots[slot];
      } else if (in.args[k].kind == EMLX_ARG_ARRS) {
        std::vector<emlx_arr *> v;
        for (int j = 0; j < in.args[k].u.ints.n; j++) {
          int64_t slot = in.args[k].u.ints.v[j];
          if (slot < 0 || slot >= static_cast<int64_t>(slots.size())) throw arg_error("program slot out of range");
          v.push_back(&slots[slot]);
        }
        arr_lists.push_back(std::move(v));
        args[k].u.arrs.v = arr_lists.back().data();
        args[k].u.arrs.n = static_cast<int>(arr_lists.back().size());
      }
    }
    for (auto &r : run_instr(in.op, stream, args, in.out_dtype)) slots.emplace_back(std::move(r));
  }
  std::vector<mx::array> outs;
  for (int slot : out_slots) {
    if (slot < 0 || slot >= static_cast<int>(slots.size())) throw arg_error("program output slot out of range");
    outs.push_back(slots[slot].a);
  }
  return outs;
}

}  // namespace
}  // namespace emlx

using namespace emlx;  // the C entry points below use the shim's internals

extern "C" {

emlx_status emlx_program_run(emlx_stream *s, const emlx_instr *instrs, int ninstrs, emlx_arr **inputs, int ninputs,
                             const int *out_slots, int nouts, int compile, emlx_compiled **cache, emlx_arr **outs) {
  return guard([&] {
    std::vector<mx::array> in;
    for (int i = 0; i < ninputs; i++) in.push_back(inputs[i]->a);
    std::vector<int> slots(out_slots, out_slots + nouts);
    std::vector<mx::array> results;
    if (compile && !(*cache && !(*cache)->traceable)) {
      if (!*cache) {
        emlx_stream st = *s;
        auto body = [st, instrs, ninstrs, slots](const std::vector<mx::array> &args) {
          return replay(st, instrs, ninstrs, args, slots);
        };
        *cache = new emlx_compiled{mx::compile(body), true};
      }
      try {
        results = (*cache)->fn(in);
      } catch (...) {
        // Tracing failed: an op needs data while tracing ("cannot compile"),
        // or the program is wrong. Either way it replays plainly, now and from
        // then on; a genuine error is raised by that replay, once.
        (*cache)->traceable = false;
        results = replay(*s, instrs, ninstrs, in, slots);
      }
    } else {
      results = replay(*s, instrs, ninstrs, in, slots);
    }
    hand_out(results, outs);
  });
}

void emlx_compiled_free(emlx_compiled *c) {
  try {
    delete c;
  } catch (...) {
  }
}

}  // extern "C"

// Programs: replay of a flat list of op-table instructions over slots,
// optionally under mx::compile, made once per program and kept in its cache;
// and loops (EMLX_OP_WHILE), run here on the worker thread.

#include <functional>
#include <map>
#include <typeinfo>
#include <unordered_set>

#include <mlx/primitives.h>

#include "emlx_kernels.hpp"

struct emlx_compiled {
  std::function<std::vector<mx::array>(const std::vector<mx::array> &)> fn;
  bool traceable;  // false once tracing failed: the program replays plainly from then on
  // on the GPU, by the inputs' types and shapes (which fix the traced graph):
  // whether it holds a fused kernel over no elements (empty_fused_kernel)
  std::map<std::vector<int64_t>, bool> empty_kernel{};
  // the values of the program's `full` instructions, in order: inputs of the
  // compiled function after the program's own (see emlx_full)
  std::vector<mx::array> consts{};
};

namespace emlx {
namespace {

// The values the program being traced on this thread hands to its `full`
// instructions (a program traced inside another's trace has its own).
struct ConstSupply {
  const std::vector<mx::array> *values = nullptr;
  size_t next = 0;
};
thread_local ConstSupply supply;

// Sets this thread's supply for a scope (values nullptr: none, for a plain
// replay inside another program's trace), then puts the previous one back.
struct Supplying {
  ConstSupply saved = supply;
  explicit Supplying(const std::vector<mx::array> *values) { supply = {values, 0}; }
  ~Supplying() { supply = saved; }
};

}  // namespace

std::optional<mx::array> traced_constant(mx::Dtype d) {
  if (!supply.values || supply.next >= supply.values->size()) return std::nullopt;
  const mx::array &c = (*supply.values)[supply.next++];
  if (c.dtype() != d) return std::nullopt;
  return c;
}

namespace {

std::vector<mx::array> run(const emlx_stream &stream, emlx_program *p, const std::vector<mx::array> &in, bool compile);
std::vector<mx::array> run_while(const emlx_stream &stream, const emlx_instr &in, const std::vector<emlx_arr> &slots);
std::vector<mx::array> run_cond(const emlx_stream &stream, const emlx_instr &in, const std::vector<emlx_arr> &slots);

// Runs the instructions over slots (the inputs first, then every
// instruction's results in turn) and returns the arrays of out_slots.
std::vector<mx::array> replay(const emlx_stream &stream, const emlx_instr *instrs, int ninstrs,
                              const std::vector<mx::array> &inputs, const std::vector<int> &out_slots) {
  std::vector<emlx_arr> slots;
  slots.reserve(inputs.size() + static_cast<size_t>(ninstrs) * 2);
  for (auto &a : inputs) slots.emplace_back(a);
  for (int i = 0; i < ninstrs; i++) {
    const emlx_instr &in = instrs[i];
    if (in.op == EMLX_OP_WHILE || in.op == EMLX_OP_COND) {
      auto results = in.op == EMLX_OP_WHILE ? run_while(stream, in, slots) : run_cond(stream, in, slots);
      for (auto &r : results) slots.emplace_back(std::move(r));
      continue;
    }
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

// MLX 0.32's CUDA Compiled::eval_gpu has no guard for empty arrays: a
// fused kernel whose outputs have no elements divides by zero in its launch
// arguments (SIGFPE, the VM down; EMLX.FuzzTest found it on the H200). Its
// eager ops return early on empty outputs. So a compiled run on the GPU
// whose graph holds such a kernel is dropped and replayed plainly. The walk
// visits every node of the run's graph, so it runs once per program and
// input types and shapes (emlx_compiled's empty_kernel), which fix the graph.
bool empty_fused_kernel(const std::vector<mx::array> &outs) {
  std::vector<mx::array> todo(outs);
  std::unordered_set<uintptr_t> seen;
  while (!todo.empty()) {
    mx::array a = std::move(todo.back());
    todo.pop_back();
    if (!a.has_primitive() || a.status() != mx::array::Status::unscheduled || !seen.insert(a.id()).second) continue;
    if (typeid(a.primitive()) == typeid(mx::Compiled))
      for (auto &o : a.outputs())
        if (o.size() == 0) return true;
    for (auto &in : a.inputs()) todo.push_back(in);
  }
  return false;
}

// One run of program p: under its mx::compile cache when asked and it can
// be traced, else a plain replay.
std::vector<mx::array> run(const emlx_stream &stream, emlx_program *p, const std::vector<mx::array> &in, bool compile) {
  note_work(p->ninstrs);
  std::vector<int> slots(p->out_slots, p->out_slots + p->nouts);
  auto plainly = [&] {
    Supplying none(nullptr);
    return replay(stream, p->instrs, p->ninstrs, in, slots);
  };
  if (!compile || p->plain || (p->compiled && !p->compiled->traceable)) return plainly();
  if (!p->compiled) {
    emlx_stream st = stream;
    const emlx_instr *instrs = p->instrs;
    int ninstrs = p->ninstrs;
    std::vector<mx::array> consts;
    for (int i = 0; i < ninstrs; i++)
      if (auto v = full_value(instrs[i].op, instrs[i].args)) consts.push_back(std::move(*v));
    size_t nin = in.size();
    // (MLX calls it to trace: the program's own inputs, then the constants)
    auto body = [st, instrs, ninstrs, slots, nin](const std::vector<mx::array> &args) {
      std::vector<mx::array> own(args.begin(), args.begin() + nin), values(args.begin() + nin, args.end());
      Supplying supplying(&values);
      return replay(st, instrs, ninstrs, own, slots);
    };
    p->compiled = new emlx_compiled{mx::compile(body), true, {}, std::move(consts)};
  }
  // On the GPU, a run whose traced graph holds a fused kernel over no
  // elements replays plainly (see empty_fused_kernel), known by the inputs'
  // types and shapes after the first such run.
  bool gpu = stream.s.device == mx::Device::gpu;
  auto &memo = p->compiled->empty_kernel;
  auto known = memo.end();
  std::vector<int64_t> key;
  if (gpu) {
    for (auto &a : in) {
      key.push_back(static_cast<int64_t>(a.dtype().val()));
      key.push_back(a.ndim());
      key.insert(key.end(), a.shape().begin(), a.shape().end());
    }
    known = memo.find(key);
    if (known != memo.end() && known->second) return plainly();
  }
  std::vector<mx::array> outs;
  try {
    std::vector<mx::array> args(in);
    args.insert(args.end(), p->compiled->consts.begin(), p->compiled->consts.end());
    outs = p->compiled->fn(args);
  } catch (...) {
    // Tracing failed: an op needs data while tracing ("cannot compile"),
    // or the program is wrong. Either way it replays plainly, now and from
    // then on; a genuine error is raised by that replay, once.
    p->compiled->traceable = false;
    return plainly();
  }
  if (gpu && known == memo.end() && memo.emplace(std::move(key), empty_fused_kernel(outs)).first->second)
    return plainly();
  return outs;
}

// A loop: the condition and the body are programs of their own, each
// compiled once; every iteration evaluates the condition with the state
// (so no graph grows across iterations) and reads it here, on the worker.
std::vector<mx::array> run_while(const emlx_stream &stream, const emlx_instr &in, const std::vector<emlx_arr> &slots) {
  auto slot = [&](int64_t k) -> const mx::array & {
    if (k < 0 || k >= static_cast<int64_t>(slots.size())) throw arg_error("loop slot out of range");
    return slots[k].a;
  };
  std::vector<mx::array> state;
  for (int j = 0; j < in.args[0].u.ints.n; j++) state.push_back(slot(in.args[0].u.ints.v[j]));
  auto inputs = [&](const emlx_arg &map) {
    std::vector<mx::array> v;
    for (int j = 0; j < map.u.ints.n; j++) {
      int64_t m = map.u.ints.v[j];
      if (m < 0 && -m - 1 >= static_cast<int64_t>(state.size())) throw arg_error("loop state index out of range");
      v.push_back(m < 0 ? state[-m - 1] : slot(m));
    }
    return v;
  };
  emlx_program *cond = in.args[1].u.prog, *body = in.args[3].u.prog;
  for (int64_t iter = 0;; iter++) {
    auto pred = run(stream, cond, inputs(in.args[2]), true);
    if (pred.size() != 1 || pred[0].size() != 1) throw arg_error("a loop condition must be one scalar");
    auto go = truthy(pred[0], stream.s);
    std::vector<mx::array> all{go};
    if (iter % 32 == 0) all.insert(all.end(), state.begin(), state.end());
    eval_here(all);
    if (!go.item<bool>()) return state;
    auto next = run(stream, body, inputs(in.args[4]), true);
    if (next.size() != state.size()) throw arg_error("a loop body must return the whole state");
    state = std::move(next);
  }
}

// A branch: the predicate is evaluated and read here, then only the program
// of the branch taken runs.
std::vector<mx::array> run_cond(const emlx_stream &stream, const emlx_instr &in, const std::vector<emlx_arr> &slots) {
  auto inputs = [&](const emlx_arg &list) {
    std::vector<mx::array> v;
    for (int j = 0; j < list.u.ints.n; j++) {
      int64_t k = list.u.ints.v[j];
      if (k < 0 || k >= static_cast<int64_t>(slots.size())) throw arg_error("cond slot out of range");
      v.push_back(slots[k].a);
    }
    return v;
  };
  auto pred = run(stream, in.args[0].u.prog, inputs(in.args[1]), true);
  if (pred.size() != 1 || pred[0].size() != 1) throw arg_error("a cond predicate must be one scalar");
  auto go = truthy(pred[0], stream.s);
  eval_here({go});
  int k = go.item<bool>() ? 2 : 4;
  return run(stream, in.args[k].u.prog, inputs(in.args[k + 1]), true);
}

}  // namespace
}  // namespace emlx

using namespace emlx;  // the C entry points below use the shim's internals

extern "C" {

emlx_status emlx_program_run(emlx_stream *s, emlx_program *p, emlx_arr **inputs, int ninputs, int compile,
                             emlx_arr **outs) {
  return guard([&] {
    std::vector<mx::array> in;
    for (int i = 0; i < ninputs; i++) in.push_back(inputs[i]->a);
    auto results = run(*s, p, in, compile != 0);
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

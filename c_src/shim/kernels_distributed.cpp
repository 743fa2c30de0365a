// MLX's distributed layer (mlx::core::distributed) behind EMLX.Distributed:
// one group per OS process, made by dist_init; collectives, send and recv
// are ops of the op table, so they run eagerly and inside compiled programs.
// The ring's collectives run on a worker's CPU stream (host memory), an
// NCCL group's on its GPU stream (NCCL has no send or recv in MLX).
//
// A collective whose ranks disagree on shape or type would make MLX's ring
// backend read the wrong number of bytes and wait for ever. Each collective
// first exchanges a small header (type and shape) and raises
// (ArgumentError) when the ranks differ: over the side channel of
// kernels_dist_check.cpp, or where there is none as a small all_gather. A
// program holding a collective replays plainly, never under mx::compile
// (emlx_programs.c), so the check runs at every call. send and recv carry
// the header too: recv checks it, receives what was sent, and raises on a
// mismatch.

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>

#include "emlx_kernels.hpp"
#include "mlx/distributed/distributed.h"
#include "mlx/distributed/ops.h"

namespace emlx {
namespace {

namespace dist = mx::distributed;
}  // namespace

void dist_check_setup(const dist::Group &g, const std::string &host, SD s);
bool dist_check_exchange(const std::vector<int64_t> &mine, int &bad, std::vector<int64_t> &h0,
                         std::vector<int64_t> &hb);

namespace {

std::mutex group_mu;
std::optional<dist::Group> group;  // set once by dist_init
std::atomic<bool> nccl{false};     // the group is NCCL's (backend: :nccl)
// An NCCL group's side channel is made at its first checked collective
// (see emlx_dist_init): rank 0's address until then.
std::optional<std::string> side_channel_host;

constexpr int kMaxDims = 8;
constexpr int kHeader = kMaxDims + 2;  // dtype code, rank, dims

dist::Group current(SD s) {
  std::lock_guard<std::mutex> lock(group_mu);
  if (!group) throw arg_error("EMLX.Distributed: not initialized (call EMLX.Distributed.init/1 first)");
  if (nccl && mx::to_stream(s).device == mx::Device::cpu)
    throw arg_error("EMLX.Distributed: an NCCL group's collectives run on device :gpu, not :cpu");
  return *group;
}

// A tensor's type and shape as kHeader int64s.
std::vector<int64_t> header_values(const mx::Shape &shape, mx::Dtype dtype) {
  if (shape.size() > kMaxDims) throw arg_error("EMLX.Distributed: tensors of at most 8 axes");
  std::vector<int64_t> h(kHeader, -1);
  h[0] = from_dtype(dtype);
  h[1] = static_cast<int64_t>(shape.size());
  for (size_t i = 0; i < shape.size(); i++) h[2 + i] = shape[i];
  return h;
}

// A header as the int64 array a collective or send carries.
mx::array header_array(const std::vector<int64_t> &h) { return mx::array(h.data(), {kHeader}, mx::int64); }

std::string describe(const int64_t *h) {
  std::string s = "type code " + std::to_string(h[0]) + ", shape {";
  for (int64_t i = 0; i < h[1] && i < kMaxDims; i++) s += (i ? ", " : "") + std::to_string(h[2 + i]);
  return s + "}";
}

[[noreturn]] void differ(const char *what, const int64_t *h0, int r, const int64_t *hr) {
  throw arg_error(std::string("EMLX.Distributed.") + what + ": the ranks' tensors differ (rank 0: " + describe(h0) +
                  "; rank " + std::to_string(r) + ": " + describe(hr) + ")");
}

// Every rank must bring the same type and shape.
void check_same(const mx::array &x, const dist::Group &g, const char *what, SD s) {
  std::optional<std::string> host;
  {
    std::lock_guard<std::mutex> lock(group_mu);
    host.swap(side_channel_host);
  }
  if (host) dist_check_setup(g, *host, s);
  auto mine = header_values(x.shape(), x.dtype());
  int bad;
  std::vector<int64_t> h0, hb;
  if (dist_check_exchange(mine, bad, h0, hb)) {
    if (bad >= 0) differ(what, h0.data(), bad, hb.data());
    return;
  }
  auto all = dist::all_gather(header_array(mine), g, s);
  eval_here({all});
  const int64_t *h = all.data<int64_t>();
  for (int r = 1; r < g.size(); r++)
    for (int k = 0; k < kHeader; k++)
      if (h[r * kHeader + k] != h[k]) differ(what, h, r, h + r * kHeader);
}

bool env_set(const char *name) {
  const char *v = std::getenv(name);
  return v && *v;
}

int peer(int64_t p, const dist::Group &g) {
  if (p < 0 || p >= g.size() || p == g.rank())
    throw arg_error("EMLX.Distributed: peer " + std::to_string(p) + " is not another rank of the group of " +
                    std::to_string(g.size()));
  return static_cast<int>(p);
}

}  // namespace

bool dist_on_gpu() { return nccl; }

// backend: 0 any, 1 ring, 2 mpi, 3 nccl. rank (-1: from MLX_RANK), size
// (-1: from MLX_WORLD_SIZE, read by NCCL) and `where` as bytes are set in
// the environment MLX's backends read (the BEAM's os:putenv does not reach
// it): for the ring the hostfile's path (MLX_HOSTFILE), for NCCL rank 0's
// "ip:port" (NCCL_HOST_IP, NCCL_PORT); empty leaves the environment's.
// Result: int32 {rank, size, 1 when the group is NCCL's}.
// check_host: rank 0's IPv4 address for the check's side channel, as bytes
// ("": none; an NCCL group uses NCCL_HOST_IP).
mx::array emlx_dist_init(int64_t backend, bool strict, int64_t rank, int64_t size, const std::vector<int64_t> &where,
                         const std::vector<int64_t> &check_host, SD s) {
  static const char *names[] = {"any", "ring", "mpi", "nccl"};
  if (backend < 0 || backend > 3) throw arg_error("EMLX.Distributed: unknown backend");
  std::unique_lock<std::mutex> lock(group_mu);
  if (!group) {
    if (rank >= 0) setenv("MLX_RANK", std::to_string(rank).c_str(), 1);
    if (size >= 0) setenv("MLX_WORLD_SIZE", std::to_string(size).c_str(), 1);
    std::string w;
    for (auto c : where) w.push_back(static_cast<char>(c));
    if (!w.empty() && backend == 3) {
      auto colon = w.rfind(':');
      if (colon == std::string::npos || colon == 0 || colon + 1 == w.size())
        throw arg_error("EMLX.Distributed: NCCL's address must be \"ip:port\", got \"" + w + "\"");
      setenv("NCCL_HOST_IP", w.substr(0, colon).c_str(), 1);
      setenv("NCCL_PORT", w.substr(colon + 1).c_str(), 1);
    } else if (!w.empty()) {
      setenv("MLX_HOSTFILE", w.c_str(), 1);
    }
    if (backend != 0 && !dist::is_available(names[backend]))
      throw arg_error(std::string("EMLX.Distributed: the ") + names[backend] + " backend is not available in this MLX");
    group = dist::init(strict, names[backend]);
    // "any" takes NCCL first on a CUDA build, when its environment is set
    // (MLX's own order); the ring, MPI or JACCL otherwise.
    nccl = backend == 3 || (backend == 0 && group->size() > 1 && mx::is_available(mx::Device::gpu) &&
                            env_set("NCCL_HOST_IP") && env_set("NCCL_PORT") && env_set("MLX_RANK") &&
                            env_set("MLX_WORLD_SIZE"));
  }
  std::string host;
  if (nccl) {
    if (const char *ip = std::getenv("NCCL_HOST_IP")) host = ip;
  } else {
    for (auto c : check_host) host.push_back(static_cast<char>(c));
  }
  dist::Group g = *group;
  // The side channel's set-up is itself a small collective, which an NCCL
  // group runs on a GPU stream, and this op runs on the CPU's (so does
  // backend: :any, which may take NCCL): an NCCL group makes its channel at
  // its first checked collective, which every rank reaches in the same
  // place.
  bool later = nccl && mx::to_stream(s).device != mx::Device::gpu;
  if (later) side_channel_host = host;
  lock.unlock();
  if (!later) dist_check_setup(g, host, s);
  int32_t rs[3] = {g.rank(), g.size(), nccl ? 1 : 0};
  return mx::array(rs, {3}, mx::int32);
}

// check: first exchange type and shape (a small collective and a wait);
// off (EMLX.Distributed.init(check_shapes: false)) ranks must agree.
mx::array emlx_dist_all(const mx::array &x, int64_t kind, bool check, SD s) {
  auto g = current(s);
  static const char *what[] = {"all_sum", "all_max", "all_min", "all_gather"};
  if (kind < 0 || kind > 3) throw arg_error("EMLX.Distributed: unknown collective");
  if (g.size() == 1) return kind == 3 ? mx::expand_dims(x, 0, s) : x;
  if (check) check_same(x, g, what[kind], s);
  switch (kind) {
    case 0: return dist::all_sum(x, g, s);
    case 1: return dist::all_max(x, g, s);
    case 2: return dist::all_min(x, g, s);
    default:
      // MLX gathers along axis 0; a leading axis of ranks keeps each rank's tensor whole.
      return dist::all_gather(mx::expand_dims(x, 0, s), g, s);
  }
}

mx::array emlx_dist_send(const mx::array &x, int64_t dst, SD s) {
  auto g = current(s);
  int d = peer(dst, g);
  auto h = dist::send(header_array(header_values(x.shape(), x.dtype())), d, g, s);
  eval_here({h});
  return dist::send(x, d, g, s);
}

mx::array emlx_dist_recv(const mx::Shape &shape, mx::Dtype dtype, int64_t src, SD s) {
  auto g = current(s);
  int p = peer(src, g);
  auto h = dist::recv({kHeader}, mx::int64, p, g, s);
  eval_here({h});
  const int64_t *hv = h.data<int64_t>();
  auto want = header_values(shape, dtype);
  const int64_t *wv = want.data();
  bool same = true;
  for (int k = 0; k < kHeader; k++) same = same && hv[k] == wv[k];
  if (!same) {
    // Take what was sent, so the stream between the two ranks stays in step.
    mx::Shape sent;
    for (int64_t i = 0; i < hv[1] && i < kMaxDims; i++) sent.push_back(static_cast<int32_t>(hv[2 + i]));
    auto drop = dist::recv(sent, to_dtype(static_cast<int>(hv[0])), p, g, s);
    eval_here({drop});
    throw arg_error("EMLX.Distributed.recv: rank " + std::to_string(p) + " sent " + describe(hv) +
                    ", not the expected " + describe(wv));
  }
  return dist::recv(shape, dtype, p, g, s);
}

}  // namespace emlx
